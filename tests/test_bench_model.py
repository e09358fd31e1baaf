"""Dual-encoder training benchmark (paper Fig. 4) on tiny towers; the batch search runs on a GPU only."""

import math

import pytest
import torch

from avtool.bench.model import ModelBenchConfig, contrastive_loss, largest_batch, run_model_bench
from avtool.models import DualEncoderConfig


def test_rows_for_every_arch_and_variant() -> None:
    cfg = ModelBenchConfig(model=DualEncoderConfig.tiny(), batch_size=2, warmup_steps=1, steps=2, device="cpu")
    rows = run_model_bench(cfg)
    assert [(r.arch, r.variant) for r in rows] == [
        (arch, variant) for arch in ("timesformer", "vit") for variant in ("baseline", "flash-attn", "grad-ckpt")
    ]
    for row in rows:
        assert row.batch_size == 2 and not row.batch_size_is_max
        assert row.videos_per_second == pytest.approx(2 / row.step_seconds, rel=0.01)
        assert row.attn_impl == ("math" if row.variant == "baseline" else "sdpa")
        assert row.grad_checkpointing == (row.variant == "grad-ckpt")
        assert row.peak_memory_gb is None and row.dtype == "float32"
        assert set(row.to_dict()) >= {"arch", "variant", "batch_size", "videos_per_second"}


@pytest.mark.parametrize("granularity", [1, 4, 8])
def test_largest_batch_search(granularity: int) -> None:
    tried = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= 37

    found = largest_batch(fits, upper=1000, granularity=granularity)
    assert 37 - granularity < found <= 37
    assert fits(found)
    assert len(tried) < 20  # doubling then bisection, not a scan
    assert largest_batch(lambda n: True, upper=100, granularity=1) == 100
    assert largest_batch(lambda n: False, upper=100) == 0


def test_contrastive_loss() -> None:
    emb = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(100.0)
    assert contrastive_loss(emb, emb, scale).item() < 0.05  # each video matches its own caption
    uniform = contrastive_loss(emb, emb, torch.tensor(0.0))
    assert uniform.item() == pytest.approx(math.log(8))


def test_cpu_needs_a_fixed_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size is required"):
        run_model_bench(ModelBenchConfig(model=DualEncoderConfig.tiny(), device="cpu"))
    with pytest.raises(ValueError, match="unknown arch 'swin'"):
        run_model_bench(ModelBenchConfig(model=DualEncoderConfig.tiny(), archs=("swin",), batch_size=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_search_finds_a_batch_under_a_memory_cap() -> None:
    cfg = ModelBenchConfig(
        archs=("vit",), variants=("flash-attn",), memory_limit_gb=4, warmup_steps=1, steps=2, device="cuda"
    )
    (row,) = run_model_bench(cfg)
    assert row.batch_size_is_max and row.batch_size >= 1
    assert row.peak_memory_gb <= 4.0
