"""FlashAttention-4 as avtool's custom op, through its plain-PyTorch CPU kernel (CPU, seconds).

The CUDA kernels need the flash-attn-4 package and a Hopper/Blackwell GPU; everything around them (the op's
maths, fake shapes, autograd, compilation, selective checkpointing and the towers' use of it) is the same
op with the CPU kernel, and is what these tests check.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from avtool.models import (
    Attention,
    TextTowerConfig,
    TextTransformer,
    VideoTowerConfig,
    VideoViT,
    attention,
    build_video_tower,
)
from avtool.models.attention import check_attn_impl, check_keeps_attention
from avtool.models.fa4 import INSTALL_HINT, fa4_attention, fa4_available
from tests.test_models import tokens, video

FA4_FORWARD = torch.ops.avtool.fa4_forward.default
FA4_BACKWARD = torch.ops.avtool.fa4_backward.default


def fused_qkv(
    B: int = 2, N: int = 10, H: int = 3, d: int = 8, dtype: torch.dtype = torch.float32, requires_grad: bool = False
) -> torch.Tensor:
    """A fused qkv projection viewed as (B, N, 3, heads, d), as ``Attention`` passes it to the op."""
    return torch.randn(B, N, 3, H, d, dtype=dtype, requires_grad=requires_grad)


def _grads(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(seed)
    model(x).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict, ref: dict, **tol: float) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], **tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_fa4_matches_math_attention(causal: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    # (B, heads, N, d) as attention() takes them; N not a power of two.
    q, k, v = (torch.randn(2, 3, 37, 16, dtype=dtype, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, "fa4", causal)
    ref = attention(q, k, v, "math", causal)
    assert out.shape == ref.shape and out.dtype == dtype
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)
    # The forward is exact in the input precision; backward rebuilds the probabilities from the float32
    # logsumexp (as FlashAttention does), so in float64 it is only float32-exact.
    out_tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    grad_tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, **out_tol)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g, r, **grad_tol, msg=name)
    if dtype == torch.float64:
        # Given a float64 logsumexp, the backward kernel is float64-exact: the float32 lse is the only loss.
        qkv = torch.stack([t.detach().transpose(1, 2) for t in (q, k, v)], dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]) * qkv.shape[-1] ** -0.5
        if causal:
            scores = scores.masked_fill(torch.ones(37, 37, dtype=torch.bool).triu(1), float("-inf"))
        exact = torch.ops.avtool.fa4_backward(
            grad_out.transpose(1, 2), qkv, out.detach().transpose(1, 2), scores.logsumexp(-1), causal
        )
        for name, g, r in zip("qkv", exact.unbind(2), ref_grads, strict=True):
            torch.testing.assert_close(g.transpose(1, 2), r, atol=1e-12, rtol=1e-12, msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_fa4_logsumexp_and_causal_mask(causal: bool) -> None:
    torch.manual_seed(0)
    qkv = fused_qkv(dtype=torch.float64)
    q, k, v = qkv.unbind(2)
    out, lse = torch.ops.avtool.fa4_forward(qkv, causal)
    B, N, H, d = q.shape
    assert out.shape == (B, N, H, d) and out.dtype == torch.float64 and out.is_contiguous()
    assert lse.shape == (B, H, N) and lse.dtype == torch.float32 and lse.is_contiguous()
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * d**-0.5
    if causal:
        scores = scores.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, scores.logsumexp(dim=-1).float())
    torch.testing.assert_close(out, fa4_attention(qkv, causal))
    if causal:
        # The first query sees only the first key; no query sees a later value.
        torch.testing.assert_close(out[:, 0], v[:, 0])
        later = qkv.clone()
        later[:, 6:, 2] += 1.0
        torch.testing.assert_close(fa4_attention(later, causal)[:, :6], out[:, :6])


@pytest.mark.parametrize("causal", [False, True])
def test_fa4_gradient_is_the_fused_projections(causal: bool) -> None:
    # The backward returns one gradient for the whole (B, N, 3, heads, d) projection, in its layout.
    torch.manual_seed(0)
    qkv = fused_qkv(dtype=torch.float64, requires_grad=True)
    out = fa4_attention(qkv, causal)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    ref = attention(q, k, v, "math", causal).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, grad_out)
    (ref_grad,) = torch.autograd.grad(ref, qkv, grad_out)
    assert grad.shape == qkv.shape and grad.is_contiguous()
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck_fa4_ops(causal: bool, strided: bool) -> None:
    torch.manual_seed(0)
    qkv = fused_qkv(N=9)
    if strided:  # every other token of a longer projection: a view, not a tensor of its own
        qkv = fused_qkv(N=18)[:, ::2]
    assert qkv.is_contiguous() != strided
    torch.library.opcheck(torch.ops.avtool.fa4_forward, (qkv.clone().requires_grad_(), causal))
    out, lse = torch.ops.avtool.fa4_forward(qkv, causal)
    grad_out = torch.randn_like(out)
    torch.library.opcheck(torch.ops.avtool.fa4_backward, (grad_out, qkv, out, lse, causal))
    grad = torch.ops.avtool.fa4_backward(grad_out, qkv, out, lse, causal)
    assert grad.shape == qkv.shape and grad.dtype == qkv.dtype and grad.is_contiguous()


def _graphs_backend(graphs: list):
    """An aot_autograd backend that records its forward and backward graphs and runs them as they are."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def compiler(gm: torch.fx.GraphModule, example_inputs: list):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)


