"""Dual-encoder training benchmark (paper Fig. 4) on tiny towers; the batch search runs on a GPU only."""

import copy
import dataclasses
import gc
import weakref

import pytest
import torch
from rich.console import Console
from torch.utils._python_dispatch import TorchDispatchMode

from avtool.bench.model import (
    COMPILE_MODES,
    CPU_BATCH,
    ModelBenchConfig,
    Trainer,
    _forward_loss,
    dense_peak_tflops,
    fewest_checkpointed_blocks,
    largest_batch,
    run_model_bench,
    train_step_flops,
)
from avtool.models import DualEncoderConfig, VideoTowerConfig
from avtool.train.config import OptimConfig, RunConfig
from avtool.train.engine import fit
from avtool.train.optim import build_optimizer
from avtool.train.step import TrainStep


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


def test_cpu_without_a_batch_size_uses_a_fixed_one() -> None:
    # No CUDA out-of-memory errors to search by on a CPU: a fixed batch, reported as not the largest.
    cfg = ModelBenchConfig(model=DualEncoderConfig.tiny(), archs=("vit",), variants=("flash-attn",), device="cpu",
                           warmup_steps=0, steps=1)  # fmt: skip
    (row,) = run_model_bench(cfg)
    assert row.batch_size == CPU_BATCH and not row.batch_size_is_max
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


def _forward_flops(width: int, layers: int, tokens: int) -> float:
    """Matmul FLOPs of a pre-norm transformer's forward pass: qkv, proj and the 4× MLP (24·N·D²) plus
    q·kᵀ and attention·v (4·N²·D), per block."""
    return layers * (24 * tokens * width**2 + 4 * tokens**2 * width)


def test_flops_of_the_vit_b_dual_encoder_match_the_formula() -> None:
    cfg = DualEncoderConfig()  # ViT-B/16 at 224², 4 frames; CLIP's text tower with 77 tokens
    video = _forward_flops(768, 12, 1 + 4 * 14 * 14)
    text = _forward_flops(512, 12, 77)
    patches = 2 * 4 * 196 * (3 * 16 * 16) * 768
    # Backward costs twice the forward, except the patch embedding's (no gradient for the input clip).
    expected = 3 * (video + text) + 2 * patches
    ckpt = dataclasses.replace(
        cfg,
        video=dataclasses.replace(cfg.video, grad_checkpointing=True, grad_checkpointing_blocks=4),
        text=dataclasses.replace(cfg.text, grad_checkpointing=True),
    )
    model, hardware = train_step_flops(ckpt, batch_size=2)
    assert model / 2 == pytest.approx(expected, rel=0.003)  # ≈ 488 GFLOP per video
    # Checkpointing repeats the forward of the checkpointed blocks (4 of 12 video blocks, all text blocks),
    # up to the last tensor backward needs: the MLP's output projection (8·N·D²) is not recomputed.
    recomputed = _forward_flops(768, 4, 785) - 4 * 8 * 785 * 768**2 + text - 12 * 8 * 77 * 512**2
    # The memory-efficient kernels' backward recomputes q·kᵀ: 2.5× the attention's forward, not 2×.
    attention = 12 * 4 * 785**2 * 768 + 12 * 4 * 77**2 * 512
    assert (hardware - model) / 2 == pytest.approx(recomputed + attention / 2, rel=0.003)
    # Blocks that keep their attention outputs do not run the attention again.
    keep = dataclasses.replace(ckpt, video=dataclasses.replace(ckpt.video, grad_checkpointing_keep_attention=3))
    model_keep, hardware_keep = train_step_flops(keep, batch_size=2)
    assert model_keep == model
    assert (hardware - hardware_keep) / 2 == pytest.approx(3 * 4 * 785**2 * 768, rel=0.003)


def test_peak_is_found_by_gpu_name() -> None:
    assert dense_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert dense_peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert dense_peak_tflops("NVIDIA H200") == 989.4
    assert dense_peak_tflops("NVIDIA RTX A5000") == 111.1
    assert dense_peak_tflops("cpu") is None and dense_peak_tflops("NVIDIA GeForce GT 710") is None


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_optimizer_step_is_the_fused_adamw_kernel() -> None:
    trainer = Trainer(DualEncoderConfig.tiny(), torch.device("cuda", torch.cuda.current_device()), torch.bfloat16)
    video, text = trainer.batch(2)
    with _CountOps() as seen:
        trainer.step(video, text)
    assert trainer.fused_optimizer and "aten._fused_adamw_" in seen.ops
    assert not any("_foreach_addcdiv" in op for op in seen.ops)  # not the multi-kernel foreach path
    trainer.close()


