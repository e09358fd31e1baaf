"""Activation-memory attribution (paper Fig. 3) on tiny towers; the CUDA cross-check runs on a GPU only."""

import csv
import io
import json

import pytest
import torch

from avtool.bench.memory import (
    CATEGORIES,
    MemoryBenchConfig,
    attribute_saved_tensors,
    measure_step,
    run_memory_bench,
    summarize,
)
from avtool.models import VideoTowerConfig, VideoViT

# 64×64 frames of 16×16 patches, 4 frames: N = 1 + 4·16 = 65 tokens of width 64, 4 heads, 2 blocks.
TOWER = VideoTowerConfig.tiny(image_size=64, num_frames=4)
N, D, H, LAYERS = 65, 64, 4, 2
FP32 = 4


@pytest.fixture(scope="module")
def rows() -> dict:
    cfg = MemoryBenchConfig(tower=TOWER, batch_sizes=(2, 4), device="cpu")
    return {row.variant: row for row in run_memory_bench(cfg)}


def test_categories_add_up_to_the_saved_total(rows: dict) -> None:
    for row in rows.values():
        parts = row.layernorm_mb + row.mha_mb + row.mlp_mb + row.other_mb
        assert parts == pytest.approx(row.saved_total_mb, abs=0.002)
        assert row.allocated_mb is None and row.device == "cpu"  # CUDA counters only on a GPU


def test_math_attention_keeps_the_attention_matrix(rows: dict) -> None:
    probs_mb = LAYERS * H * N * N * FP32 / 1e6  # softmax output saved for backward, per video
    baseline, flash = rows["baseline"], rows["flash-attn"]
    assert baseline.attn_impl == "math" and flash.attn_impl == "sdpa"
    assert baseline.mha_mb >= probs_mb
    assert baseline.mha_mb - flash.mha_mb >= 0.9 * probs_mb
    # Everything but attention is the same model.
    assert (baseline.layernorm_mb, baseline.mlp_mb) == (flash.layernorm_mb, flash.mlp_mb)


def test_checkpointing_keeps_only_block_inputs(rows: dict) -> None:
    ckpt = rows["grad-ckpt"]
    token_mb = N * D * FP32 / 1e6
    assert ckpt.grad_checkpointing
    assert ckpt.mha_mb == 0 and ckpt.mlp_mb == 0
    assert ckpt.other_mb == pytest.approx(LAYERS * token_mb, abs=0.002)  # one (N, D) input per block
    assert ckpt.layernorm_mb == pytest.approx(token_mb, abs=0.002)  # ln_pre's input (+ tiny stats)
    assert ckpt.saved_total_mb < rows["flash-attn"].saved_total_mb / 5


def test_checkpointing_the_first_k_blocks() -> None:
    model = VideoViT(VideoTowerConfig.tiny(layers=4))
    video = torch.randn(2, 3, 2, 32, 32)
    plain = measure_step(model, video).saved
    model.set_grad_checkpointing(True, blocks=2)
    half = measure_step(model, video).saved
    assert half.mha == plain.mha // 2 and half.mlp == plain.mlp // 2
    assert half.total < plain.total


def test_parameters_and_inputs_are_not_activations() -> None:
    model = VideoViT(VideoTowerConfig.tiny()).train()
    video = torch.randn(2, 3, 2, 32, 32)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with attribute_saved_tensors(model, exclude=(video,)) as saved:
        model(video)
    assert saved and not params & saved.keys()
    assert video.untyped_storage().data_ptr() not in saved
    assert summarize(saved).total == sum(nbytes for _, nbytes in saved.values())
    assert {category for category, _ in saved.values()} == set(CATEGORIES)


def test_timesformer_temporal_projection_counts_as_mha() -> None:
    tower = VideoTowerConfig.tiny(arch="timesformer")
    rows = run_memory_bench(MemoryBenchConfig(tower=tower, variants=("flash-attn",), batch_sizes=(2, 3)))
    vit = run_memory_bench(
        MemoryBenchConfig(tower=VideoTowerConfig.tiny(), variants=("flash-attn",), batch_sizes=(2, 3))
    )
    assert rows[0].arch == "timesformer"
    assert rows[0].mha_mb > vit[0].mha_mb  # two attentions per block
    assert rows[0].other_mb == pytest.approx(vit[0].other_mb, abs=0.002)


def test_rows_write_as_csv_and_json(rows: dict) -> None:
    dicts = [row.to_dict() for row in rows.values()]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dicts[0]))
    writer.writeheader()
    writer.writerows(dicts)
    back = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert [r["variant"] for r in back] == ["baseline", "flash-attn", "grad-ckpt"]
    assert json.loads(json.dumps(dicts)) == dicts


def test_invalid_config_lists_every_problem() -> None:
    with pytest.raises(ValueError) as err:
        run_memory_bench(MemoryBenchConfig(tower=TOWER, variants=("fast",), batch_sizes=(4, 2), device="tpu"))
    assert "'fast'" in str(err.value) and "batch_sizes" in str(err.value) and "tpu" in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_saved_total_matches_cuda_allocations() -> None:
    tower = VideoTowerConfig(num_frames=4, layers=2)
    for row in run_memory_bench(MemoryBenchConfig(tower=tower, batch_sizes=(2, 4), device="cuda")):
        assert row.allocated_mb == pytest.approx(row.saved_total_mb, rel=0.05), row
        assert row.step_peak_mb >= 0.95 * row.saved_total_mb