def _ops(gm: torch.fx.GraphModule) -> set:
    return {node.target for node in gm.graph.nodes if node.op == "call_function"}


def test_compile_keeps_fa4_as_one_op() -> None:
    torch._dynamo.reset()
    graphs: list = []

    def f(qkv):
        return fa4_attention(qkv, True).square().sum()

    torch.compile(f, backend=_graphs_backend(graphs), fullgraph=True)(
        fused_qkv(N=6, H=2, requires_grad=True)
    ).backward()
    fw, bw = graphs
    assert FA4_FORWARD in _ops(fw) and FA4_BACKWARD not in _ops(fw)
    assert FA4_BACKWARD in _ops(bw)
    # Opaque: no softmax or exp of the CPU kernel was traced into either graph.
    assert not {torch.ops.aten.exp.default, torch.ops.aten.logsumexp.default} & (_ops(fw) | _ops(bw))


@pytest.mark.parametrize("impl", ["fa4", "sdpa"])
def test_fa4_backward_needs_no_gather_into_the_qkv_gradient(impl: str) -> None:
    # fa4's backward writes the fused projection's gradient itself; with separate dq, dk, dv (sdpa) the
    # backward graph has to concatenate them before the projection's own backward.
    torch._dynamo.reset()
    graphs: list = []
    layer = Attention(16, num_heads=2, impl=impl)
    x = torch.randn(2, 7, 16, requires_grad=True)
    torch.compile(layer, backend=_graphs_backend(graphs), fullgraph=True)(x).sum().backward()
    _, bw = graphs
    aten = torch.ops.aten
    gathers = {aten.cat.default, aten.stack.default, aten.select_backward.default, aten.clone.default} & _ops(bw)
    assert bool(gathers) == (impl == "sdpa"), gathers  # sdpa: select_backward of q, k, v, summed


@pytest.mark.parametrize("causal", [False, True])
def test_fa4_under_inductor_matches_eager(causal: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)

    def f(x, w):
        # As in Attention.forward: a fused qkv projection, viewed (not copied) as (B, N, 3, heads, d).
        B, N, _ = x.shape
        return fa4_attention((x @ w).view(B, N, 3, 2, 8), causal).reshape(B, N, 16)

    x = torch.randn(2, 7, 16, requires_grad=True)
    w = torch.randn(16, 48, requires_grad=True)
    grad_out = torch.randn(2, 7, 16)
    ref = f(x, w)
    ref_grads = torch.autograd.grad(ref, (x, w), grad_out)
    out = torch.compile(f, fullgraph=True)(x, w)
    grads = torch.autograd.grad(out, (x, w), grad_out)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for name, g, r in zip("xw", grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg=name)


