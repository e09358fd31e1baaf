"""What every clip dataset shares: the chunk index, the decoder, the crop policy and per-sample seeds.

Randomness of sample ``i`` in epoch ``e`` comes from ``numpy.random.default_rng([seed, e, i])``:
the same clip, crop and text for the same (seed, epoch, index) whichever worker loads it and however
many workers there are. The epoch reaches the workers inside the index (``EpochSampler`` yields
``(epoch, index)`` pairs), so persistent workers need no message when the epoch changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from avtool.data.problems import Problems
from avtool.errors import AvtoolError
from avtool.readspeed import drop_page_cache
from avtool.video.clips import ChunkedVideo, ChunkIndex, ClipPlan, plan_clip, plan_frames
from avtool.video.crops import Crop, CropPolicy
from avtool.video.decode import DecoderConfig, make_decoder, read_clip, read_views


@dataclass(frozen=True)
class ClipConfig:
    root: Path
    """Chunked video root (``avtool chunk``'s DST, or the folder of a dataset inside it)."""
    num_frames: int = 4
    """Frames per clip (pretraining 4, fine-tuning 16)."""
    size: int = 224
    """Output frames are size×size."""
    train: bool = True
    """Training: jittered frame positions and the random crop; else segment midpoints and ``eval_crop``."""
    crop: CropPolicy = field(default_factory=CropPolicy)
    """Crop in training (RandomResizedCrop, scale 0.5-1, by default)."""
    eval_crop: CropPolicy = field(default_factory=lambda: CropPolicy(kind="center"))
    """Crop in evaluation (short side to ``size``, centre)."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """Backend, mode and access of the decoder (fused + seek on PyAV by default)."""
    seed: int = 0
    """Seed of every random choice of the dataset."""
    tolerance: float = 0.5
    """Seconds a clip may end after its video does (the end is clamped); more is an error."""
    manifest: Path | None = None
    """``manifest.csv`` describing the chunks; None looks in the root and the folders above it."""
    drop_page_cache: bool = False
    """Evict each chunk file from the page cache after its clip is read, so that every read comes from the
    storage as it does for a dataset larger than memory (the end-to-end benchmarks)."""

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.size < 1:
            raise AvtoolError(f"num_frames and size must be positive, got {self.num_frames} and {self.size}")

    @property
    def crop_policy(self) -> CropPolicy:
        return self.crop if self.train else self.eval_crop


def split_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """(epoch, index) from a sampler's key; a bare index means epoch 0."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return 0, int(key)


class ClipDataset(Dataset):
    """Base of the datasets: loads clip ``[start, end]`` of a video as uint8 (T, S, S, 3)."""

    def __init__(self, clips: ClipConfig) -> None:
        self.clips = clips
        self.index = ChunkIndex(clips.root, clips.manifest)
        self.decoder = make_decoder(clips.decoder)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.clips.seed, epoch, index])

    def load_clip(self, key: str, start: float, end: float, rng: np.random.Generator) -> torch.Tensor:
        video = self.index.get(key)
        end = min(end, video.duration)
        plan = plan_clip(video, start, end, self.clips.num_frames, rng if self.clips.train else None)
        crop = self.clips.crop_policy.draw(video.width, video.height, rng)
        return self._read(plan, crop)

    def load_frames(self, video: ChunkedVideo, frame_ids: list[int], rng: np.random.Generator) -> torch.Tensor:
        crop = self.clips.crop_policy.draw(video.width, video.height, rng)
        return self._read(plan_frames(video, frame_ids), crop)

    def load_frame_views(
        self, video: ChunkedVideo, frame_ids: list[int], crops: list[Crop] | int, rng: np.random.Generator
    ) -> torch.Tensor:
        """uint8 (V, T, S, S, 3): the frames decoded once, one view per crop (``crops`` an int: that many crops
        drawn from the policy, one after another from ``rng``)."""
        if isinstance(crops, int):
            crops = [self.clips.crop_policy.draw(video.width, video.height, rng) for _ in range(crops)]
        plan = plan_frames(video, frame_ids)
        views = read_views(self.decoder, plan, crops, self.clips.size)
        self._evict(plan)
        return views

    def _read(self, plan: ClipPlan, crop: Crop) -> torch.Tensor:
        clip = read_clip(self.decoder, plan, crop, self.clips.size)
        self._evict(plan)
        return clip

    def _evict(self, plan: ClipPlan) -> None:
        if self.clips.drop_page_cache:
            for read in plan.reads:
                if isinstance(read.source, Path):
                    drop_page_cache(read.source)

    def check_clips(
        self, problems: Problems, keys: list[str], starts: np.ndarray, ends: np.ndarray, rows: Callable[[int], str]
    ) -> None:
        """Report missing videos and clips that point outside their video; ``rows(i)`` names clip i."""
        videos = self.index.get_many(keys)
        for key, video in videos.items():
            if isinstance(video, AvtoolError):
                problems.add(f"video {key}: {_strip_root(str(video), self.clips.root)}")
        durations = np.array(
            [v.duration if isinstance(v := videos[k], ChunkedVideo) else np.nan for k in keys], dtype=np.float64
        )
        known = ~np.isnan(durations)
        with np.errstate(invalid="ignore"):
            non_numeric = known & ~(np.isfinite(starts) & np.isfinite(ends))
            interval = known & ~non_numeric & ((starts < 0) | (ends < starts))
            outside = (
                known & ~non_numeric & ~interval & ((starts >= durations) | (ends > durations + self.clips.tolerance))
            )
        for i in np.flatnonzero(non_numeric | interval | outside):
            if non_numeric[i]:
                problems.add(f"{rows(i)}: non-numeric time ({starts[i]}, {ends[i]})")
            elif interval[i]:
                problems.add(f"{rows(i)}: bad interval [{starts[i]:g}, {ends[i]:g}] s")
            else:
                problems.add(
                    f"{rows(i)}: clip [{starts[i]:g}, {ends[i]:g}] s is outside video {keys[i]} ({durations[i]:.2f} s)"
                )


def resolve_video(index: ChunkIndex, candidates: list[str]) -> str:
    """The first candidate key that exists under the root (else the first, to be reported missing)."""
    for key in candidates:
        if key in index:
            return key
    return candidates[0]


def _strip_root(message: str, root: Path) -> str:
    return message.replace(f"{root}/", "")
