"""Ego4D video-narration pairs (LaViLa's pickles) over the chunked layout ``ROOT/<video_uid>.mp4/<start>.mp4``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avtool.data.base import ClipConfig, ClipDataset, resolve_video, split_key
from avtool.data.problems import Problems
from avtool.data.safe_pickle import read_pickle
from avtool.data.strings import StringTable
from avtool.errors import AvtoolError


@dataclass(frozen=True)
class Ego4DConfig:
    metadata: Path
    """LaViLa pickle: a list of ``(video_uid, start_sec, end_sec, narration)``; in the LLM-augmented
    files (``…rephraser…``, ``…narrator…``) the narration is a list of strings."""
    clips: ClipConfig
    """Video root, frames, size, crops, decoder, seed."""
    extra_metadata: tuple[Path, ...] = ()
    """More pickles of the same format whose rows are added as samples (LaViLa's LLM-augmented
    narrator and rephraser files)."""


class Ego4DNarrations(ClipDataset):
    """Item: ``{"video": uint8 (T, S, S, 3), "text": str, "index": int}``; one narration is drawn with
    the sample's seeded generator when the metadata holds several."""

    def __init__(self, config: Ego4DConfig) -> None:
        super().__init__(config.clips)
        self.config = config
        files = (Path(config.metadata), *map(Path, config.extra_metadata))
        problems = Problems(", ".join(map(str, files)))
        uids, starts, ends, texts, names = [], [], [], [], []
        for path in files:
            for i, row in enumerate(_load_pickle(path)):
                name = f"{path.name} row {i}" if len(files) > 1 else f"row {i}"
                if not isinstance(row, (tuple, list)) or len(row) < 4:
                    problems.add(f"{name}: expected (video_uid, start_sec, end_sec, narration), got {row!r:.80}")
                    continue
                uid, start, end, narration = row[:4]
                options = (
                    [narration] if isinstance(narration, str) else list(narration) if narration is not None else []
                )
                if not options or not all(isinstance(s, str) for s in options):
                    problems.add(f"{name}: narration must be a string or a list of strings, got {narration!r:.80}")
                    continue
                uids.append(str(uid))
                starts.append(_number(start))
                ends.append(_number(end))
                texts.append(options)
                names.append(name)
        problems.raise_if_any()
        keys = {uid: resolve_video(self.index, [f"{uid}.mp4", f"{uid}.MP4", uid]) for uid in set(uids)}
        self._keys = np.array([keys[uid] for uid in uids])
        self._starts = np.array(starts, dtype=np.float64)
        self._ends = np.array(ends, dtype=np.float64)
        self.check_clips(problems, list(self._keys), self._starts, self._ends, lambda i: f"{names[i]} ({uids[i]})")
        problems.raise_if_any()
        self._texts = StringTable(texts)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = split_key(key)
        rng = self.rng(epoch, index)
        video = self.load_clip(str(self._keys[index]), float(self._starts[index]), float(self._ends[index]), rng)
        options = self._texts.row(index)
        text = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
        return {"video": video, "text": text, "index": index}


def _load_pickle(path: Path) -> list:
    rows = read_pickle(path, "metadata")
    if not isinstance(rows, (list, tuple)):
        raise AvtoolError(f"{path}: expected a list of (video_uid, start, end, narration), got {type(rows).__name__}")
    return list(rows)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
