"""Training throughput and largest batch of the video–text dual encoder (the paper's Fig. 4).

Each (architecture, variant) pair trains the full dual encoder (video tower, text tower, symmetric
InfoNCE) with the step `avtool train` runs (``avtool.train.step``: autocast, AdamW with training's
parameter groups, fused on CUDA) on synthetic clips and captions kept on the device, so only the model
is timed. On CUDA the largest batch that fits is found by doubling and then bisecting on out-of-memory
errors; ``memory_limit_gb`` caps the usable memory to mimic a smaller card (the paper used a 24 GB
A5000). Timing follows the usual recipe: warm-up steps, synchronise, time N steps, synchronise.

Every row also reports the model FLOPs of a step, counted by ``torch.utils.flop_counter`` on a copy of
the model on the meta device (shapes only, no arithmetic), and from them the model FLOPs utilisation
(MFU: FLOPs of forward and backward over step time and the GPU's dense peak) and the hardware FLOPs
utilisation (HFU: the same with the forward passes that checkpointing repeats counted too).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.flop_counter import FlopCounterMode

from avtool.bench.memory import VARIANTS, Variant, variant_attn_option, variant_tower, variants_option
from avtool.model_options import ckpt_keep_attention_option
from avtool.models import DualEncoder, DualEncoderConfig, VideoTowerConfig
from avtool.models.attention import AttnImpl, check_attn_impl, check_keeps_attention
from avtool.models.video import VideoArch
from avtool.options import option
from avtool.train.config import (
    COMPILE_MODES,
    CompileMode,
    Device,
    OptimConfig,
    Precision,
    autocast_dtype,
    compile_mode_option,
    device_option,
    output_option,
    precision_option,
    precision_problem,
    seed_option,
)
from avtool.train.losses import clip_loss
from avtool.train.optim import build_optimizer
from avtool.train.step import TrainStep, grad_scaler

CPU_BATCH = 8
"""Batch of a CPU run without --batch-size (the largest-batch search needs CUDA's out-of-memory errors)."""


@dataclass(frozen=True)
class ModelBenchConfig:
    """What to run: architectures × variants of one dual encoder."""

    model: DualEncoderConfig = field(default_factory=lambda: DualEncoderConfig(video=VideoTowerConfig(fast_conv1=True)))
    """Dual encoder (default: ViT-B/16 video tower at 224², 4 frames, fast conv1 as in training; CLIP text tower;
    256-d); its video tower's attention and checkpointing are set per variant."""
    archs: tuple[VideoArch, ...] = option(("timesformer", "vit"), flags="--arch", panel="Model",
                                          help="Video architectures, repeatable: timesformer (TSF-B in Fig. 4) "
                                          "and/or vit (ViT-B).")  # fmt: skip
    variants: tuple[Variant, ...] = variants_option()
    flash_impl: AttnImpl = variant_attn_option()
    ckpt_blocks: int | Literal["auto"] | None = option(
        None, panel="Model", metavar="all|auto|INT", show_default="all",
        help="grad-ckpt: checkpoint only the first k video blocks, or auto (the fewest that let --batch-size fit, "
        "CUDA); the text tower is always checkpointed in full.",
    )  # fmt: skip
    ckpt_keep_attention: int = ckpt_keep_attention_option()
    compile: bool = option(False, panel="Run", help="torch.compile forward and loss together (needs --batch-size; "
                           "compiling takes minutes).")  # fmt: skip
    compile_mode: CompileMode = compile_mode_option()
    activation_memory_budget: float | None = option(
        None, panel="Run",
        help="With --compile: fraction (0-1] of the activations of a run without recomputation that the compiler "
        "may keep, choosing itself what to recompute (an alternative to --variant grad-ckpt).",
    )  # fmt: skip
    batch_size: int | None = option(
        None, panel="Optimisation", unit="videos", show_default="the largest that fits (CUDA), 8 on a CPU",
        help="Fixed batch per step; unset, the largest that fits is searched by doubling and bisecting on CUDA "
        "out-of-memory errors.",
    )  # fmt: skip
    max_batch_size: int = option(2048, panel="Optimisation", unit="videos", help="Upper bound of the search.")
    search_granularity: int = option(
        8,
        flags="--granularity",
        panel="Optimisation",
        unit="videos",
        help="Stop the search when fitting and failing batches are this close.",
    )
    memory_limit_gb: float | None = option(
        None, panel="Run", unit="GB", show_default="the whole GPU",
        help="Use at most this many GB of GPU memory, allocator reserve included (24 mimics the paper's A5000).",
    )  # fmt: skip
    warmup_steps: int = option(3, panel="Run", help="Untimed training steps before timing.")
    steps: int = option(10, panel="Run", help="Timed training steps (forward, backward, optimiser).")
    device: Device = device_option()
    precision: Precision = precision_option()
    peak_tflops: float | None = option(
        None,
        panel="Run",
        unit="TFLOP/s",
        show_default="looked up by GPU name",
        help="Dense bf16/fp16 peak of the GPU, for MFU.",
    )
    seed: int = seed_option("weights and the synthetic batches")
    output_dir: Path = output_option("results", "NAME.csv and NAME.json")
    name: str = option("model", panel="Output", help="Base name of the result files.")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device`` (None: float32, always on the CPU)."""
        return autocast_dtype(self.precision, device.type)

    def resolved_device(self) -> torch.device:
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # CUDA memory APIs want an index, not the bare "cuda".
        return torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device(device)

    def problems(self) -> list[str]:
        out = [f"unknown variant {v!r}" for v in self.variants if v not in VARIANTS]
        out += [f"unknown arch {a!r}" for a in self.archs if a not in ("vit", "timesformer")]
        if self.device not in ("auto", "cuda", "cpu"):
            out.append(f"device={self.device!r} is not auto, cuda or cpu")
        elif self.device == "cuda" and not torch.cuda.is_available():
            out.append("device='cuda' but torch sees no CUDA device")
        if self.batch_size is not None and self.batch_size < 1:
            out.append(f"batch_size={self.batch_size} must be positive")
        if self.steps < 1 or self.warmup_steps < 0:
            out.append("steps must be at least 1 and warmup_steps at least 0")
        if self.search_granularity < 1:
            out.append("search_granularity must be at least 1")
        if problem := precision_problem(self.precision):
            out.append(problem)
        attn_problem = check_attn_impl(self.flash_impl, on_cuda=self.device != "cpu" and torch.cuda.is_available())
        if attn_problem:
            out.append(f"flash_impl: {attn_problem}")
        if self.ckpt_blocks is not None:
            layers = self.model.video.layers
            if self.ckpt_blocks == "auto":
                if self.batch_size is None:
                    out.append("ckpt_blocks='auto' needs a fixed batch_size: it finds the blocks that let it fit")
                elif self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available()):
                    out.append("ckpt_blocks='auto' needs CUDA: it tries blocks until no out-of-memory error")
            elif not isinstance(self.ckpt_blocks, int) or not 0 <= self.ckpt_blocks <= layers:
                out.append(f"ckpt_blocks={self.ckpt_blocks!r} is not 'auto' or in 0..{layers} (the video blocks)")
            if "grad-ckpt" not in self.variants:
                out.append("ckpt_blocks applies to the grad-ckpt variant, which is not among the variants")
        if self.ckpt_keep_attention:
            layers = self.model.video.layers
            kept = self.ckpt_blocks if isinstance(self.ckpt_blocks, int) else layers
            if "grad-ckpt" not in self.variants:
                out.append("ckpt_keep_attention applies to the grad-ckpt variant, which is not among the variants")
            elif self.ckpt_blocks == "auto":
                out.append("ckpt_keep_attention needs a fixed ckpt_blocks, not 'auto'")
            elif not 0 <= self.ckpt_keep_attention <= kept:
                out.append(f"ckpt_keep_attention={self.ckpt_keep_attention} is outside 0..{kept} (checkpointed blocks)")
            if problem := check_keeps_attention(self.flash_impl):
                out.append(f"ckpt_keep_attention {problem}")
        if self.compile_mode not in COMPILE_MODES:
            out.append(f"compile_mode={self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        elif self.compile_mode != "default" and not self.compile:
            out.append("compile_mode needs compile")
        if self.compile and self.batch_size is None:
            out.append("compile needs a fixed batch_size: each size the search tries would compile again")
        if self.activation_memory_budget is not None:
            if not self.compile:
                out.append("activation_memory_budget needs compile: the compiler chooses what to recompute")
            if not 0 < self.activation_memory_budget <= 1:
                out.append(f"activation_memory_budget={self.activation_memory_budget} is not in (0, 1]")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            out.append(f"peak_tflops={self.peak_tflops} must be positive")
        return out


@dataclass(frozen=True)
class ModelBenchRow:
    """One (architecture, variant) measurement (one CSV/JSON row)."""

    arch: str
    variant: str
    attn_impl: str
    grad_checkpointing: bool
    ckpt_blocks: int
    """Video-tower blocks checkpointed (0 without checkpointing)."""
    ckpt_keep_attention: int
    """Checkpointed blocks that keep their attention outputs (selective checkpointing)."""
    compiled: bool
    compile_mode: str
    activation_memory_budget: float | None
    fused_optimizer: bool
    """Whether AdamW ran as the fused multi-tensor kernel (`_fused_adamw_`): on CUDA, as in training."""
    fused_mlp: bool
    """Whether the video tower's MLPs ran with the activation in the matmuls' epilogues."""
    width: int
    layers: int
    num_frames: int
    image_size: int
    device: str
    dtype: str
    memory_limit_gb: float | None
    batch_size: int
    batch_size_is_max: bool
    """True when batch_size is the largest that fitted (within search_granularity)."""
    step_seconds: float
    videos_per_second: float
    peak_memory_gb: float | None
    """CUDA: peak allocated memory during the timed steps (weights and optimiser state included), 1e9 B."""
    mb_per_video: float | None
    """CUDA: peak_memory_gb per video in the batch, MB (1e6 B)."""
    gflop_per_video: float
    """Model FLOPs of forward and backward per video, GFLOP (recomputation not counted)."""
    tflops: float
    """Model FLOPs per second achieved, TFLOP/s."""
    peak_tflops: float | None
    """Dense peak the utilisations are relative to, TFLOP/s (None: unknown device)."""
    mfu: float | None
    """Model FLOPs utilisation, 0-1."""
    hfu: float | None
    """Hardware FLOPs utilisation, 0-1: also counts the forward passes that checkpointing repeats."""

    def to_dict(self) -> dict:
        return asdict(self)


DENSE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    # Vendor datasheet dense (no 2:4 sparsity) bf16 = fp16 tensor-core peaks; first substring of the CUDA
    # device name that matches wins, so the PCIe/NVL parts come before the plain "H100" (the SXM part).
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("RTX A6000", 154.8),
    ("RTX A5000", 111.1),
)


def dense_peak_tflops(device_name: str) -> float | None:
    """Dense bf16/fp16 peak of a GPU from its CUDA name (e.g. 'NVIDIA H100 80GB HBM3'), or None."""
    for key, tflops in DENSE_PEAK_TFLOPS:
        if key in device_name:
            return tflops
    return None


def train_step_flops(cfg: DualEncoderConfig, batch_size: int) -> tuple[int, int]:
    """(model, hardware) FLOPs of one training step's forward and backward at ``batch_size``.

    Counted on a meta-device copy, so a ViT-B at batch 256 costs a second of CPU and no memory. Model FLOPs
    leave checkpointing off and count the attention as `math` (backward twice the forward, the usual
    convention). Hardware FLOPs keep ``cfg``'s checkpointing, whose recomputed forward passes the counter sees
    in backward (non-reentrant checkpointing stops at the last tensor backward needs, so a block's final
    matmul is not repeated, and blocks that keep their attention outputs do not repeat the attention), and
    count the attention as the configured kernel runs it (a memory-efficient backward recomputes the
    attention matrix: 2.5× the forward). The optimiser step is elementwise and not counted.
    """
    passes = []
    for checkpointing in (False, True):
        video_cfg, text_cfg = cfg.video, cfg.text
        if not checkpointing:
            video_cfg = dataclasses.replace(video_cfg, attn_impl="math", grad_checkpointing=False,
                                            grad_checkpointing_keep_attention=0)  # fmt: skip
            text_cfg = dataclasses.replace(text_cfg, attn_impl="math", grad_checkpointing=False)
        # The initialisers need real tensors (linspace(...).tolist()), so build on the CPU, then drop the data.
        model = DualEncoder(dataclasses.replace(cfg, video=video_cfg, text=text_cfg)).to("meta").train()
        video, text = _synthetic_batch(cfg, batch_size, torch.device("meta"))
        with FlopCounterMode(display=False) as counter:
            out = model(video, text)
            clip_loss(out.video, out.text, out.logit_scale).backward()
        passes.append(counter.get_total_flops())
    return passes[0], passes[1]


def _synthetic_batch(cfg: DualEncoderConfig, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clips and captions made on ``device`` (so no host-to-device copy is timed)."""
    v, t = cfg.video, cfg.text
    video = torch.randn(size, 3, v.num_frames, v.image_size, v.image_size, device=device)
    text = torch.randint(1, t.vocab_size - 1, (size, t.context_length), device=device)
    text[:, -1] = t.vocab_size - 1  # EOT: the largest id
    return video, text


def _forward_loss(model: DualEncoder, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    out = model(video, text)
    return clip_loss(out.video, out.text, out.logit_scale)


class Trainer:
    """The model, the training step of `avtool train` and synthetic batches on one device; ``step`` is one
    timed training step.

    The optimiser is the one training builds (``build_optimizer`` with the default ``OptimConfig``): AdamW
    without weight decay on the 0-D and 1-D parameters, fused on CUDA and, as in training, not on the CPU.
    Call ``close`` when done: it frees the GPU memory at once, so the next measurement starts from zero.
    """

    def __init__(
        self, cfg: DualEncoderConfig, device: torch.device, amp_dtype: torch.dtype | None, compile: bool = False,
        memory_budget: float | None = None, compile_mode: str = "default",
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.device = device
        self.amp_dtype = amp_dtype
        self.compiled = compile
        self.memory_budget = memory_budget
        self.model = DualEncoder(cfg).to(device).train()
        self.optimizer = build_optimizer(self.model, OptimConfig(), device)
        self.train_step = TrainStep(self.model, self.optimizer, grad_scaler(device, amp_dtype), device, amp_dtype)
        # A module-level function, not a bound method: a trainer that refers to itself through a stored method
        # is a reference cycle, which keeps its model and optimiser state on the GPU until the next gc run.
        self.forward_loss = _forward_loss
        if compile:
            # Compile forward and loss together so the loss's elementwise ops fuse too; autocast stays
            # outside, where dynamo reads it as guarded state. Dynamo caches graphs per code object, and
            # every trainer shares _forward_loss's: reset, or after a few models it silently runs eagerly.
            torch._dynamo.reset()
            self.forward_loss = torch.compile(_forward_loss, **COMPILE_MODES[compile_mode])

    @property
    def fused_optimizer(self) -> bool:
        return bool(self.optimizer.defaults.get("fused"))

    def close(self) -> None:
        """Free the model, the optimiser state and any compiled graphs (which hold the model) now."""
        del self.model, self.optimizer, self.train_step, self.forward_loss
        if self.compiled:
            torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _synthetic_batch(self.cfg, size, self.device)

    def step(self, video: torch.Tensor, text: torch.Tensor, on_phase: Callable[[str], None] | None = None) -> None:
        """One training step (``TrainStep``, as in `avtool train`); ``on_phase`` (for memory probes) is called
        after "forward", "backward" and "optimizer"."""
        # The budget is read when the graph is partitioned, at the first (compiling) call: setting it
        # around every call keeps it out of global state without missing that moment.
        budget = {} if self.memory_budget is None else {"activation_memory_budget": self.memory_budget}

        def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            with torch._functorch.config.patch(**budget):
                return self.forward_loss(self.model, *batch)

        self.train_step([(video, text)], loss, on_phase)

    def fits(self, size: int) -> bool:
        """Whether two training steps at this batch size run without running out of memory."""
        try:
            video, text = self.batch(size)
            for _ in range(2):  # the second step also holds the optimiser state
                self.step(video, text)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return True
        except torch.OutOfMemoryError:
            # The failed step may have stopped between the scaler's unscale and update: start it afresh.
            self.train_step.scaler = grad_scaler(self.device, self.amp_dtype)
            return False
        finally:
            video = text = None
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def set_checkpoint_blocks(self, blocks: int) -> None:
        """Checkpoint the first ``blocks`` blocks of the video tower (the text tower stays as it is)."""
        self.model.video.set_grad_checkpointing(True, blocks, self.cfg.video.grad_checkpointing_keep_attention)

    def time_steps(self, size: int, warmup: int, steps: int) -> tuple[float, float | None]:
        """Seconds per step, and peak GB on CUDA."""
        video, text = self.batch(size)
        for _ in range(warmup):
            self.step(video, text)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(video, text)
        if cuda:
            torch.cuda.synchronize(self.device)
        seconds = (time.perf_counter() - start) / steps
        peak = torch.cuda.max_memory_allocated(self.device) / 1e9 if cuda else None
        return seconds, peak


def largest_batch(fits, upper: int, granularity: int = 8) -> int:
    """The largest batch size ≤ ``upper`` for which ``fits(size)`` is true (0 if none), to ``granularity``.

    Doubles from 1 until a size fails, then bisects; assumes that what fails at n fails above n too.
    """
    ok, size = 0, 1
    while size <= upper and fits(size):
        ok, size = size, size * 2
    bad = min(size, upper + 1)
    while bad - ok > granularity:
        mid = (ok + bad) // 2
        if fits(mid):
            ok = mid
        else:
            bad = mid
    return ok


def fewest_checkpointed_blocks(fits, layers: int) -> int | None:
    """The smallest k in 0..layers for which ``fits(k)`` is true (None if not even ``layers`` fits).

    Bisects; assumes that checkpointing more blocks never needs more memory.
    """
    if not fits(layers):
        return None
    ok, bad = layers, -1
    while ok - bad > 1:
        mid = (ok + bad) // 2
        if fits(mid):
            ok = mid
        else:
            bad = mid
    return ok


def run_model_bench(cfg: ModelBenchConfig) -> list[ModelBenchRow]:
    """Measure every architecture × variant of ``cfg``; one row each."""
    problems = cfg.problems()
    if problems:
        raise ValueError("invalid ModelBenchConfig:\n  " + "\n  ".join(problems))
    device = cfg.resolved_device()
    amp_dtype = cfg.autocast_dtype(device)
    limit = device.type == "cuda" and cfg.memory_limit_gb is not None
    if limit:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.memory_limit_gb * 1e9 / total), device)
    try:
        return [_measure(cfg, arch, variant, device, amp_dtype) for arch in cfg.archs for variant in cfg.variants]
    finally:
        if limit:  # the cap is process-wide: leave the process as we found it
            torch.cuda.set_per_process_memory_fraction(1.0, device)


def variant_model(cfg: ModelBenchConfig, arch: VideoArch, variant: Variant) -> DualEncoderConfig:
    """The dual encoder measured for one (architecture, variant): the video tower as in Fig. 3/4, the text
    tower with the same attention kernel and (full) checkpointing."""
    video_cfg = variant_tower(dataclasses.replace(cfg.model.video, arch=arch), variant, cfg.flash_impl)
    if video_cfg.grad_checkpointing and isinstance(cfg.ckpt_blocks, int):
        video_cfg = dataclasses.replace(video_cfg, grad_checkpointing_blocks=cfg.ckpt_blocks)
    if video_cfg.grad_checkpointing:
        video_cfg = dataclasses.replace(video_cfg, grad_checkpointing_keep_attention=cfg.ckpt_keep_attention)
    text_cfg = dataclasses.replace(
        cfg.model.text,
        attn_impl=video_cfg.attn_impl,
        grad_checkpointing=video_cfg.grad_checkpointing,
    )
    return dataclasses.replace(cfg.model, video=video_cfg, text=text_cfg)


def _significant(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits: FLOP rates span ViT-B on a GPU and tiny towers on a CPU."""
    return float(f"{x:.{digits}g}")


def _fit_checkpoint_blocks(
    cfg: ModelBenchConfig, model_cfg: DualEncoderConfig, device: torch.device, amp_dtype: torch.dtype | None
) -> DualEncoderConfig:
    """``model_cfg`` with the fewest checkpointed video blocks that let ``cfg.batch_size`` fit.

    Searched eagerly even when the measurement is compiled (a compiled model would recompile for each k,
    minutes each). That is conservative: compiled code keeps fewer activations, so it may fit with fewer.
    """
    torch.manual_seed(cfg.seed)
    trainer = Trainer(model_cfg, device, amp_dtype)

    def fits(blocks: int) -> bool:
        trainer.set_checkpoint_blocks(blocks)
        return trainer.fits(cfg.batch_size)

    blocks = fewest_checkpointed_blocks(fits, model_cfg.video.layers)
    trainer.close()  # free the search's model and optimiser state before the measured one is built
    if blocks is None:
        raise RuntimeError(f"batch {cfg.batch_size} does not fit even with every block checkpointed")
    return dataclasses.replace(model_cfg, video=dataclasses.replace(model_cfg.video, grad_checkpointing_blocks=blocks))


def _measure(
    cfg: ModelBenchConfig, arch: VideoArch, variant: Variant, device: torch.device, amp_dtype: torch.dtype | None
) -> ModelBenchRow:
    model_cfg = variant_model(cfg, arch, variant)
    if model_cfg.video.grad_checkpointing and cfg.ckpt_blocks == "auto":
        model_cfg = _fit_checkpoint_blocks(cfg, model_cfg, device, amp_dtype)
    video_cfg = model_cfg.video
    torch.manual_seed(cfg.seed)
    trainer = Trainer(
        model_cfg, device, amp_dtype, compile=cfg.compile, memory_budget=cfg.activation_memory_budget,
        compile_mode=cfg.compile_mode,
    )  # fmt: skip
    if cfg.batch_size is not None:
        size = cfg.batch_size
    elif device.type == "cuda":
        size = largest_batch(trainer.fits, cfg.max_batch_size, cfg.search_granularity)
    else:  # no out-of-memory errors to search by
        size = CPU_BATCH
    if size == 0:
        raise RuntimeError(f"{arch}/{variant}: not even one video fits in memory")
    seconds, peak = trainer.time_steps(size, cfg.warmup_steps, cfg.steps)
    model_flops, hardware_flops = train_step_flops(model_cfg, size)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak_tflops = cfg.peak_tflops
    if peak_tflops is None and amp_dtype is not None:  # the table holds 16-bit tensor-core peaks only
        peak_tflops = dense_peak_tflops(device_name)
    ckpt_blocks = video_cfg.grad_checkpointing_blocks
    ckpt_blocks = video_cfg.layers if ckpt_blocks is None else ckpt_blocks
    row = ModelBenchRow(
        arch=arch,
        variant=variant,
        attn_impl=video_cfg.attn_impl,
        grad_checkpointing=video_cfg.grad_checkpointing,
        ckpt_blocks=ckpt_blocks if video_cfg.grad_checkpointing else 0,
        ckpt_keep_attention=video_cfg.grad_checkpointing_keep_attention,
        compiled=cfg.compile,
        compile_mode=cfg.compile_mode if cfg.compile else "",
        activation_memory_budget=cfg.activation_memory_budget,
        fused_optimizer=trainer.fused_optimizer,
        fused_mlp=video_cfg.fused_mlp,
        width=video_cfg.width,
        layers=video_cfg.layers,
        num_frames=video_cfg.num_frames,
        image_size=video_cfg.image_size,
        device=device_name,
        dtype=str(amp_dtype or torch.float32).removeprefix("torch."),
        memory_limit_gb=cfg.memory_limit_gb,
        batch_size=size,
        batch_size_is_max=cfg.batch_size is None and device.type == "cuda",
        step_seconds=round(seconds, 6),
        videos_per_second=round(size / seconds, 2),
        peak_memory_gb=None if peak is None else round(peak, 3),
        mb_per_video=None if peak is None else round(peak * 1e3 / size, 1),
        gflop_per_video=_significant(model_flops / size / 1e9),
        tflops=_significant(model_flops / seconds / 1e12),
        peak_tflops=peak_tflops,
        mfu=None if peak_tflops is None else _significant(model_flops / seconds / (peak_tflops * 1e12)),
        hfu=None if peak_tflops is None else _significant(hardware_flops / seconds / (peak_tflops * 1e12)),
    )
    trainer.close()
    return row
