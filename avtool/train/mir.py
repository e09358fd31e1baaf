"""`avtool train mir`: fine-tune a pretrained dual encoder on EK-100 multi-instance retrieval with the
max-margin ranking loss (paper appendix B.2), evaluating mAP and nDCG on the test split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset

from avtool.data import EK100MIR, ClipConfig, EK100Layout
from avtool.data.ek100 import ek100_annotations_option, ek100_root_option
from avtool.models import DualEncoder
from avtool.options import option
from avtool.train.checkpoint import load_checkpoint
from avtool.train.config import OptimConfig, RunConfig, raise_problems
from avtool.train.distributed import DistEnv, all_gather_tensor
from avtool.train.engine import FitResult, fit
from avtool.train.evaluate import evaluate_mir
from avtool.train.losses import gather_with_grad, max_margin_loss
from avtool.train.model_config import pretrained_checkpoint_option
from avtool.train.model_factory import (
    ModelConfig,
    build_dual_encoder,
    dual_encoder_config,
    load_video_tower_from_checkpoint,
)
from avtool.train.text import TokenizeCollate
from avtool.video.augment import augment_batch
from avtool.video.crops import CropPolicy
from avtool.video.decode import DecoderConfig


@dataclass(frozen=True)
class MIRConfig:
    """EK-100 MIR fine-tuning; defaults are the paper's ViT-B recipe (appendix B.2): 16 frames, 64 clips per GPU,
    100 epochs, AdamW warming up from 1e-6 to 3e-5 in the first epoch, then a cosine to 1e-5, drop path 0.1,
    max-margin loss with margin 0.2."""

    ek100_root: Path = ek100_root_option(positional=True, flags=("--ek100-root", "--root"))
    ek100_annotations: Path = ek100_annotations_option(positional=True)
    pretrained_checkpoint: Path | None = pretrained_checkpoint_option()
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir=Path("runs/mir"), epochs=100, batch_size=64))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(num_frames=16, drop_path=0.1))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=3e-5, warmup_epochs=1, lr_start=1e-6, lr_end=1e-5, weight_decay=0.01)
    )
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """RandomResizedCrop area range (fused into decoding)."""
    margin: float = option(0.2, panel="Optimisation", help="Margin of the max-margin ranking loss.")
    threshold: float = 0.1
    """Sentences with relevancy above this are positives: drawn as a clip's caption, never its negatives."""
    eval_batch_size: int = 64

    @property
    def ek100(self) -> EK100Layout:
        return EK100Layout(self.ek100_root, self.ek100_annotations)

    def check(self) -> None:
        problems = self.run.problems() + self.optim.problems() + self.model.problems()
        paths = [self.ek100.root, *self.ek100.mir_files("train"), *self.ek100.mir_files("test")]
        if self.pretrained_checkpoint is not None:
            paths.append(self.pretrained_checkpoint)
        problems += [f"{p} does not exist" for p in paths if not Path(p).exists()]
        raise_problems("train mir", problems)


class MIRJob:
    name = "mir"
    best_metric = "mAP_avg"
    views_per_video = 1

    def __init__(self, cfg: MIRConfig) -> None:
        self.cfg = cfg
        self.model_cfg = dual_encoder_config(cfg.model)
        self._train_set: EK100MIR | None = None
        self._eval_set: EK100MIR | None = None

    def build_model(self) -> DualEncoder:
        model = build_dual_encoder(self.cfg.model)
        if self.cfg.pretrained_checkpoint is not None:
            load_video_tower_from_checkpoint(model, load_checkpoint(self.cfg.pretrained_checkpoint)["model"])
        return model

    def _clips(self, train: bool) -> ClipConfig:
        return ClipConfig(
            root=self.cfg.ek100.root, num_frames=self.cfg.model.num_frames, size=self.model_cfg.video.image_size,
            train=train, crop=CropPolicy(scale=self.cfg.crop_scale), decoder=self.cfg.decoder, seed=self.cfg.run.seed,
        )  # fmt: skip

    def train_dataset(self) -> Dataset:
        if self._train_set is None:
            self._train_set = EK100MIR(self.cfg.ek100.mir_config("train", self._clips(True), self.cfg.threshold))
        return self._train_set

    def collate(self) -> TokenizeCollate:
        return TokenizeCollate(self.model_cfg.text.context_length)

    def positives(self, clips: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        """(B, B) True where clip i and caption j are relevant to each other (relevancy > threshold); a
        clip whose caption is its own narration (sentence -1) matches only that caption."""
        relevancy = self.train_dataset().relevancy
        clip_ids, sentence_ids = clips.cpu().numpy(), sentences.cpu().numpy()
        known = sentence_ids >= 0
        matrix = np.zeros((len(clip_ids), len(sentence_ids)), dtype=bool)
        matrix[:, known] = relevancy[np.ix_(clip_ids, sentence_ids[known])] > self.cfg.threshold
        np.fill_diagonal(matrix, True)
        return torch.from_numpy(matrix)

    def loss(self, model: nn.Module, batch: dict[str, Any], env: DistEnv) -> tuple[torch.Tensor, dict]:
        out = model(augment_batch(batch["video"]), batch["text"])
        # Negatives come from the global batch, as for pretraining.
        video, text = gather_with_grad(out.video), gather_with_grad(out.text)
        clips, sentences = all_gather_tensor(batch["clip"], env), all_gather_tensor(batch["sentence"], env)
        positives = self.positives(clips, sentences).to(video.device)
        return max_margin_loss(video.float(), text.float(), self.cfg.margin, positives), {}

    def eval_dataset(self) -> EK100MIR:
        if self._eval_set is None:
            self._eval_set = EK100MIR(self.cfg.ek100.mir_config("test", self._clips(False), self.cfg.threshold))
        return self._eval_set

    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float]:
        metrics = evaluate_mir(model, self.eval_dataset(), env, self.cfg.eval_batch_size, min(self.cfg.run.workers, 8))
        return {k: v for k, v in metrics.to_dict().items() if isinstance(v, float)}


def run(cfg: MIRConfig, console: Console | None = None) -> FitResult:
    """Check the inputs, then fine-tune (the Python API behind `avtool train mir`)."""
    cfg.check()
    return fit(MIRJob(cfg), cfg.run, cfg.optim, cfg, console)