def test_the_trainer_optimizer_has_the_parameter_groups_of_training() -> None:
    trainer = Trainer(DualEncoderConfig.tiny(), torch.device("cpu"), None)
    expected = build_optimizer(trainer.model, OptimConfig(), torch.device("cpu"))
    assert type(trainer.optimizer) is type(expected) is torch.optim.AdamW
    assert len(trainer.optimizer.param_groups) == len(expected.param_groups) == 2
    for group, want in zip(trainer.optimizer.param_groups, expected.param_groups, strict=True):
        assert [id(p) for p in group["params"]] == [id(p) for p in want["params"]]
        assert {k: v for k, v in group.items() if k != "params"} == {k: v for k, v in want.items() if k != "params"}
    decayed, not_decayed = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == OptimConfig().weight_decay and not_decayed["weight_decay"] == 0.0
    assert all(p.ndim < 2 for p in not_decayed["params"]) and any(p.ndim == 0 for p in not_decayed["params"])
    assert not trainer.fused_optimizer  # training's AdamW is fused on CUDA only
    trainer.close()


class _Keys(torch.utils.data.Dataset):
    """``size`` items, each the sampler's key (which the job's collation ignores)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        return key


class _OneBatchJob:
    """An engine job that trains ``model`` on one fixed batch with bench model's loss."""

    name = "bench-step"
    best_metric = None
    views_per_video = 1

    def __init__(self, model: torch.nn.Module, video: torch.Tensor, text: torch.Tensor) -> None:
        self.model, self.video, self.text = model, video, text

    def build_model(self) -> torch.nn.Module:
        return self.model

    def train_dataset(self) -> _Keys:
        return _Keys(len(self.video))

    def eval_dataset(self) -> None:
        return None

    def collate(self):
        return lambda keys: {"video": self.video, "text": self.text}  # the batch in its order, whatever the draw

    def loss(self, model, batch, env):
        return _forward_loss(model, batch["video"], batch["text"]), {}

    def evaluate(self, model, env):
        return None


def test_the_trainer_and_the_engine_run_the_same_step(tmp_path, monkeypatch) -> None:
    calls = []
    step = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, *a, **k: calls.append(self) or step(self, *a, **k))
    torch.manual_seed(0)
    trainer = Trainer(DualEncoderConfig.tiny(), torch.device("cpu"), None)
    video, text = trainer.batch(2)
    model = copy.deepcopy(trainer.model)  # the same weights, for the engine
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.step(video, text)

    run = RunConfig(output_dir=tmp_path, epochs=1, batch_size=2, workers=0, precision="fp32", device="cpu")
    # A fixed rate: the schedule's step-0 rate is the optimiser's own (OptimConfig's lr), as in the trainer.
    result = fit(_OneBatchJob(model, video, text), run, OptimConfig(fixed_lr=True), run, Console(quiet=True))

    assert result.state.step == 1 and len(calls) == 2 and calls[0] is trainer.train_step
    trained = trainer.model.state_dict()
    assert any(not torch.equal(before[name], trained[name]) for name in before)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, trained[name]), name
    trainer.close()


def test_a_finished_trainer_frees_its_model_without_garbage_collection() -> None:
    # A reference cycle would keep the model and optimiser state on the GPU into the next measurement.
    gc.disable()
    try:
        trainer = Trainer(DualEncoderConfig.tiny(), torch.device("cpu"), None)
        trainer.step(*trainer.batch(2))
        model = weakref.ref(trainer.model)
        del trainer
        assert model() is None
    finally:
        gc.enable()


def test_the_batch_search_recovers_from_out_of_memory() -> None:
    # A memory budget of 5 videos, simulated on the CPU: larger batches fail inside the step, as on a GPU.
    trainer = Trainer(DualEncoderConfig.tiny(), torch.device("cpu"), None)
    step = trainer.step
    tried = []

    def step_within_budget(video: torch.Tensor, text: torch.Tensor) -> None:
        tried.append(video.shape[0])
        if video.shape[0] > 5:
            step(video[:1], text[:1])  # the forward and part of backward ran before memory ran out
            raise torch.OutOfMemoryError("simulated: batch over the budget")
        step(video, text)

    trainer.step = step_within_budget
    assert largest_batch(trainer.fits, upper=64, granularity=1) == 5
    assert max(tried) == 8 and all(p.grad is None for p in trainer.model.parameters())  # state left clean
    seconds, peak = trainer.time_steps(5, warmup=0, steps=1)  # and the trainer still trains
    assert seconds > 0 and peak is None


def test_fewest_checkpointed_blocks() -> None:
    calls = []

    def fits(blocks: int) -> bool:
        calls.append(blocks)
        return blocks >= 7

    assert fewest_checkpointed_blocks(fits, layers=12) == 7 and len(calls) <= 5
    assert fewest_checkpointed_blocks(lambda k: True, layers=12) == 0
    assert fewest_checkpointed_blocks(lambda k: False, layers=12) is None


