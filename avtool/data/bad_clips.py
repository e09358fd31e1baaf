"""What a training run does with a clip whose chunk file turns out unreadable while it trains.

The start-up checks find missing videos, clips outside their video and chunk files of the wrong size; a
file can still be corrupt inside, or be deleted or truncated during a run. ``--on-bad-clip skip`` (the
default) loads another sample in the clip's place, drawn from (seed, epoch, index, attempt) so that a
rerun replaces it the same way, and counts it: every sample carries the number of clips it replaced and
the reason for the first, and the training loop logs the count (``bad_clips`` in metrics.jsonl, a warning
line, the run's summary). ``fail`` stops the run with the one-line reason naming the file. The option
itself is ``RunConfig.on_bad_clip``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from avtool.data.base import split_key
from avtool.errors import AvtoolError
from avtool.video.decode import BadChunkError

BAD_CLIPS = "bad_clips"
"""Key of a sample's (and, collated, a batch's) count of clips it replaced."""
BAD_CLIP_REASON = "bad_clip_reason"
"""Key of the reason the first replaced clip of a sample failed ("" when none was)."""
MAX_ATTEMPTS = 16
"""Replacements tried for one sample before the run fails: that many unreadable clips in a row means most
of the data is, and training on the rest would be misleading."""


class ReplaceBadClips(Dataset):
    """``dataset`` (items are dicts, keys are ``(epoch, index)``) with unreadable clips replaced, or fatal
    with ``fail``."""

    def __init__(self, dataset: Dataset, seed: int, fail: bool = False) -> None:
        self.dataset = dataset
        self.seed = seed
        self.fail = fail

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = split_key(key)
        reasons: list[str] = []
        for attempt in range(MAX_ATTEMPTS):
            try:
                sample = self.dataset[key if attempt == 0 else (epoch, self.replacement(epoch, index, attempt))]
            except BadChunkError as e:
                if self.fail:
                    raise AvtoolError(f"{e} (--on-bad-clip skip trains on without it)") from None
                reasons.append(str(e))
                continue
            if not isinstance(sample, dict):
                return sample  # nowhere to carry the count (the training sets' items are dicts)
            return {**sample, BAD_CLIPS: len(reasons), BAD_CLIP_REASON: reasons[0] if reasons else ""}
        raise AvtoolError(f"{MAX_ATTEMPTS} clips in a row could not be read, the last: {reasons[-1]}")

    def replacement(self, epoch: int, index: int, attempt: int) -> int:
        """The index that stands in for ``index`` at its ``attempt``-th replacement (the same in every run)."""
        rng = np.random.default_rng([self.seed, epoch, index, attempt, 0xBAD])
        return int(rng.integers(len(self)))


@dataclass
class BadClipTally:
    """Clips replaced in the batches taken since the last ``take``, and the reason for the first."""

    count: int = 0
    reason: str = ""

    def add(self, batch: dict[str, Any]) -> None:
        """Move a batch's counts into the tally (the keys leave the batch: the model never sees them)."""
        counts = batch.pop(BAD_CLIPS, None)
        reasons = batch.pop(BAD_CLIP_REASON, None)
        if counts is None:
            return
        self.count += int(counts.sum()) if hasattr(counts, "sum") else int(sum(counts))
        if not self.reason:
            self.reason = next((r for r in reasons or () if r), "")

    def take(self) -> tuple[int, str]:
        count, reason = self.count, self.reason
        self.count, self.reason = 0, ""
        return count, reason
