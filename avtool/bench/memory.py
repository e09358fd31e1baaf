"""Activation memory of a video tower per video, split by layer type (the paper's Fig. 3).

Training memory beyond the weights and optimiser state is what autograd keeps for backward. We see
exactly that with ``torch.autograd.graph.saved_tensors_hooks``: every tensor saved during the forward
pass is attributed to the innermost LayerNorm, attention (MHA) or MLP module running when it was saved,
else to "other" (patch embedding, drop path masks, the block inputs that checkpointing keeps). Tensors
are counted once per storage, since views and tensors saved by two ops share memory; parameters and the
input clip are not activations and are left out.

Per-video figures are the difference between two batch sizes divided by the difference in videos, which
cancels everything that does not grow with the batch (autocast's low-precision weight copies, workspaces).
On CUDA the saved-tensor total is cross-checked against ``torch.cuda.memory_allocated`` after the
forward pass, and the peak of a whole training step is reported from ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from avtool.models import Attention, VideoTowerConfig, VideoViT, build_video_tower
from avtool.models.attention import AttnImpl, check_attn_impl
from avtool.models.blocks import Mlp
from avtool.options import option
from avtool.train.config import (
    Device,
    Precision,
    autocast_dtype,
    device_option,
    output_option,
    precision_option,
    precision_problem,
    seed_option,
)

Category = Literal["layernorm", "mha", "mlp", "other"]
CATEGORIES: tuple[Category, ...] = ("layernorm", "mha", "mlp", "other")
Variant = Literal["baseline", "flash-attn", "grad-ckpt"]
VARIANTS: tuple[Variant, ...] = ("baseline", "flash-attn", "grad-ckpt")
MB = 1e6
"""Every avtool output counts MB as 10^6 bytes (and GB as 10^9), as disks and the paper's MB/s do."""


@dataclass(frozen=True)
class SavedBytes:
    """Bytes autograd holds for backward after one forward pass, by layer type."""

    layernorm: int = 0
    mha: int = 0
    mlp: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.layernorm + self.mha + self.mlp + self.other


def _category_of(name: str, module: nn.Module) -> Category | None:
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    # TimeSformer's temporal_fc projects the temporal attention's output: part of its MHA.
    if isinstance(module, Attention) or name.endswith("temporal_fc"):
        return "mha"
    if isinstance(module, Mlp):
        return "mlp"
    return None


