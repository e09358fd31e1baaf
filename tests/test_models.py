"""Video/text towers and the dual encoder on tiny configs (CPU, seconds)."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from avtool.models import (
    Attention,
    DividedSpaceTimeBlock,
    DropPath,
    DualEncoder,
    DualEncoderConfig,
    PatchEmbed,
    TextTowerConfig,
    TextTransformer,
    TimeSformer,
    VideoClassifier,
    VideoTowerConfig,
    VideoViT,
    attention,
    build_video_tower,
    flash_attn_available,
    interpolate_temporal_embedding,
    load_state_dict_resized,
)

CUDA = torch.cuda.is_available()


def video(batch: int = 2, frames: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size)


def tokens(batch: int = 2, length: int = 16, vocab: int = 1000) -> torch.Tensor:
    text = torch.randint(1, vocab - 1, (batch, length))
    text[:, 5] = vocab - 1  # EOT: the largest id
    text[:, 6:] = 0
    return text


def test_video_vit_shapes() -> None:
    cfg = VideoTowerConfig.tiny(num_frames=4)
    model = VideoViT(cfg).eval()
    x = video(frames=4)
    assert model(x).shape == (2, 32)
    assert model.forward_features(x).shape == (2, 1 + 4 * 2 * 2, 64)
    assert model.temporal_embedding.shape == (4, 64)
    assert torch.count_nonzero(model.temporal_embedding) == 0  # zero-init: starts as the image model
    assert VideoViT(VideoTowerConfig.tiny(output_dim=None))(video()).shape == (2, 64)
    with pytest.raises(ValueError, match="expected clips of 4 frames"):
        model(video(frames=2))
    with pytest.raises(ValueError, match="expected clips"):
        model(video(frames=4, size=64))


def test_tubelet_shapes() -> None:
    model = VideoViT(VideoTowerConfig.tiny(num_frames=4, tubelet_size=2)).eval()
    assert model.temporal_embedding.shape == (2, 64)
    assert model.forward_features(video(frames=4)).shape == (2, 1 + 2 * 4, 64)


@pytest.mark.parametrize("fast", [False, True])
def test_tokens_are_frame_major(fast: bool) -> None:
    embed = PatchEmbed(width=8, patch_size=16, fast=fast)
    x = torch.zeros(1, 3, 3, 32, 32)
    x[:, :, 1, :16, 16:] = 1.0  # frame 1, patch (row 0, col 1)
    out = embed(x)
    assert out.shape == (1, 3 * 4, 8)
    nonzero = out.abs().sum(-1).nonzero()[:, 1].tolist()
    assert nonzero == [1 * 4 + 1]


@pytest.mark.parametrize("tubelet", [1, 2])
def test_fast_conv1_equals_conv(tubelet: int) -> None:
    conv = PatchEmbed(width=24, patch_size=8, tubelet_size=tubelet)
    fast = PatchEmbed(width=24, patch_size=8, tubelet_size=tubelet, fast=True)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 4, 32, 48)
    torch.testing.assert_close(fast(x), conv(x), atol=1e-5, rtol=1e-5)

    model = VideoViT(VideoTowerConfig.tiny()).eval()
    fast_model = VideoViT(VideoTowerConfig.tiny(fast_conv1=True)).eval()
    fast_model.load_state_dict(model.state_dict())
    x = video()
    torch.testing.assert_close(fast_model(x), model(x), atol=1e-5, rtol=1e-5)


def _impls() -> list:
    skip_no_cuda = pytest.mark.skipif(not CUDA, reason="kernel needs CUDA")
    no_flash_attn = not (CUDA and flash_attn_available())
    return [
        "sdpa",
        "flash",  # torch has a CPU flash kernel
        pytest.param("efficient", marks=skip_no_cuda),
        pytest.param("cudnn", marks=skip_no_cuda),
        pytest.param("flash-attn", marks=pytest.mark.skipif(no_flash_attn, reason="needs CUDA and flash-attn")),
    ]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", _impls())
def test_attention_kernels_match_math(impl: str, causal: bool) -> None:
    device = "cuda" if CUDA and impl != "flash" else "cpu"
    dtype = torch.float16 if impl in ("flash-attn", "cudnn") else torch.float32
    q, k, v = (torch.randn(2, 4, 50, 16, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, impl, causal)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    ref = attention(q, k, v, "math", causal)
    ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, ref, **tol)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **tol)


def test_causal_math_attention_ignores_the_future() -> None:
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    out = attention(q, k, v, "math", causal=True)
    v2 = v.clone()
    v2[:, :, 4:] += 1.0
    out2 = attention(q, k, v2, "math", causal=True)
    torch.testing.assert_close(out[:, :, :4], out2[:, :, :4])
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:])


@pytest.mark.parametrize("arch", ["vit", "timesformer"])
def test_model_output_same_for_math_and_sdpa(arch: str) -> None:
    model = build_video_tower(VideoTowerConfig.tiny(arch=arch, attn_impl="math")).eval()
    sdpa = build_video_tower(VideoTowerConfig.tiny(arch=arch, attn_impl="sdpa")).eval()
    sdpa.load_state_dict(model.state_dict())
    x = video()
    torch.testing.assert_close(sdpa(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(flash_attn_available(), reason="flash-attn is installed")
def test_flash_attn_package_missing_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="pip install"):
        VideoTowerConfig.tiny(attn_impl="flash-attn")
    with pytest.raises(ImportError, match="flash-attn package"):
        Attention(64, 4, impl="flash-attn")


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as err:
        VideoTowerConfig(image_size=230, width=65, heads=4, attn_impl="fastest", grad_checkpointing_blocks=20)
    message = str(err.value)
    for part in ("image_size=230", "width=65", "attn_impl='fastest'", "grad_checkpointing_blocks=20"):
        assert part in message
    with pytest.raises(ValueError, match="divided attention"):
        VideoTowerConfig.tiny(arch="timesformer", patch_dropout=0.5)
    with pytest.raises(ValueError, match="needs arch='timesformer'"):
        TimeSformer(VideoTowerConfig.tiny())


def _grads(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(seed)
    model(x).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["vit", "timesformer"])
def test_grad_checkpointing_gives_the_same_gradients(arch: str) -> None:
    # Drop path is on, so this also checks that recomputation replays the same random masks.
    cfg = VideoTowerConfig.tiny(arch=arch, layers=3, drop_path_rate=0.3)
    model = build_video_tower(cfg).train()
    x = video()
    ref = _grads(model, x)
    for blocks in (None, 1):
        model.set_grad_checkpointing(True, blocks)
        assert model.transformer.checkpoint_blocks == (3 if blocks is None else 1)
        got = _grads(model, x)
        assert got.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=1e-5, msg=name)


class _CountAttentionKernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ["vit", "timesformer"])
def test_blocks_that_keep_their_attention_do_not_recompute_it_and_give_the_same_gradients(arch: str) -> None:
    attentions_per_block = 2 if arch == "timesformer" else 1
    # Drop path is on: the recomputed rest of a block must replay the random masks of its forward.
    model = build_video_tower(VideoTowerConfig.tiny(arch=arch, layers=3, drop_path_rate=0.3)).train()
    x = video()
    ref = _grads(model, x)
    for blocks, keep in ((3, 0), (3, 3), (3, 1), (2, 2)):
        model.set_grad_checkpointing(True, blocks, keep_attention=keep)
        with _CountAttentionKernels() as counter:
            got = _grads(model, x)
        recomputed = blocks - keep
        assert counter.calls == (3 + recomputed) * attentions_per_block, (blocks, keep)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=1e-5, msg=name)


def test_keep_attention_is_bounded_by_the_checkpointed_blocks() -> None:
    model = VideoViT(VideoTowerConfig.tiny(layers=3, grad_checkpointing=True, grad_checkpointing_keep_attention=2))
    assert (model.transformer.checkpoint_blocks, model.transformer.keep_attention_blocks) == (3, 2)
    assert [model.transformer.keeps_attention(i) for i in range(3)] == [False, True, True]  # the last ones
    model.set_grad_checkpointing(True, 2, keep_attention=1)
    assert [model.transformer.keeps_attention(i) for i in range(3)] == [False, True, False]
    model.set_grad_checkpointing(True, 1, keep_attention=2)
    assert model.transformer.keep_attention_blocks == 1
    model.set_grad_checkpointing(False, keep_attention=2)
    assert model.transformer.keep_attention_blocks == 0
    for fields, expected in (
        (dict(grad_checkpointing=True, grad_checkpointing_blocks=1, grad_checkpointing_keep_attention=2), "0..1"),
        (dict(grad_checkpointing_keep_attention=1), "needs grad_checkpointing"),
        (dict(grad_checkpointing=True, grad_checkpointing_keep_attention=1, attn_impl="math"), "not 'math'"),
        # The flash-attn package's kernel is no op the policy could see (fa4 is avtool's op, SDPA's are ATen's).
        (
            dict(grad_checkpointing=True, grad_checkpointing_keep_attention=1, attn_impl="flash-attn"),
            "attention kernel op.*'flash-attn'",
        ),
    ):
        with pytest.raises(ValueError, match=expected):
            VideoTowerConfig.tiny(layers=3, **fields)


def test_grad_checkpointing_saves_fewer_activations() -> None:
    def saved_bytes(model: torch.nn.Module) -> int:
        sizes = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(video())
        return sum(sizes)

    model = VideoViT(VideoTowerConfig.tiny(layers=4))
    plain = saved_bytes(model)
    model.set_grad_checkpointing(True, 2)
    half = saved_bytes(model)
    model.set_grad_checkpointing(True)
    full = saved_bytes(model)
    assert full < half < plain
    model.set_grad_checkpointing(False)
    assert saved_bytes(model) == plain


def test_text_grad_checkpointing_gives_the_same_gradients() -> None:
    model = TextTransformer(TextTowerConfig.tiny())
    text = tokens()
    ref = _grads(model, text)
    model.set_grad_checkpointing(True)
    got = _grads(model, text)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=1e-5, msg=name)


def test_token_dropout_only_in_training() -> None:
    model = VideoViT(VideoTowerConfig.tiny(num_frames=4, patch_dropout=0.5))
    x = video(frames=4)
    model.train()
    assert model.embed(x).shape == (2, 1 + 8, 64)  # CLS + half of the 16 patch tokens
    assert model(x).shape == (2, 32)
    model.eval()
    assert model.embed(x).shape == (2, 1 + 16, 64)
    torch.testing.assert_close(model(x), model(x))


def test_token_dropout_keeps_cls_and_real_tokens() -> None:
    model = VideoViT(VideoTowerConfig.tiny(num_frames=4, patch_dropout=0.5)).train()
    model.ln_pre = torch.nn.Identity()  # compare raw embeddings
    x = video(frames=4)
    kept = model.embed(x)
    model.eval()
    full = model.embed(x)
    torch.testing.assert_close(kept[:, 0], full[:, 0])
    for b in range(2):
        matches = (kept[b, 1:, None] - full[b, None, 1:]).abs().sum(-1) < 1e-6  # (kept, all)
        assert matches.sum(1).eq(1).all()  # every kept token is one original token
        assert matches.sum(0).le(1).all()  # none twice


def test_drop_path_only_in_training() -> None:
    layer = DropPath(0.5)
    x = torch.ones(1000, 3)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    per_sample = y[:, 0]
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and rescaled by 1/(1-p)
    assert (y == y[:, :1]).all()  # whole samples, not elements
    assert 350 < int((per_sample == 0).sum()) < 650

    model = VideoViT(VideoTowerConfig.tiny(drop_path_rate=0.5))
    assert [b.drop_path.p for b in model.transformer.blocks] == [0.0, 0.5]  # linear in depth
    x = video()
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    outs = [model(x) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_divided_block_matches_a_per_frame_loop() -> None:
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(dim=32, num_heads=4).eval()
    torch.nn.init.normal_(block.temporal_fc.weight, std=0.1)  # make the temporal branch count
    T, N = 3, 4
    x = torch.randn(2, 1 + T * N, 32)
    out = block(x, num_frames=T)

    cls, grid = x[:, :1], x[:, 1:].reshape(2, T, N, 32)
    temporal = torch.stack([block.temporal_attn(block.temporal_ln(grid[:, :, n])) for n in range(N)], dim=2)
    grid = grid + block.temporal_fc(temporal)
    frames = [block.attn(block.ln_1(torch.cat([cls, grid[:, t]], dim=1))) for t in range(T)]
    new_cls = cls + torch.stack([f[:, :1] for f in frames]).mean(0)
    new_grid = grid + torch.stack([f[:, 1:] for f in frames], dim=1)
    ref = torch.cat([new_cls, new_grid.reshape(2, T * N, 32)], dim=1)
    ref = ref + block.mlp(block.ln_2(ref))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_timesformer_shapes_and_param_count() -> None:
    cfg = VideoTowerConfig.tiny(num_frames=4)
    vit, tsf = VideoViT(cfg), TimeSformer(VideoTowerConfig.tiny(num_frames=4, arch="timesformer"))
    assert tsf(video(frames=4)).shape == (2, 32)
    n_vit = sum(p.numel() for p in vit.parameters())
    n_tsf = sum(p.numel() for p in tsf.parameters())
    per_block_extra = 2 * 64 + (3 * 64 * 64 + 3 * 64) + (64 * 64 + 64) + (64 * 64 + 64)  # ln, attn, fc
    assert n_tsf - n_vit == cfg.layers * per_block_extra


def test_text_tower_pools_at_eot() -> None:
    model = TextTransformer(TextTowerConfig.tiny()).eval()
    text = tokens()
    out = model(text)
    assert out.shape == (2, 32)
    after = text.clone()
    after[:, 7] = 3  # after the EOT token: invisible to it under the causal mask
    torch.testing.assert_close(model(after), out)
    before = text.clone()
    before[:, 2] = (before[:, 2] + 1) % 900 + 1
    assert not torch.allclose(model(before), out)
    torch.testing.assert_close(model(text[:, :6]), out)  # shorter contexts are fine


def test_dual_encoder_outputs() -> None:
    model = DualEncoder(DualEncoderConfig.tiny()).eval()
    out = model(video(), tokens())
    assert out.video.shape == out.text.shape == (2, 32)
    torch.testing.assert_close(out.video.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out.text.norm(dim=-1), torch.ones(2))
    assert math.isclose(out.logit_scale.item(), 1 / 0.07, rel_tol=1e-5)
    assert model.logit_scale.requires_grad
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(model(video(), tokens()).logit_scale.item(), 100.0, rel_tol=1e-4)  # clamped at ln 100


def test_dual_encoder_frozen_temperature_and_embed_dim_check() -> None:
    model = DualEncoder(DualEncoderConfig.tiny(freeze_logit_scale=True))
    assert not model.logit_scale.requires_grad
    out = model(video(), tokens())
    (out.video * out.text).sum().mul(out.logit_scale).backward()
    assert model.logit_scale.grad is None
    with pytest.raises(ValueError, match="must be equal"):
        DualEncoderConfig(video=VideoTowerConfig.tiny(), text=TextTowerConfig.tiny(output_dim=16))


def test_classifier_head() -> None:
    model = VideoClassifier(VideoTowerConfig.tiny(output_dim=None)).eval()
    assert model.head.in_features == 64
    logits = model(video())
    assert logits.shape == (2, 3806)
    torch.testing.assert_close(model(video(batch=1)).softmax(-1).sum(), torch.tensor(1.0))


def test_interpolate_temporal_embedding() -> None:
    ramp = torch.arange(4.0).unsqueeze(1).repeat(1, 3)  # value i at step i
    out = interpolate_temporal_embedding(ramp, 16)
    assert out.shape == (16, 3)
    # Entry j of 16 sits at the same instant as fractional entry (j + 0.5) / 4 - 0.5 of 4 (segment centres),
    # held constant beyond the first and last centres.
    expected = ((torch.arange(16.0) + 0.5) / 4 - 0.5).clamp(0, 3)
    torch.testing.assert_close(out[:, 0], expected)
    torch.testing.assert_close(interpolate_temporal_embedding(ramp, 4), ramp)
    const = torch.full((4, 5), 0.3)
    torch.testing.assert_close(interpolate_temporal_embedding(const, 16), torch.full((16, 5), 0.3))


def test_load_checkpoint_with_a_different_frame_count() -> None:
    pretrain = DualEncoder(DualEncoderConfig.tiny())  # 2 frames
    with torch.no_grad():
        pretrain.video.temporal_embedding.normal_()
    finetune = DualEncoder(DualEncoderConfig(video=VideoTowerConfig.tiny(num_frames=8), text=TextTowerConfig.tiny()))
    missing, unexpected = load_state_dict_resized(finetune, pretrain.state_dict())
    assert missing == [] and unexpected == []
    expected = interpolate_temporal_embedding(pretrain.video.temporal_embedding.detach(), 8)
    torch.testing.assert_close(finetune.video.temporal_embedding.detach(), expected)
    torch.testing.assert_close(finetune.video.class_embedding, pretrain.video.class_embedding)
    assert finetune(video(frames=8), tokens()).video.shape == (2, 32)


def test_non_reentrant_checkpoint_accepts_block_kwargs() -> None:
    # TimeSformer passes num_frames through checkpoint(); guard that torch keeps allowing it.
    block = DividedSpaceTimeBlock(dim=16, num_heads=2)
    x = torch.randn(1, 1 + 2 * 4, 16, requires_grad=True)
    out = checkpoint(block, x, use_reentrant=False, num_frames=2)
    torch.testing.assert_close(out, block(x, num_frames=2))
