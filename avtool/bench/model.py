"""Training throughput and largest batch of the video–text dual encoder (the paper's Fig. 4).

Each (architecture, variant) pair trains the full dual encoder (video tower, text tower, symmetric
InfoNCE, AdamW, autocast) on synthetic clips and captions kept on the device, so only the model is
timed. On CUDA the largest batch that fits is found by doubling and then bisecting on out-of-memory
errors; ``memory_limit_gb`` caps the usable memory to mimic a smaller card (the paper used a 24 GB
A5000). Timing follows the usual recipe: warm-up steps, synchronise, time N steps, synchronise.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from avtool.bench.memory import VARIANTS, Variant, variant_tower
from avtool.models import DualEncoder, DualEncoderConfig
from avtool.models.attention import AttnImpl
from avtool.models.video import VideoArch


@dataclass(frozen=True)
class ModelBenchConfig:
    """What to run: architectures × variants of one dual encoder."""

    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    """Dual encoder (default: ViT-B/16 video tower at 224², 4 frames; CLIP text tower; 256-d)."""
    archs: tuple[VideoArch, ...] = ("timesformer", "vit")
    """Video architectures to compare (TSF-B vs ViT-B in Fig. 4)."""
    variants: tuple[Variant, ...] = VARIANTS
    """`baseline`, `flash-attn`, `grad-ckpt` (gradient checkpointing applies to both towers)."""
    flash_impl: AttnImpl = "sdpa"
    """Attention kernel of the `flash-attn` and `grad-ckpt` variants."""
    batch_size: int | None = None
    """Fixed batch size; None searches the largest one that fits (CUDA only)."""
    max_batch_size: int = 2048
    """Upper bound of the search."""
    search_granularity: int = 8
    """Stop bisecting once the gap between fitting and failing batch sizes is this small."""
    memory_limit_gb: float | None = None
    """Use at most this much GPU memory (e.g. 24 to mimic the paper's A5000); None: the whole card."""
    warmup_steps: int = 3
    """Untimed steps before timing (kernel selection, allocator warm-up)."""
    steps: int = 10
    """Timed steps."""
    device: str = "auto"
    """`auto` (CUDA when available), `cuda`, `cpu`."""
    amp_dtype: Literal["float16", "bfloat16", "none"] = "float16"
    """Autocast precision on CUDA (the paper used float16); CPU runs in float32."""
    seed: int = 0

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
        elif self.batch_size is None and self.resolved_device().type != "cuda":
            out.append("batch_size is required off CUDA: the largest batch is found from CUDA out-of-memory errors")
        if self.batch_size is not None and self.batch_size < 1:
            out.append(f"batch_size={self.batch_size} must be positive")
        if self.steps < 1 or self.warmup_steps < 0:
            out.append("steps must be at least 1 and warmup_steps at least 0")
        if self.search_granularity < 1:
            out.append("search_granularity must be at least 1")
        return out


@dataclass(frozen=True)
class ModelBenchRow:
    """One (architecture, variant) measurement (one CSV/JSON row)."""

    arch: str
    variant: str
    attn_impl: str
    grad_checkpointing: bool
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
    """CUDA: peak allocated memory during the timed steps."""

    def to_dict(self) -> dict:
        return asdict(self)


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the local batch (what one GPU computes; the gather adds no memory here)."""
    logits = logit_scale * video @ text.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


class _Trainer:
    """The model, its optimiser and synthetic batches on one device."""

    def __init__(self, cfg: DualEncoderConfig, device: torch.device, amp_dtype: torch.dtype | None) -> None:
        self.cfg = cfg
        self.device = device
        self.amp_dtype = amp_dtype
        self.model = DualEncoder(cfg).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=device.type == "cuda")
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        v, t = self.cfg.video, self.cfg.text
        video = torch.randn(size, 3, v.num_frames, v.image_size, v.image_size, device=self.device)
        text = torch.randint(1, t.vocab_size - 1, (size, t.context_length), device=self.device)
        text[:, -1] = t.vocab_size - 1  # EOT: the largest id
        return video, text

    def step(self, video: torch.Tensor, text: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model(video, text)
            loss = contrastive_loss(out.video, out.text, out.logit_scale)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def fits(self, size: int) -> bool:
        """Whether two training steps at this batch size run without running out of memory."""
        try:
            video, text = self.batch(size)
            for _ in range(2):  # the second step also holds the optimiser state
                self.step(video, text)
            torch.cuda.synchronize(self.device)
            return True
        except torch.OutOfMemoryError:
            # The failed step may have stopped between the scaler's unscale and update: start it afresh.
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.scaler.is_enabled())
            return False
        finally:
            video = text = None
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

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


def run_model_bench(cfg: ModelBenchConfig) -> list[ModelBenchRow]:
    """Measure every architecture × variant of ``cfg``; one row each."""
    problems = cfg.problems()
    if problems:
        raise ValueError("invalid ModelBenchConfig:\n  " + "\n  ".join(problems))
    device = cfg.resolved_device()
    amp_dtype = None if device.type == "cpu" or cfg.amp_dtype == "none" else getattr(torch, cfg.amp_dtype)
    limit = device.type == "cuda" and cfg.memory_limit_gb is not None
    if limit:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.memory_limit_gb * 1e9 / total), device)
    try:
        return [_measure(cfg, arch, variant, device, amp_dtype) for arch in cfg.archs for variant in cfg.variants]
    finally:
        if limit:  # the cap is process-wide: leave the process as we found it
            torch.cuda.set_per_process_memory_fraction(1.0, device)


def _measure(
    cfg: ModelBenchConfig, arch: VideoArch, variant: Variant, device: torch.device, amp_dtype: torch.dtype | None
) -> ModelBenchRow:
    video_cfg = variant_tower(dataclasses.replace(cfg.model.video, arch=arch), variant, cfg.flash_impl)
    text_cfg = dataclasses.replace(
        cfg.model.text,
        attn_impl=video_cfg.attn_impl,
        grad_checkpointing=video_cfg.grad_checkpointing,
    )
    model_cfg = dataclasses.replace(cfg.model, video=video_cfg, text=text_cfg)
    torch.manual_seed(cfg.seed)
    trainer = _Trainer(model_cfg, device, amp_dtype)
    size = cfg.batch_size or largest_batch(trainer.fits, cfg.max_batch_size, cfg.search_granularity)
    if size == 0:
        raise RuntimeError(f"{arch}/{variant}: not even one video fits in memory")
    seconds, peak = trainer.time_steps(size, cfg.warmup_steps, cfg.steps)
    row = ModelBenchRow(
        arch=arch,
        variant=variant,
        attn_impl=video_cfg.attn_impl,
        grad_checkpointing=video_cfg.grad_checkpointing,
        num_frames=video_cfg.num_frames,
        image_size=video_cfg.image_size,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=str(amp_dtype or torch.float32).removeprefix("torch."),
        memory_limit_gb=cfg.memory_limit_gb,
        batch_size=size,
        batch_size_is_max=cfg.batch_size is None,
        step_seconds=round(seconds, 4),
        videos_per_second=round(size / seconds, 2),
        peak_memory_gb=None if peak is None else round(peak, 3),
    )
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row
