"""`avtool train lavila`: contrastive video–text pretraining of the dual encoder on Ego4D narrations
(paper §5, appendix B.1), with zero-shot EK-100 MIR evaluation after each epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from avtool.data import EK100MIR, ClipConfig, Ego4DConfig, Ego4DNarrations, EK100Layout
from avtool.data.ek100 import ek100_annotations_option, ek100_root_option
from avtool.models import DualEncoder
from avtool.options import option
from avtool.train.config import OptimConfig, RunConfig, raise_problems
from avtool.train.distributed import DistEnv
from avtool.train.engine import FitResult, fit
from avtool.train.evaluate import evaluate_mir
from avtool.train.losses import clip_loss
from avtool.train.model_factory import ModelConfig, build_dual_encoder, dual_encoder_config
from avtool.train.text import TokenizeCollate
from avtool.video.augment import augment_batch
from avtool.video.crops import CropPolicy
from avtool.video.decode import DecoderConfig


@dataclass(frozen=True)
class LavilaConfig:
    """Pretraining on Ego4D narrations; defaults are the paper's ViT-B recipe (appendix B.1): 4 frames, 256 clips
    per GPU, AdamW at a fixed 3e-5, weight decay 0.01, 5 epochs, frozen temperature, checkpointing, Fused
    DecodeCrop."""

    root: Path = option(
        flags="--root",
        positional=True,
        panel="Data",
        metavar="DIR",
        help="Chunked Ego4D videos (ROOT/<video_uid>.mp4/<start>.mp4, 15-s chunks).",
    )
    metadata: Path = option(
        flags=("--metadata", "--train-metadata"), positional=True, panel="Data", metavar="FILE",
        help="LaViLa's narration pickle, e.g. ego4d_train.pkl: a list of (video_uid, start_sec, end_sec, narration).",
    )  # fmt: skip
    metadata_aux: tuple[Path, ...] = option(
        (), flags=("--metadata-aux", "--train-metadata-aux"), panel="Data", metavar="FILE",
        help="LLM-augmented narration pickles (narrator, rephraser) whose rows are added as more samples; "
        "repeatable.",
    )  # fmt: skip
    ek100_root: Path | None = ek100_root_option(None, positional=False, flags=("--ek100-root", "--root-val"))
    """With ek100_annotations: zero-shot EK-100 MIR after every epoch, and the best checkpoint kept."""
    ek100_annotations: Path | None = ek100_annotations_option(None, positional=False)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir=Path("runs/lavila")))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(freeze_temperature=True))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5, fixed_lr=True, weight_decay=0.01))
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """RandomResizedCrop area range (fused into decoding)."""
    local_loss: bool = option(False, panel="Optimisation",
                              help="Score each GPU's clips against the global batch only (B×(world·B) logits "
                              "instead of (world·B)²).")  # fmt: skip
    eval_batch_size: int = 64
    """Clips per batch in evaluation."""

    @property
    def ek100(self) -> EK100Layout | None:
        """EK-100 videos and annotations for zero-shot MIR evaluation (None: no evaluation)."""
        if self.ek100_root is None and self.ek100_annotations is None:
            return None
        return EK100Layout(self.ek100_root, self.ek100_annotations)

    def check(self) -> None:
        problems = self.run.problems() + self.optim.problems() + self.model.problems()
        for path in (self.root, self.metadata, *self.metadata_aux):
            if not Path(path).exists():
                problems.append(f"{path} does not exist")
        if (self.ek100_root is None) != (self.ek100_annotations is None):
            problems.append("give both --ek100-root (chunked videos) and --ek100-annotations (the annotations "
                            "folder), or neither")  # fmt: skip
        elif self.ek100 is not None:
            problems += [f"{p} does not exist" for p in (self.ek100.root, *self.ek100.mir_files("test"))
                         if not Path(p).exists()]  # fmt: skip
        raise_problems("train lavila", problems)


class LavilaJob:
    name = "lavila"
    best_metric = "mAP_avg"
    views_per_video = 1

    def __init__(self, cfg: LavilaConfig) -> None:
        self.cfg = cfg
        self.model_cfg = dual_encoder_config(cfg.model)
        self._train_set: Ego4DNarrations | None = None
        self._eval_set: EK100MIR | None = None

    def build_model(self) -> DualEncoder:
        return build_dual_encoder(self.cfg.model)

    def _clips(self, root: Path, train: bool) -> ClipConfig:
        size = self.model_cfg.video.image_size
        return ClipConfig(
            root=Path(root), num_frames=self.cfg.model.num_frames, size=size, train=train,
            crop=CropPolicy(scale=self.cfg.crop_scale), decoder=self.cfg.decoder, seed=self.cfg.run.seed,
        )  # fmt: skip

    def train_dataset(self) -> Ego4DNarrations:
        if self._train_set is None:
            cfg = self.cfg
            clips = self._clips(cfg.root, True)
            self._train_set = Ego4DNarrations(Ego4DConfig(cfg.metadata, clips, tuple(cfg.metadata_aux)))
        return self._train_set

    def collate(self) -> TokenizeCollate:
        return TokenizeCollate(self.model_cfg.text.context_length)

    def loss(self, model: nn.Module, batch: dict[str, Any], env: DistEnv) -> tuple[torch.Tensor, dict]:
        out = model(augment_batch(batch["video"]), batch["text"])
        loss = clip_loss(out.video, out.text, out.logit_scale, local_loss=self.cfg.local_loss)
        return loss, {"logit_scale": out.logit_scale}

    def eval_dataset(self) -> EK100MIR | None:
        if self.cfg.ek100 is None:
            return None
        if self._eval_set is None:
            clips = self._clips(self.cfg.ek100.root, train=False)
            self._eval_set = EK100MIR(self.cfg.ek100.mir_config("test", clips))
        return self._eval_set

    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float] | None:
        dataset = self.eval_dataset()
        if dataset is None:
            return None
        workers = min(self.cfg.run.workers, 8)
        metrics = evaluate_mir(model, dataset, env, self.cfg.eval_batch_size, workers)
        return {k: v for k, v in metrics.to_dict().items() if isinstance(v, float)}


def run(cfg: LavilaConfig, console: Console | None = None) -> FitResult:
    """Check the inputs, then train (the Python API behind `avtool train lavila`)."""
    cfg.check()
    return fit(LavilaJob(cfg), cfg.run, cfg.optim, cfg, console)