class _CountFa4(TorchDispatchMode):
    """Counts the calls of the fa4 ops that reach their (CPU) kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.forward = 0
        self.backward = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.forward += func is FA4_FORWARD
        self.backward += func is FA4_BACKWARD
        return func(*args, **(kwargs or {}))


def test_video_vit_fa4_matches_sdpa() -> None:
    torch.manual_seed(0)
    sdpa = VideoViT(VideoTowerConfig.tiny(layers=3, attn_impl="sdpa")).train()
    fa4 = VideoViT(VideoTowerConfig.tiny(layers=3, attn_impl="fa4")).train()
    fa4.load_state_dict(sdpa.state_dict())
    assert all(block.attn.impl == "fa4" for block in fa4.transformer.blocks)
    x = video()
    torch.testing.assert_close(fa4(x), sdpa(x), atol=1e-5, rtol=1e-5)
    ref = _grads(sdpa, x)
    with _CountFa4() as counter:
        got = _grads(fa4, x)
    assert (counter.forward, counter.backward) == (3, 3)  # fa4 really ran, once per block each way
    _assert_same_grads(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["vit", "timesformer"])
def test_fa4_blocks_that_keep_attention_do_not_recompute_it(arch: str) -> None:
    per_block = 2 if arch == "timesformer" else 1  # temporal and spatial attention
    # Drop path is on: the recomputed rest of a block must replay the random masks of its forward.
    torch.manual_seed(0)
    cfg = VideoTowerConfig.tiny(arch=arch, layers=3, attn_impl="fa4", drop_path_rate=0.3)
    model = build_video_tower(cfg).train()
    x = video()
    with _CountFa4() as counter:
        ref = _grads(model, x)
    assert (counter.forward, counter.backward) == (3 * per_block, 3 * per_block)
    for blocks, keep in ((3, 0), (3, 3), (3, 1), (2, 2), (2, 1)):
        model.set_grad_checkpointing(True, blocks, keep_attention=keep)
        kept = [model.transformer.keeps_attention(i) for i in range(3)]
        assert kept == [blocks - keep <= i < blocks for i in range(3)], (blocks, keep)  # the last k checkpointed
        with _CountFa4() as counter:
            got = _grads(model, x)
        recomputed = blocks - keep  # checkpointed blocks that do not keep their attention
        assert counter.forward == (3 + recomputed) * per_block, (blocks, keep)
        assert counter.backward == 3 * per_block, (blocks, keep)
        _assert_same_grads(got, ref, atol=1e-5, rtol=1e-5)


def test_video_vit_fa4_config_keeps_attention() -> None:
    cfg = VideoTowerConfig.tiny(
        layers=3, attn_impl="fa4", grad_checkpointing=True, grad_checkpointing_keep_attention=2
    )  # accepted: fa4 is an op selective checkpointing can keep
    model = VideoViT(cfg).train()
    assert [model.transformer.keeps_attention(i) for i in range(3)] == [False, True, True]
    with _CountFa4() as counter:
        _grads(model, video())
    assert (counter.forward, counter.backward) == (3 + 1, 3)


def test_check_attn_impl_fa4() -> None:
    assert check_attn_impl("fa4", on_cuda=False) is None
    assert check_keeps_attention("fa4") is None
    if not torch.cuda.is_available():
        assert check_attn_impl("fa4") is None  # on_cuda=None: this machine, which has no GPU


@pytest.mark.skipif(fa4_available(), reason="flash-attn-4 is installed")
def test_fa4_package_missing_is_reported_for_cuda_only() -> None:
    message = check_attn_impl("fa4", on_cuda=True)
    assert message is not None and "\n" not in message
    assert INSTALL_HINT == "pip install 'avtool[fa4]'" and INSTALL_HINT in message
    assert "fa4" in message and "CUDA" in message


@pytest.mark.parametrize("length", [16, 11])
def test_text_tower_fa4_matches_sdpa(length: int) -> None:
    torch.manual_seed(0)
    sdpa = TextTransformer(TextTowerConfig.tiny(attn_impl="sdpa"))
    fa4 = TextTransformer(TextTowerConfig.tiny(attn_impl="fa4"))
    fa4.load_state_dict(sdpa.state_dict())
    assert all(block.attn.impl == "fa4" and block.attn.causal for block in fa4.transformer.blocks)
    text = tokens(length=length)
    torch.testing.assert_close(fa4(text), sdpa(text), atol=1e-5, rtol=1e-5)
    ref = _grads(sdpa, text)
    # Gradients reach ~100 here (the loss is a sum of squares); math attention differs from sdpa as much.
    _assert_same_grads(_grads(fa4, text), ref, atol=1e-4, rtol=1e-4)
    fa4.set_grad_checkpointing(True)
    with _CountFa4() as counter:
        got = _grads(fa4, text)
    assert (counter.forward, counter.backward) == (2 * 2, 2)  # checkpointed: each block's attention recomputed
    _assert_same_grads(got, ref, atol=1e-4, rtol=1e-4)

    # Causal: tokens after the EOT token do not change the pooled feature.
    after = text.clone()
    after[:, 7] = 3
    torch.testing.assert_close(fa4(after), fa4(text))


def test_logsumexp_is_not_differentiable() -> None:
    # Backward ignores the logsumexp's gradient, so autograd must not let a loss use it silently.
    out, lse = torch.ops.avtool.fa4_forward(fused_qkv(requires_grad=True), False)
    assert out.requires_grad and not lse.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        lse.sum().backward()


def test_fa4_is_self_attention() -> None:
    q = torch.randn(1, 2, 4, 8)
    kv = torch.randn(1, 2, 6, 8)
    with pytest.raises(ValueError, match="self-attention"):
        attention(q, kv, kv, "fa4", causal=True)
    with pytest.raises(ValueError, match=r"\(B, N, 3, heads, d\)"):
        fa4_attention(torch.randn(1, 4, 2, 2, 8))


def test_attention_kernel_benchmark_script_runs_tiny(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_kernels.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--tiny"], check=True, capture_output=True)
    rows = pd.read_csv(tmp_path / "attention.csv")
    assert list(rows.impl) == ["math", "sdpa", "fa4"]
    assert (rows.forward_ms > 0).all() and (rows.forward_backward_ms > 0).all()
    # Every kernel computes the math baseline's function (bf16 rounding apart).
    assert (rows.max_abs_diff_out < 0.05).all() and (rows.max_abs_diff_grad < 0.05).all()


def test_fa4_tile_sweep_lists_its_candidates(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fa4_tiles.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--list"], check=True, capture_output=True)
    rows = pd.read_csv(tmp_path / "fa4_tiles.csv").set_index("tiles")
    assert set(rows.kind) == {"forward", "backward"} and (rows.tokens == 785).all()
    # 785 tokens in 128-token tiles: 7 tiles of 896 in each direction.
    assert rows.loc["package 128x128 swapS atoms122", "padded_work"] == round(896**2 / 785**2, 3)
    assert rows.loc["package 192x128 RS overlap", "padded_work"] == round(960 * 896 / 785**2, 3)
    assert (rows.padded_work >= 1).all()


def test_hopper_tiles_only_for_measured_shapes() -> None:
    from avtool.models.fa4 import MEASURED_TILES, PACKAGE_TILES, hopper_tiles

    vit_b = hopper_tiles(785, 64, False)
    assert vit_b is MEASURED_TILES[(785, 64, False)] and vit_b.forward == (192, 160, True, False)
    fields = dict(vit_b.backward)
    assert (fields["m_block_size"], fields["n_block_size"], fields["dKV_swapAB"]) == (64, 160, True)
    # Every field of the package's BwdConfig without a default is given (it is built from these).
    required = {"m_block_size", "n_block_size", "num_stages_Q", "num_stages_dO", "num_stages_PdS", "SdP_swapAB",
                "dKV_swapAB", "dQ_swapAB", "AtomLayoutMSdP", "AtomLayoutNdKV", "AtomLayoutMdQ"}  # fmt: skip
    assert all(required <= dict(t.backward).keys() for t in MEASURED_TILES.values())
    assert hopper_tiles(785, 64, True) is PACKAGE_TILES  # causal: not measured
    assert hopper_tiles(77, 64, True) is PACKAGE_TILES  # the text tower
