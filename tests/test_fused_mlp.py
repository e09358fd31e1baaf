"""The MLP with its activation fused into the matmuls, through its plain-PyTorch CPU kernels (CPU, seconds).

The CUDA kernels are quack's CuTe GEMMs; the ops around them (maths, fake shapes, autograd, compilation,
checkpointing, the towers' use of them) are what these tests check.
"""

import pytest
import torch

from avtool.models import TextTowerConfig, TextTransformer, VideoTowerConfig, build_video_tower
from avtool.models.blocks import Mlp
from avtool.models.fused_mlp import check_fused_mlp, fused_mlp_available
from tests.test_fa4 import _assert_same_grads, _grads, _graphs_backend, _ops
from tests.test_models import tokens, video

LINEAR_ACT = torch.ops.avtool.linear_act.default
ACT_LINEAR = torch.ops.avtool.act_linear.default
ACT_LINEAR_BACKWARD = torch.ops.avtool.act_linear_backward.default


def _mlps(act: str, dtype: torch.dtype = torch.float32) -> tuple[Mlp, Mlp]:
    torch.manual_seed(0)
    plain = Mlp(8, 32, act).to(dtype)
    fused = Mlp(8, 32, act, fused=True).to(dtype)
    fused.load_state_dict(plain.state_dict())
    return plain, fused


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_fused_mlp_matches_the_plain_mlp(act: str, dtype: torch.dtype) -> None:
    plain, fused = _mlps(act, dtype)
    x = torch.randn(3, 5, 8, dtype=dtype, requires_grad=True)
    out, ref = fused(x), plain(x)
    assert out.shape == ref.shape == x.shape and out.dtype == dtype
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, **tol)
    grad_out = torch.randn_like(out)
    params = [x, *fused.parameters()]
    grads = torch.autograd.grad(out, params, grad_out)
    ref_grads = torch.autograd.grad(ref, [x, *plain.parameters()], grad_out)
    # The backward's activation derivative is computed in float32 (as the GPU epilogue does).
    grad_tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    for name, g, r in zip(["x", "c_fc.w", "c_fc.b", "c_proj.w", "c_proj.b"], grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **grad_tol, msg=name)


