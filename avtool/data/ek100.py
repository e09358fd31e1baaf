"""EPIC-Kitchens-100 over the chunked layout ``ROOT/<participant>/<video_id>.MP4/<start>.MP4``:
multi-instance retrieval (MIR) and action recognition (CLS).

Clip times come from the ``start_timestamp``/``stop_timestamp`` columns and are turned into frames
with each chunk's own rate (EK-100 mixes 50 and 60 fps), never from the 60-fps frame columns.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avtool.data.base import ClipConfig, ClipDataset, resolve_video, split_key
from avtool.data.problems import Problems
from avtool.data.safe_pickle import read_pickle
from avtool.data.strings import StringTable
from avtool.errors import AvtoolError
from avtool.options import option

_TIMESTAMP = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*$")
_CLIP_COLUMNS = ("narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "narration")


def parse_timestamp(text: str) -> float:
    """``HH:MM:SS.ff`` -> seconds; NaN when it does not parse."""
    match = _TIMESTAMP.match(str(text))
    if match is None:
        return float("nan")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A metadata CSV with the given columns, or AvtoolError naming the file and what is missing."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise AvtoolError(f"{path}: no such metadata file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AvtoolError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise AvtoolError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)})")
    return table


class _EK100Clips(ClipDataset):
    """Loads the clips of an EPIC_100 CSV and checks their times and videos."""

    def _load_clips(self, path: Path, extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, Problems]:
        table = read_csv(path, _CLIP_COLUMNS + extra)
        problems = Problems(str(path))
        starts = np.array([parse_timestamp(t) for t in table["start_timestamp"]])
        ends = np.array([parse_timestamp(t) for t in table["stop_timestamp"]])
        for i in np.flatnonzero(np.isnan(starts) | np.isnan(ends)):
            bad = table["start_timestamp"][i] if np.isnan(starts[i]) else table["stop_timestamp"][i]
            problems.add(f"row {i + 2} ({table['narration_id'][i]}): unparsable timestamp {bad!r}")
        keys = {
            (p, v): resolve_video(self.index, [f"{p}/{v}.MP4", f"{p}/{v}.mp4", f"{v}.MP4", f"{v}.mp4"])
            for p, v in set(zip(table["participant_id"], table["video_id"], strict=True))
        }
        self._keys = np.array([keys[p, v] for p, v in zip(table["participant_id"], table["video_id"], strict=True)])
        self._starts, self._ends = starts, ends
        parsed = ~(np.isnan(starts) | np.isnan(ends))
        ok = np.flatnonzero(parsed)
        self.check_clips(
            problems, [str(k) for k in self._keys[ok]], starts[ok], ends[ok],
            lambda j: f"row {ok[j] + 2} ({table['narration_id'][ok[j]]})",
        )  # fmt: skip
        return table, problems

    def __len__(self) -> int:
        return len(self._keys)

    def _clip(self, index: int, rng: np.random.Generator):
        return self.load_clip(str(self._keys[index]), float(self._starts[index]), float(self._ends[index]), rng)


@dataclass(frozen=True)
class EK100MIRConfig:
    annotations: Path
    """``EPIC_100_retrieval_{train,test}.csv`` (EPIC_100 columns)."""
    sentences: Path
    """``EPIC_100_retrieval_{train,test}_sentence.csv``: ``narration_id,narration``; row j is column j of
    the relevancy matrix."""
    relevancy: Path
    """``caption_relevancy_EPIC_100_retrieval_{train,test}.pkl``: clips × sentences matrix."""
    clips: ClipConfig
    threshold: float = 0.1
    """Sentences with relevancy above this are positives of a clip."""


class EK100MIR(_EK100Clips):
    """Item in training: ``{"video", "text", "relevancy", "clip", "sentence"}``, where ``text`` is a
    positive sentence (relevancy > threshold) drawn with the sample's generator (the clip's own
    narration, sentence -1 and relevancy 1, when it has none). In evaluation: ``{"video", "text",
    "clip"}`` with the clip's own narration; ``sentences`` and ``relevancy`` hold the retrieval side."""

    def __init__(self, config: EK100MIRConfig) -> None:
        super().__init__(config.clips)
        self.config = config
        table, problems = self._load_clips(Path(config.annotations))
        sentences = read_csv(Path(config.sentences), ("narration_id", "narration"))
        relevancy = _load_matrix(Path(config.relevancy))
        expected = (len(table), len(sentences))
        if relevancy.shape != expected:
            problems.add(
                f"relevancy matrix {config.relevancy} is {relevancy.shape[0]}×{relevancy.shape[1]}, expected "
                f"{expected[0]} clips × {expected[1]} sentences (another version of the matrix?)"
            )
        problems.raise_if_any()
        self.narration_ids = list(table["narration_id"])
        self.sentences = list(sentences["narration"])
        self.relevancy = relevancy
        self._narrations = StringTable([[n] for n in table["narration"]])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = split_key(key)
        rng = self.rng(epoch, index)
        video = self._clip(index, rng)
        narration = self._narrations.row(index)[0]
        if not self.clips.train:
            return {"video": video, "text": narration, "clip": index}
        positives = np.flatnonzero(self.relevancy[index] > self.config.threshold)
        if len(positives) == 0:
            return {"video": video, "text": narration, "relevancy": 1.0, "clip": index, "sentence": -1}
        j = int(positives[rng.integers(len(positives))])
        return {"video": video, "text": self.sentences[j], "relevancy": float(self.relevancy[index, j]),
                "clip": index, "sentence": j}  # fmt: skip


