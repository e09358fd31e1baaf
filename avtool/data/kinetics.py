"""Kinetics-style list files: one line per video, ``path num_frames label`` (AVION's lists; VideoMAE V2's
pretraining lists ``path 0 -1``: the frame count unknown, no label) or ``path label`` (VideoMAE's), where
``path`` (relative to the root) is a chunk folder or a plain video file. A count of 0 means the video's own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avtool.data.base import ClipConfig, ClipDataset, split_key
from avtool.data.problems import Problems
from avtool.errors import AvtoolError
from avtool.options import option
from avtool.video.clips import (
    jittered_stride_frame_ids,
    key_problem,
    segment_frame_ids,
    stride_frame_ids,
    test_clip_frame_ids,
)
from avtool.video.crops import spatial_crops


def kinetics_root_option() -> Any:
    return option(
        flags="--root", positional=True, panel="Data", metavar="DIR",
        help="Kinetics videos: chunk folders made by avtool chunk (a chunk length above the clip length re-encodes "
        "each clip whole) or plain video files, the list's paths relative to it.",
    )  # fmt: skip


def kinetics_list_option(split: str, flags: tuple[str, ...], positional: bool = True) -> Any:
    return option(
        MISSING if positional else None, flags=flags, positional=positional, panel="Data", metavar="FILE",
        help=f"{split} list, one 'path num_frames label' line per video (AVION's format; VideoMAE's 'path label' "
        "also reads)" + ("" if positional else "; none: no validation during training") + ".",
    )  # fmt: skip


@dataclass(frozen=True)
class KineticsConfig:
    list_file: Path
    """Lines ``path num_frames label`` (the path may contain spaces; the last two fields are integers)."""
    clips: ClipConfig
    stride: int | None = None
    """None: ``num_frames`` segment midpoints over the whole video; k: consecutive frames k apart
    from a random (training) or centred (evaluation) start, as VideoMAE samples (k=4)."""
    jitter: bool = False
    """With ``stride``, in training: AVION's rule instead (each frame jittered within its stride, the start
    leaving one stride of room; ``jittered_stride_frame_ids``)."""
    views: int = 1
    """Training: crops drawn independently from one decode of the clip (VideoMAE V2's repeated sampling);
    item["video"] is then (views, T, S, S, 3)."""
    temporal_clips: int = 1
    """Evaluation: clips evenly spaced over the video (VideoMAE tests 5)."""
    spatial_crops: int = 1
    """Evaluation: short-side squares spread along the long side (1: the centre; 3: left, centre, right);
    with ``temporal_clips``, item["video"] is (temporal_clips · spatial_crops, T, S, S, 3), clip-major."""
    clip_augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
    """Training: applied to each decoded view with the sample's generator (``ClipRandAugment``)."""


class KineticsList(ClipDataset):
    """Item: ``{"video": uint8 (T, S, S, 3), "label": int, "index": int}``."""

    def __init__(self, config: KineticsConfig) -> None:
        super().__init__(config.clips)
        self.config = config
        if config.stride is not None and config.stride < 1:
            raise AvtoolError(f"stride must be at least 1, got {config.stride}")
        if min(config.views, config.temporal_clips, config.spatial_crops) < 1:
            raise AvtoolError(
                f"views, temporal clips and spatial crops must be at least 1, got {config.views}, "
                f"{config.temporal_clips}, {config.spatial_crops}"
            )
        path = Path(config.list_file)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise AvtoolError(f"{path}: no such list file") from None
        problems = Problems(str(path))
        keys, frames, labels = [], [], []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parts = _fields(line)
            if parts is None:
                problems.add(f"line {number}: expected 'path num_frames label' or 'path label', got {line!r:.80}")
                continue
            key, count, label = parts
            if count < 0 or label < -1:
                problems.add(f"line {number}: num_frames must be 0 or more and label -1 or more, got {count}, {label}")
                continue
            if (problem := key_problem(key)) is not None:
                problems.add(f"line {number}: video {key}: {problem}")
                continue
            if key not in self.index:
                problems.add(f"line {number}: video {key} not found under {config.clips.root}")
                continue
            keys.append(key)
            frames.append(count)
            labels.append(label)
        problems.raise_if_any()
        self._keys = np.array(keys)
        self._frames = np.array(frames, dtype=np.int64)
        self._labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def labels(self) -> np.ndarray:
        """(videos,) int64: each line's label (-1: unlabelled)."""
        return self._labels

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = split_key(key)
        rng = self.rng(epoch, index)
        video = self.index.get(str(self._keys[index]))
        # The list's count may be stale (re-encoded videos) or 0 (unknown): never more than the video has.
        total = min(int(self._frames[index]) or video.num_frames, video.num_frames)
        if self.clips.train:
            ids = self._train_frame_ids(total, rng)
            if self.config.views > 1:
                clip = self.load_frame_views(video, ids, self.config.views, rng)
            else:
                clip = self.load_frames(video, ids, rng)
            if (augment := self.config.clip_augment) is not None:
                views = clip if self.config.views > 1 else clip[None]
                views = torch.from_numpy(np.stack([augment(view.numpy(), rng) for view in views]))
                clip = views if self.config.views > 1 else views[0]
        elif self.config.temporal_clips > 1 or self.config.spatial_crops > 1:
            crops = spatial_crops(video.width, video.height, self.config.spatial_crops)
            clip = torch.cat([
                self.load_frame_views(video, self._test_frame_ids(total, k), crops, rng)
                for k in range(self.config.temporal_clips)
            ])  # fmt: skip
        else:
            clip = self.load_frames(video, self._test_frame_ids(total, 0), rng)
        return {"video": clip, "label": int(self._labels[index]), "index": index}

    def _train_frame_ids(self, total: int, rng: np.random.Generator) -> list[int]:
        stride = self.config.stride
        if stride is None:
            return segment_frame_ids(0, total, self.clips.num_frames, rng)
        if self.config.jitter:
            return jittered_stride_frame_ids(total, self.clips.num_frames, stride, rng)
        return stride_frame_ids(total, self.clips.num_frames, stride, rng)

    def _test_frame_ids(self, total: int, clip: int) -> list[int]:
        return test_clip_frame_ids(total, self.clips.num_frames, self.config.stride, clip, self.config.temporal_clips)


def list_labels(path: Path) -> np.ndarray:
    """(lines,) int64: the labels of a list file alone, its videos not looked for (a baseline over a training list
    whose videos live elsewhere)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise AvtoolError(f"{path}: no such list file") from None
    parsed = [(number, _fields(line)) for number, line in enumerate(lines, start=1) if line.strip()]
    if bad := [number for number, fields in parsed if fields is None]:
        raise AvtoolError(f"{path}: line {bad[0]}: expected 'path num_frames label' or 'path label'")
    return np.array([fields[2] for _, fields in parsed if fields is not None], dtype=np.int64)


def _fields(line: str) -> tuple[str, int, int] | None:
    """(path, num_frames, label) of a list line in either format (num_frames 0 for VideoMAE's); None when it is
    neither. Three fields whose last two are integers are AVION's; the path may hold spaces."""
    three = line.rsplit(maxsplit=2)
    if len(three) == 3 and all(_is_int(f) for f in three[1:]):
        return three[0], int(three[1]), int(three[2])
    two = line.rsplit(maxsplit=1)
    if len(two) == 2 and _is_int(two[1]):
        return two[0], 0, int(two[1])
    return None


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()