def test_fused_mlp_under_autocast_runs_in_its_dtype() -> None:
    plain, fused = _mlps("gelu")
    x = torch.randn(2, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = fused(x), plain(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=0.05, rtol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused(x).float().square().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in fused.parameters())  # the float32 weights' gradients


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_opcheck_fused_mlp_ops(act: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 8, requires_grad=True)
    w1, b1 = torch.randn(32, 8, requires_grad=True), torch.randn(32, requires_grad=True)
    w2, b2 = torch.randn(8, 32, requires_grad=True), torch.randn(8, requires_grad=True)
    torch.library.opcheck(torch.ops.avtool.linear_act, (x, w1, b1, act))
    pre, post = torch.ops.avtool.linear_act(x, w1, b1, act)
    assert not post.requires_grad  # its gradient reaches this op through pre
    torch.library.opcheck(torch.ops.avtool.act_linear, (pre.detach().requires_grad_(), post, w2, b2, act))
    grad_out = torch.randn(6, 8)
    torch.library.opcheck(torch.ops.avtool.act_linear_backward, (grad_out, pre.detach(), w2.detach(), act))


def test_compile_keeps_the_fused_ops_opaque_and_agrees() -> None:
    torch._dynamo.reset()
    plain, fused = _mlps("gelu")
    x = torch.randn(2, 5, 8, requires_grad=True)
    graphs: list = []
    torch.compile(fused, backend=_graphs_backend(graphs), fullgraph=True)(x).sum().backward()
    fw, bw = graphs
    assert {LINEAR_ACT, ACT_LINEAR} <= _ops(fw) and ACT_LINEAR_BACKWARD in _ops(bw)
    assert torch.ops.aten.gelu.default not in _ops(fw) | _ops(bw)  # no separate activation kernel
    torch._dynamo.reset()
    grad_out = torch.randn(2, 5, 8)
    out = torch.compile(fused, fullgraph=True)(x)
    ref = plain(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out, [x, *fused.parameters()], grad_out)
    ref_grads = torch.autograd.grad(ref, [x, *plain.parameters()], grad_out)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


class _CountFusedOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = {LINEAR_ACT: 0, ACT_LINEAR: 0, ACT_LINEAR_BACKWARD: 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.calls:
            self.calls[func] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ["vit", "timesformer"])
def test_video_tower_with_fused_mlp_matches_and_checkpoints(arch: str) -> None:
    torch.manual_seed(0)
    cfg = VideoTowerConfig.tiny(arch=arch, layers=3, attn_impl="fa4", drop_path_rate=0.2)
    plain = build_video_tower(cfg).train()
    fused = build_video_tower(VideoTowerConfig.tiny(arch=arch, layers=3, attn_impl="fa4", drop_path_rate=0.2,
                                                    fused_mlp=True)).train()  # fmt: skip
    fused.load_state_dict(plain.state_dict())
    x = video()
    ref = _grads(plain, x)
    with _CountFusedOps() as counter:
        _assert_same_grads(_grads(fused, x), ref, atol=1e-5, rtol=1e-5)
    assert list(counter.calls.values()) == [3, 3, 3]  # one MLP per block, each way
    fused.set_grad_checkpointing(True, keep_attention=1)
    with _CountFusedOps() as counter:
        _assert_same_grads(_grads(fused, x), ref, atol=1e-5, rtol=1e-5)
    # Eager recomputation replays the whole block: a custom op saves its tensors only after it ran.
    assert list(counter.calls.values()) == [6, 6, 3]


def test_compiled_checkpointing_recomputes_only_the_first_matmul() -> None:
    # What backward needs of a fused MLP is its pre-activation: the compiled backward recomputes
    # linear_act but not act_linear (the partitioner drops the unused second matmul).
    torch._dynamo.reset()
    cfg = VideoTowerConfig.tiny(layers=2, fused_mlp=True, grad_checkpointing=True)
    model = build_video_tower(cfg).train()
    graphs: list = []
    torch.compile(model, backend=_graphs_backend(graphs))(video()).sum().backward()
    forward, backward = graphs
    count = lambda gm, op: sum(node.target is op for node in gm.graph.nodes)  # noqa: E731
    assert (count(forward, LINEAR_ACT), count(forward, ACT_LINEAR)) == (2, 2)
    assert (count(backward, LINEAR_ACT), count(backward, ACT_LINEAR)) == (2, 0)
    assert count(backward, ACT_LINEAR_BACKWARD) == 2


def test_text_tower_with_fused_mlp_matches() -> None:
    torch.manual_seed(0)
    plain = TextTransformer(TextTowerConfig.tiny())
    fused = TextTransformer(TextTowerConfig.tiny(fused_mlp=True))
    fused.load_state_dict(plain.state_dict())
    text = tokens()
    torch.testing.assert_close(fused(text), plain(text), atol=1e-5, rtol=1e-5)
    _assert_same_grads(_grads(fused, text), _grads(plain, text), atol=1e-4, rtol=1e-4)


def test_fused_mlp_flops_are_counted_as_the_plain_mlp() -> None:
    import dataclasses

    from avtool.bench.model import train_step_flops
    from avtool.models import DualEncoderConfig

    cfg = DualEncoderConfig.tiny()
    fused = dataclasses.replace(
        cfg,
        video=dataclasses.replace(cfg.video, fused_mlp=True),
        text=dataclasses.replace(cfg.text, fused_mlp=True),
    )
    assert train_step_flops(fused, 2) == train_step_flops(cfg, 2)


def test_check_fused_mlp() -> None:
    assert check_fused_mlp(on_cuda=False) is None
    if not fused_mlp_available():
        message = check_fused_mlp(on_cuda=True)
        assert message is not None and "\n" not in message and "quack" in message
    from avtool.models.fused_mlp import fused_mlp

    with pytest.raises(ValueError, match="activation 'relu'"):
        fused_mlp(torch.randn(2, 8), torch.nn.Linear(8, 32), torch.nn.Linear(32, 8), "relu")


def test_fused_mlp_benchmark_script_runs_tiny(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fused_mlp.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--tiny"], check=True, capture_output=True)
    rows = pd.read_csv(tmp_path / "fused_mlp.csv")
    assert list(rows.variant) == ["eager", "compiled", "fused"]
    assert (rows.forward_backward_ms > 0).all()
    assert (rows.max_abs_diff_out < 1e-4).all() and (rows.max_abs_diff_grad < 1e-4).all()