@dataclass(frozen=True)
class EK100CLSConfig:
    annotations: Path
    """``EPIC_100_train.csv`` or ``EPIC_100_validation.csv``."""
    clips: ClipConfig
    vocabulary: tuple[Path, ...] = ()
    """CSVs whose verb:noun pairs make the action classes; empty means ``EPIC_100_train.csv`` and
    ``EPIC_100_validation.csv`` next to ``annotations`` (3,806 actions on the real data)."""


class EK100CLS(_EK100Clips):
    """Item: ``{"video", "action", "verb", "noun"}``. Actions are the ``verb:noun`` strings of train+val
    sorted as strings, the reference's order, so its classifier heads line up; ``action_verbs`` and
    ``action_nouns`` map an action id to its verb and noun (to marginalise action probabilities)."""

    def __init__(self, config: EK100CLSConfig) -> None:
        super().__init__(config.clips)
        self.config = config
        path = Path(config.annotations)
        table, problems = self._load_clips(path, ("verb_class", "noun_class"))
        verbs, nouns = _class_ids(table, problems)
        vocabulary = config.vocabulary or (path.parent / "EPIC_100_train.csv", path.parent / "EPIC_100_validation.csv")
        pairs: set[str] = set()
        for csv in vocabulary:
            other = read_csv(Path(csv), ("verb_class", "noun_class"))
            v, n = _class_ids(other, problems)
            pairs.update(f"{a}:{b}" for a, b in zip(v, n, strict=True) if a >= 0 and b >= 0)
        self.actions = sorted(pairs)
        action_of = {name: i for i, name in enumerate(self.actions)}
        own = [f"{a}:{b}" for a, b in zip(verbs, nouns, strict=True)]
        for i, name in enumerate(own):
            if name not in action_of and verbs[i] >= 0 and nouns[i] >= 0:
                problems.add(f"row {i + 2}: action {name} is not in the vocabulary files")
        problems.raise_if_any()
        self.action_verbs = np.array([int(a.split(":")[0]) for a in self.actions], dtype=np.int64)
        self.action_nouns = np.array([int(a.split(":")[1]) for a in self.actions], dtype=np.int64)
        self._labels = np.array([[action_of[n], v, k] for n, v, k in zip(own, verbs, nouns, strict=True)],
                                dtype=np.int64).reshape(-1, 3)  # fmt: skip

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    def labels(self, index: int) -> tuple[int, int, int]:
        """(action, verb, noun) ids of clip ``index``, without loading its video."""
        action, verb, noun = (int(x) for x in self._labels[index])
        return action, verb, noun

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = split_key(key)
        action, verb, noun = self.labels(index)
        return {"video": self._clip(index, self.rng(epoch, index)), "action": action, "verb": verb, "noun": noun}


def _class_ids(table: pd.DataFrame, problems: Problems) -> tuple[list[int], list[int]]:
    verbs, nouns = [], []
    for i, (verb, noun) in enumerate(zip(table["verb_class"], table["noun_class"], strict=True)):
        try:
            verbs.append(int(verb))
            nouns.append(int(noun))
        except ValueError:
            problems.add(f"row {i + 2}: verb_class/noun_class not integers ({verb!r}, {noun!r})")
            verbs.append(-1)
            nouns.append(-1)
    return verbs, nouns


def _load_matrix(path: Path) -> np.ndarray:
    matrix = read_pickle(path, "relevancy")
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise AvtoolError(f"{path}: relevancy must be a clips × sentences matrix, got shape {matrix.shape}")
    return matrix


def ek100_root_option(default: Any = MISSING, *, positional: bool, flags: tuple[str, ...]) -> Any:
    """The EK-100 video root as a setting of a job (`train mir|cls` take it first, `train lavila` optionally)."""
    return option(default, flags=flags, positional=positional, panel="Data", metavar="DIR",
                  help="Chunked EK-100 videos (ROOT/P01/P01_01.MP4/0.MP4).")  # fmt: skip


def ek100_annotations_option(default: Any = MISSING, *, positional: bool) -> Any:
    return option(
        default,
        flags="--ek100-annotations",
        positional=positional,
        panel="Data",
        metavar="DIR",
        help="EK-100 annotations folder: EPIC_100_{train,validation}.csv and retrieval_annotations/.",
    )


@dataclass(frozen=True)
class EK100Layout:
    """Where the EPIC-Kitchens-100 files are, by the official annotation repository's names."""

    root: Path
    """Chunked EK-100 videos (``ROOT/P01/P01_01.MP4/0.MP4``)."""
    annotations: Path
    """The annotations folder: ``EPIC_100_{train,validation}.csv`` and ``retrieval_annotations/``."""

    def cls_csv(self, split: str) -> Path:
        """``split``: train or validation."""
        return self.annotations / f"EPIC_100_{split}.csv"

    def mir_files(self, split: str) -> tuple[Path, Path, Path]:
        """(clips CSV, sentences CSV, relevancy pickle) of MIR ``split`` (train or test)."""
        folder = self.annotations / "retrieval_annotations"
        return (
            folder / f"EPIC_100_retrieval_{split}.csv",
            folder / f"EPIC_100_retrieval_{split}_sentence.csv",
            folder / "relevancy" / f"caption_relevancy_EPIC_100_retrieval_{split}.pkl",
        )

    def mir_config(self, split: str, clips: ClipConfig, threshold: float = 0.1) -> EK100MIRConfig:
        annotations, sentences, relevancy = self.mir_files(split)
        return EK100MIRConfig(annotations, sentences, relevancy, clips, threshold)

    def cls_config(self, split: str, clips: ClipConfig) -> EK100CLSConfig:
        return EK100CLSConfig(self.cls_csv(split), clips, (self.cls_csv("train"), self.cls_csv("validation")))