@contextlib.contextmanager
def attribute_saved_tensors(model: nn.Module, exclude: tuple[torch.Tensor, ...] = ()) -> Iterator[dict]:
    """Within the block, record what autograd saves and who saved it; yields {storage: (category, bytes)}.

    ``exclude`` lists tensors (the inputs) that exist anyway and are not counted. The model's parameters
    are never counted. Block inputs that non-reentrant checkpointing keeps for recomputation are counted
    as "other": checkpointing hides the tensors saved inside a block from outer hooks, but not those.
    """
    stack: list[Category] = []
    saved: dict[int, tuple[Category, int]] = {}
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    skip |= {t.untyped_storage().data_ptr() for t in exclude}

    def record(t: torch.Tensor, category: Category) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key and key not in skip and key not in saved:
            saved[key] = (category, storage.nbytes())

    def pack(t: torch.Tensor) -> torch.Tensor:
        record(t, stack[-1] if stack else "other")
        return t

    def enter(category: Category):
        def hook(module: nn.Module, args: tuple) -> None:
            stack.append(category)

        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    def keep_block_input(module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():
            record(args[0], "other")

    handles = []
    for name, module in model.named_modules():
        category = _category_of(name, module)
        if category is not None:
            handles.append(module.register_forward_pre_hook(enter(category)))
            handles.append(module.register_forward_hook(leave))
    for transformer in (m for m in model.modules() if hasattr(m, "checkpoint_blocks")):
        for block in transformer.blocks[: transformer.checkpoint_blocks]:
            handles.append(block.register_forward_pre_hook(keep_block_input))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield saved
    finally:
        for handle in handles:
            handle.remove()


def summarize(saved: dict[int, tuple[Category, int]]) -> SavedBytes:
    totals = dict.fromkeys(CATEGORIES, 0)
    for category, nbytes in saved.values():
        totals[category] += nbytes
    return SavedBytes(**totals)


@dataclass(frozen=True)
class StepMemory:
    """One forward (+ backward) of a batch: saved bytes by category, and CUDA's own counters."""

    batch_size: int
    saved: SavedBytes
    forward_allocated: int | None = None
    """CUDA only: memory_allocated after the forward pass minus before it (graph + output)."""
    step_peak: int | None = None
    """CUDA only: max_memory_allocated over forward and backward minus memory_allocated before."""


def measure_step(
    model: nn.Module, video: torch.Tensor, amp_dtype: torch.dtype | None = None, backward: bool = True
) -> StepMemory:
    """Run ``model`` on ``video`` once under the saved-tensor hooks (and CUDA's counters on a GPU)."""
    cuda = video.is_cuda
    amp = (
        torch.autocast(device_type=video.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(video.device)
        torch.cuda.reset_peak_memory_stats(video.device)
        before = torch.cuda.memory_allocated(video.device)
    with attribute_saved_tensors(model, exclude=(video,)) as saved, amp:
        out = model(video)
    forward_allocated = step_peak = None
    if cuda:
        torch.cuda.synchronize(video.device)
        forward_allocated = torch.cuda.memory_allocated(video.device) - before
    if backward:
        out.float().square().mean().backward()
    if cuda:
        torch.cuda.synchronize(video.device)
        step_peak = torch.cuda.max_memory_allocated(video.device) - before
    del out
    model.zero_grad(set_to_none=True)
    return StepMemory(video.shape[0], summarize(saved), forward_allocated, step_peak)


def variants_option() -> Any:
    """The variants of Fig. 3 and 4 (`bench memory` and `bench model`)."""
    return option(
        VARIANTS, flags="--variant", panel="Model",
        help="Variants to measure, repeatable: baseline (explicit softmax attention), flash-attn (+ memory-"
        "efficient attention), grad-ckpt (+ gradient checkpointing of every block).",
    )  # fmt: skip


def variant_attn_option() -> Any:
    """The attention kernel of the flash-attn and grad-ckpt variants (the baseline always uses math)."""
    return option(
        "sdpa", flags="--attn", panel="Model",
        help="Attention kernel of the flash-attn and grad-ckpt variants: sdpa (torch picks), flash, efficient, "
        "cudnn (that SDPA kernel), flash-attn (the flash-attn package), fa4 (FlashAttention-4's kernels for "
        "Hopper and Blackwell GPUs, the flash-attn-4 package).",
    )  # fmt: skip


@dataclass(frozen=True)
class MemoryBenchConfig:
    """What to measure: one video tower, a few variants, two batch sizes."""

    tower: VideoTowerConfig = field(default_factory=lambda: VideoTowerConfig(fast_conv1=True))
    """The tower (default ViT-B/16, 224², 4 frames, 1×16×16 cubes as in Fig. 3, fast conv1 as in training); its
    attention and checkpointing fields are set per variant."""
    variants: tuple[Variant, ...] = variants_option()
    flash_impl: AttnImpl = variant_attn_option()
    batch_sizes: tuple[int, int] = option(
        (2, 4), metavar="INT", unit="videos",
        help="Two batch sizes, both at least 2 (with one video some ops save views instead of copies); per-video "
        "memory is their difference per video.",
    )  # fmt: skip
    device: Device = device_option()
    precision: Precision = precision_option()
    backward: bool = option(True, help="Also run backward, for the step's peak memory on CUDA.")
    seed: int = seed_option("weights and the random clips")
    output_dir: Path = output_option("results", "NAME.csv and NAME.json")
    name: str = option("memory", panel="Output", help="Base name of the result files.")

    def problems(self) -> list[str]:
        out = [f"unknown variant {v!r}" for v in self.variants if v not in VARIANTS]
        small, large = self.batch_sizes
        if not 2 <= small < large:
            out.append(f"batch_sizes={self.batch_sizes} must be two increasing sizes of at least 2")
        if self.device not in ("auto", "cuda", "cpu"):
            out.append(f"device={self.device!r} is not auto, cuda or cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            out.append("device='cuda' but torch sees no CUDA device")
        attn_problem = check_attn_impl(self.flash_impl, on_cuda=self.device != "cpu" and torch.cuda.is_available())
        if attn_problem:
            out.append(f"flash_impl: {attn_problem}")
        if problem := precision_problem(self.precision):
            out.append(problem)
        return out


@dataclass(frozen=True)
class MemoryRow:
    """Activation memory per video of one variant, MB (10^6 bytes; one CSV/JSON row)."""

    variant: str
    arch: str
    attn_impl: str
    grad_checkpointing: bool
    num_frames: int
    image_size: int
    patch_size: int
    tubelet_size: int
    width: int
    layers: int
    device: str
    dtype: str
    batch_sizes: str
    layernorm_mb: float
    mha_mb: float
    mlp_mb: float
    other_mb: float
    saved_total_mb: float
    """Sum of the four categories: what autograd keeps per video."""
    allocated_mb: float | None
    """CUDA: growth of memory_allocated over the forward pass per video (cross-check of saved_total)."""
    step_peak_mb: float | None
    """CUDA: growth of the forward + backward peak per video."""

    def to_dict(self) -> dict:
        return asdict(self)


def variant_tower(tower: VideoTowerConfig, variant: Variant, flash_impl: AttnImpl = "sdpa") -> VideoTowerConfig:
    """``tower`` as the paper's Fig. 3/4 variant: `baseline` (explicit attention), `flash-attn`
    (memory-efficient attention), `grad-ckpt` (that and every block checkpointed)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    attn_impl = "math" if variant == "baseline" else flash_impl
    grad_ckpt = variant == "grad-ckpt"
    return dataclasses.replace(
        tower, attn_impl=attn_impl, grad_checkpointing=grad_ckpt, grad_checkpointing_blocks=None,
        grad_checkpointing_keep_attention=0,
    )  # fmt: skip


def _per_video(small: int | None, large: int | None, videos: int) -> float | None:
    if small is None or large is None:
        return None
    return round((large - small) / videos / MB, 3)


def run_memory_bench(cfg: MemoryBenchConfig) -> list[MemoryRow]:
    """Measure every variant of ``cfg``; one row each."""
    problems = cfg.problems()
    if problems:
        raise ValueError("invalid MemoryBenchConfig:\n  " + "\n  ".join(problems))
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device.type)
    rows = []
    for variant in cfg.variants:
        tower_cfg = variant_tower(cfg.tower, variant, cfg.flash_impl)
        torch.manual_seed(cfg.seed)
        model: VideoViT = build_video_tower(tower_cfg).to(device).train()
        steps = []
        for batch in cfg.batch_sizes:
            video = torch.randn(batch, 3, tower_cfg.num_frames, tower_cfg.image_size, tower_cfg.image_size)
            steps.append(measure_step(model, video.to(device), amp_dtype, cfg.backward))
        small, large = steps
        videos = large.batch_size - small.batch_size
        per = {c: _per_video(getattr(small.saved, c), getattr(large.saved, c), videos) for c in CATEGORIES}
        rows.append(
            MemoryRow(
                variant=variant,
                arch=tower_cfg.arch,
                attn_impl=tower_cfg.attn_impl,
                grad_checkpointing=tower_cfg.grad_checkpointing,
                num_frames=tower_cfg.num_frames,
                image_size=tower_cfg.image_size,
                patch_size=tower_cfg.patch_size,
                tubelet_size=tower_cfg.tubelet_size,
                width=tower_cfg.width,
                layers=tower_cfg.layers,
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                dtype=str(amp_dtype or torch.float32).removeprefix("torch."),
                batch_sizes=f"{small.batch_size},{large.batch_size}",
                layernorm_mb=per["layernorm"],
                mha_mb=per["mha"],
                mlp_mb=per["mlp"],
                other_mb=per["other"],
                saved_total_mb=_per_video(small.saved.total, large.saved.total, videos),
                allocated_mb=_per_video(small.forward_allocated, large.forward_allocated, videos),
                step_peak_mb=_per_video(small.step_peak, large.step_peak, videos),
            )
        )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