def test_checkpointing_the_first_k_blocks_costs_their_forward_again() -> None:
    model = dataclasses.replace(DualEncoderConfig.tiny(), video=VideoTowerConfig.tiny(layers=4))
    cfg = ModelBenchConfig(
        model=model, archs=("vit",), variants=("flash-attn", "grad-ckpt"), ckpt_blocks=2, batch_size=2,
        warmup_steps=0, steps=1, device="cpu", peak_tflops=1.0,
    )  # fmt: skip
    flash, ckpt = run_model_bench(cfg)
    assert (flash.ckpt_blocks, ckpt.ckpt_blocks) == (0, 2) and ckpt.layers == 4
    assert flash.gflop_per_video == ckpt.gflop_per_video  # model FLOPs do not count recomputation
    # Without checkpointing HFU exceeds MFU only by the q·kᵀ that the attention kernel's backward recomputes.
    assert 1.0 < flash.hfu / flash.mfu < 1.05 < ckpt.hfu / ckpt.mfu
    assert ckpt.mfu == pytest.approx(ckpt.tflops / 1.0, rel=0.01)


def test_blocks_that_keep_their_attention_are_reported_and_cost_less_recomputation() -> None:
    model = dataclasses.replace(DualEncoderConfig.tiny(), video=VideoTowerConfig.tiny(layers=4))
    base = ModelBenchConfig(
        model=model, archs=("vit",), variants=("grad-ckpt",), batch_size=2, warmup_steps=0, steps=1,
        device="cpu", peak_tflops=1.0,
    )  # fmt: skip
    (full,) = run_model_bench(dataclasses.replace(base, ckpt_blocks=3))
    (keep,) = run_model_bench(dataclasses.replace(base, ckpt_blocks=3, ckpt_keep_attention=2))
    assert (full.ckpt_blocks, full.ckpt_keep_attention) == (3, 0)
    assert (keep.ckpt_blocks, keep.ckpt_keep_attention) == (3, 2)
    # Same blocks checkpointed: the kept attention forwards are the only hardware FLOPs that differ.
    assert keep.gflop_per_video == full.gflop_per_video and keep.hfu / keep.mfu < full.hfu / full.mfu


def test_config_problems_are_listed_together() -> None:
    cfg = ModelBenchConfig(
        model=DualEncoderConfig.tiny(), variants=("flash-attn",), ckpt_blocks=9, compile=True, device="cpu",
        flash_impl="warp", peak_tflops=-1, precision="fp8", activation_memory_budget=1.5,
    )  # fmt: skip
    text = "\n".join(cfg.problems())
    for expected in ("ckpt_blocks=9", "grad-ckpt variant", "compile needs a fixed batch_size", "'warp'",
                     "peak_tflops=-1", "precision='fp8'",
                     "activation_memory_budget=1.5"):  # fmt: skip
        assert expected in text, expected
    eager = ModelBenchConfig(model=DualEncoderConfig.tiny(), activation_memory_budget=0.5, batch_size=2, device="cpu")
    assert any("activation_memory_budget needs compile" in p for p in eager.problems())
    auto = ModelBenchConfig(model=DualEncoderConfig.tiny(), ckpt_blocks="auto", batch_size=2, device="cpu")
    assert any("needs CUDA" in p for p in auto.problems())
    tiny = dict(model=DualEncoderConfig.tiny(), batch_size=2, device="cpu")  # 2 video blocks
    for fields, expected in (
        (dict(ckpt_keep_attention=3), "ckpt_keep_attention=3 is outside 0..2"),
        (dict(ckpt_blocks=1, ckpt_keep_attention=2), "ckpt_keep_attention=2 is outside 0..1"),
        (dict(ckpt_keep_attention=1, flash_impl="math"), "not 'math'"),
        (dict(ckpt_keep_attention=1, variants=("flash-attn",)), "applies to the grad-ckpt variant"),
        (dict(compile_mode="max-autotune-no-cudagraphs"), "compile_mode needs compile"),
        (dict(compile=True, compile_mode="fast"), "compile_mode='fast'"),
    ):
        assert any(expected in p for p in ModelBenchConfig(**tiny, **fields).problems()), expected


def test_compile_modes_are_known_to_torch_compile() -> None:
    import torch._inductor.config as inductor_config

    assert set(COMPILE_MODES) == {"default", "max-autotune-gemm", "max-autotune-no-cudagraphs"}
    for arguments in COMPILE_MODES.values():
        assert set(arguments) <= {"mode", "options"}
        if "mode" in arguments:
            assert torch._inductor.list_mode_options(arguments["mode"])  # an unknown mode raises
        for option in arguments.get("options", {}):
            assert hasattr(inductor_config, option), option


def test_the_memory_budget_is_a_known_compiler_setting_and_steps_run_with_it() -> None:
    # The budget is patched into torch._functorch.config around each step; an unknown key would raise.
    trainer = Trainer(DualEncoderConfig.tiny(), torch.device("cpu"), None, memory_budget=0.3)
    video, text = trainer.batch(2)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.step(video, text)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(), strict=True))
    assert torch._functorch.config.activation_memory_budget == 1.0  # restored after the step
    trainer.close()
