"""The residual stream in the autocast dtype (`low_precision_residual`): what checkpointing keeps halves."""

import dataclasses

import pytest
import torch

from avtool.bench.memory import measure_step
from avtool.models import Block, DualEncoder, DualEncoderConfig, Transformer
from avtool.train.losses import clip_loss


def _stack(low: bool) -> Transformer:
    torch.manual_seed(0)
    stack = Transformer([Block(64, 4) for _ in range(3)], low_precision_residual=low)
    stack.set_grad_checkpointing(True)
    return stack


def test_checkpointed_block_inputs_are_kept_in_bfloat16() -> None:
    # A float32 residual under autocast, as a GPU's autocast leaves it (its LayerNorm returns float32).
    x = torch.randn(2, 10, 64)
    full, low = _stack(False), _stack(True)
    full_saved = measure_step(full, x, torch.bfloat16).saved
    low_saved = measure_step(low, x, torch.bfloat16).saved
    # One input per checkpointed block; the first block's is the stack's own input, which is not counted,
    # unless it is the bfloat16 copy.
    assert full_saved.other == 2 * x.numel() * 4
    assert low_saved.other == 3 * x.numel() * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = full(x), low(x)
    assert (a.dtype, b.dtype) == (torch.float32, torch.bfloat16)
    assert (b.float() - a).norm() / a.norm() < 2e-2  # bf16 rounding of the residual sums only


def test_without_autocast_it_changes_nothing() -> None:
    x = torch.randn(2, 10, 64)
    assert torch.equal(_stack(False)(x), _stack(True)(x))


def test_dual_encoder_trains_with_it() -> None:
    base = DualEncoderConfig.tiny()
    cfg = dataclasses.replace(
        base,
        video=dataclasses.replace(base.video, low_precision_residual=True, grad_checkpointing=True),
        text=dataclasses.replace(base.text, low_precision_residual=True),
    )
    model = DualEncoder(cfg)
    video, text = torch.randn(2, 3, 2, 32, 32), torch.randint(1, 999, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video, text)
    clip_loss(out.video.float(), out.text.float(), out.logit_scale).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.video.transformer.low_precision_residual and model.text.transformer.low_precision_residual


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_residual_is_float32_unless_asked() -> None:
    x = torch.randn(2, 10, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert _stack(False).cuda()(x).dtype == torch.float32
        assert _stack(True).cuda()(x).dtype == torch.bfloat16
