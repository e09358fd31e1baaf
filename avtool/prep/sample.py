"""`avtool sample`: a small dataset in the real Ego4D and EPIC-Kitchens-100 layouts, made locally.

Ego4D layout::

    DEST/ego4d/v1/full_scale/<uuid>.mp4                        raw long videos, 30 fps
    DEST/ego4d/ego4d_train.pkl                                 [(video_uid, start_sec, end_sec, narration)]
    DEST/ego4d/ego4d_train.rephraser.pkl                       narration is a list of paraphrases
    DEST/ego4d/ego4d_val.pkl                                   held-out video(s)

EPIC-Kitchens-100 layout::

    DEST/ek100/P01/P01_01.MP4                                  raw videos, 60, 50 and 30 fps
    DEST/ek100/annotations/EPIC_100_{train,validation}.csv     action segments (EPIC_100 schema)
    DEST/ek100/annotations/retrieval_annotations/EPIC_100_retrieval_{train,test}.csv
    DEST/ek100/annotations/retrieval_annotations/EPIC_100_retrieval_{train,test}_sentence.csv
    DEST/ek100/annotations/retrieval_annotations/relevancy/caption_relevancy_EPIC_100_retrieval_{train,test}.pkl
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from avtool.atomic import atomic_write_bytes, atomic_write_text
from avtool.options import option
from avtool.prep.synthetic import NOUNS, VERBS, Event, Script, VideoSpec, plan_script, render_video

EK100_COLUMNS = [
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
    "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
    "noun_class", "all_nouns", "all_noun_classes",
]  # fmt: skip

_PARAPHRASE_SUBJECTS = ("#C C", "the camera wearer", "C", "someone")


@dataclass(frozen=True)
class SampleConfig:
    """The built-in sample: synthetic footage and metadata in the Ego4D and EPIC-Kitchens-100 layouts."""

    dest: Path = option(
        flags="--dest", positional=True, panel="Data", metavar="DIR", help="Folder that receives ego4d/ and ek100/."
    )
    seed: int = option(0, panel="Run", help="Seed of every random choice: the same seed gives the same videos and "
                       "metadata.")  # fmt: skip
    ego4d_durations: tuple[float, ...] = (60.0, 75.0, 90.0)
    """Length of each raw Ego4D video in seconds; the last one is held out for validation."""
    ek100_videos: tuple[tuple[str, int, float], ...] = (
        ("P01_01", 60, 30.0), ("P01_02", 50, 30.0), ("P02_01", 30, 150.0),
    )  # fmt: skip
    """(video id, fps, seconds) of each EK-100 video; the last participant is the held-out split (the
    validation CSV and the retrieval test set, 51 clips in the 150-s default, so that zero-shot MIR in
    `make demo` is measured on enough clips to tell learning from chance)."""
    workers: int = option(
        default_factory=lambda: os.cpu_count() or 1,
        flags="--procs",
        panel="Run",
        show_default="all cores",
        help="Videos rendered in parallel.",
    )


@dataclass
class SampleReport:
    dest: Path
    videos: list[str]
    seconds_of_video: float
    narrations: int
    skipped: bool
    """True when DEST already held this exact sample and nothing was written."""


def make_sample(cfg: SampleConfig, on_video_done: Callable[[str], None] | None = None) -> SampleReport:
    """Write the sample dataset under ``cfg.dest`` (idempotent: an existing sample of the same seed
    is kept)."""
    dest = Path(cfg.dest)
    marker = dest / "avtool_sample.json"
    fingerprint = _fingerprint(cfg)
    ego_jobs, ego_rows = _plan_ego4d(cfg, dest)
    ek_jobs, ek_rows = _plan_ek100(cfg, dest)
    jobs = ego_jobs + ek_jobs
    seconds = sum(spec.duration for spec, _ in jobs)
    narrations = len(ego_rows) + len(ek_rows)
    if marker.exists() and json.loads(marker.read_text()) == fingerprint:
        return SampleReport(dest, [str(s.path) for s, _ in jobs], seconds, narrations, skipped=True)

    dest.mkdir(parents=True, exist_ok=True)
    # Longest first keeps the pool busy until the end.
    jobs.sort(key=lambda job: -job[0].duration * job[0].fps)
    with ProcessPoolExecutor(max_workers=max(1, min(cfg.workers, len(jobs)))) as pool:
        for spec in pool.map(_render, jobs):
            if on_video_done is not None:
                on_video_done(str(spec.path))
    _write_ego4d_metadata(cfg, dest, ego_rows)
    _write_ek100_metadata(dest, ek_rows)
    atomic_write_text(marker, json.dumps(fingerprint, indent=2))
    return SampleReport(dest, [str(s.path) for s, _ in jobs], seconds, narrations, skipped=False)


def _render(job: tuple[VideoSpec, Script]) -> VideoSpec:
    spec, script = job
    render_video(spec, script)
    return spec


def _fingerprint(cfg: SampleConfig) -> dict:
    fields = asdict(cfg)
    fields.pop("dest")
    fields.pop("workers")
    return {"format": 1, **json.loads(json.dumps(fields))}


def _objects(rng: np.random.Generator) -> list[int]:
    return sorted(int(i) for i in rng.choice(len(NOUNS), size=4, replace=False))


def _plan_ego4d(cfg: SampleConfig, dest: Path) -> tuple[list, list[tuple]]:
    jobs, rows = [], []
    root = dest / "ego4d" / "v1" / "full_scale"
    sizes = [(640, 360), (480, 360)]  # 16:9 and 4:3, as Ego4D's cameras record
    for i, duration in enumerate(cfg.ego4d_durations):
        rng = np.random.default_rng([cfg.seed, 1, i])
        uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        width, height = sizes[i % len(sizes)]
        spec = VideoSpec(root / f"{uid}.mp4", width, height, 30, duration, seed=int(rng.integers(2**31)))
        script = plan_script(spec, _objects(rng), rng)
        jobs.append((spec, script))
        rows += [(uid, i, e) for e in script.events]
    return jobs, rows


def _plan_ek100(cfg: SampleConfig, dest: Path) -> tuple[list, list[tuple]]:
    jobs, rows = [], []
    for i, (video_id, fps, duration) in enumerate(cfg.ek100_videos):
        rng = np.random.default_rng([cfg.seed, 2, i])
        participant = video_id.split("_")[0]
        spec = VideoSpec(
            dest / "ek100" / participant / f"{video_id}.MP4",
            640,
            360,
            fps,
            duration,
            seed=int(rng.integers(2**31)),
        )
        script = plan_script(spec, _objects(rng), rng)
        jobs.append((spec, script))
        rows += [(video_id, fps, e) for e in script.events]
    return jobs, rows


def _write_ego4d_metadata(cfg: SampleConfig, dest: Path, rows: list[tuple[str, int, Event]]) -> None:
    held_out = len(cfg.ego4d_durations) - 1
    train = [(uid, e.start, e.end, e.narration()) for uid, i, e in rows if i != held_out or held_out == 0]
    val = [(uid, e.start, e.end, e.narration()) for uid, i, e in rows if i == held_out]
    rng = np.random.default_rng([cfg.seed, 3])
    rephrased = []
    for uid, i, e in rows:
        if i == held_out and held_out > 0:
            continue
        action = VERBS[e.verb].phrase.format(obj=NOUNS[e.noun].phrase)
        options = [f"{subject} {action}" for subject in _PARAPHRASE_SUBJECTS]
        options[2] = options[2].replace(" the ", " a ", 1)
        rng.shuffle(options)
        rephrased.append((uid, e.start, e.end, options))
    root = dest / "ego4d"
    atomic_write_bytes(root / "ego4d_train.pkl", pickle.dumps(train))
    atomic_write_bytes(root / "ego4d_val.pkl", pickle.dumps(val))
    atomic_write_bytes(root / "ego4d_train.rephraser.pkl", pickle.dumps(rephrased))


def _timestamp(seconds: float, decimals: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:0{3 + decimals}.{decimals}f}"


def ek100_table(rows: list[tuple[str, int, Event]]) -> pd.DataFrame:
    """Action segments in the EPIC_100 CSV schema."""
    records = []
    counters: dict[str, int] = {}
    for video_id, fps, e in rows:
        index = counters.get(video_id, 0)
        counters[video_id] = index + 1
        noun = NOUNS[e.noun]
        records.append(
            {
                "narration_id": f"{video_id}_{index}",
                "participant_id": video_id.split("_")[0],
                "video_id": video_id,
                "narration_timestamp": _timestamp((e.start + e.end) / 2, 3),
                "start_timestamp": _timestamp(e.start, 2),
                "stop_timestamp": _timestamp(e.end, 2),
                "start_frame": int(round(e.start * fps)) + 1,
                "stop_frame": int(round(e.end * fps)),
                "narration": e.short_narration(),
                "verb": VERBS[e.verb].name,
                "verb_class": e.verb,
                "noun": noun.name,
                "noun_class": e.noun,
                "all_nouns": str([noun.name]),
                "all_noun_classes": str([e.noun]),
            }
        )
    return pd.DataFrame.from_records(records, columns=EK100_COLUMNS)


def relevancy_matrix(clips: pd.DataFrame, sentences: pd.DataFrame) -> np.ndarray:
    """EK-100 MIR relevancy: half verb-class agreement plus half noun-class IoU, clips × sentences."""
    verbs = sentences["verb_class"].to_numpy()
    nouns = [set(parse_list_column(v)) for v in sentences["all_noun_classes"]]
    matrix = np.zeros((len(clips), len(sentences)), dtype=np.float32)
    for i, (verb, clip_nouns) in enumerate(zip(clips["verb_class"], clips["all_noun_classes"], strict=True)):
        clip_nouns = set(parse_list_column(clip_nouns))
        noun_iou = np.array([len(clip_nouns & n) / len(clip_nouns | n) for n in nouns])
        matrix[i] = 0.5 * (verbs == verb) + 0.5 * noun_iou
    return matrix


def parse_list_column(text: str) -> list[int]:
    """Parse EK-100's list columns such as ``[2, 5]`` without ``eval``."""
    inner = text.strip().strip("[]").strip()
    return [int(x) for x in inner.split(",")] if inner else []


def _write_ek100_metadata(dest: Path, rows: list[tuple[str, int, Event]]) -> None:
    table = ek100_table(rows)
    held_out = table["participant_id"] == table["participant_id"].iloc[-1]
    annotations = dest / "ek100" / "annotations"
    retrieval = annotations / "retrieval_annotations"
    splits = {"train": table[~held_out], "validation": table[held_out]}
    for name, split in splits.items():
        atomic_write_text(annotations / f"EPIC_100_{name}.csv", split.to_csv(index=False))
    for name, split in (("train", splits["train"]), ("test", splits["validation"])):
        atomic_write_text(retrieval / f"EPIC_100_retrieval_{name}.csv", split.to_csv(index=False))
        sentences = split.drop_duplicates("narration")
        atomic_write_text(
            retrieval / f"EPIC_100_retrieval_{name}_sentence.csv",
            sentences[["narration_id", "narration"]].to_csv(index=False),
        )
        matrix = relevancy_matrix(split, sentences)
        atomic_write_bytes(
            retrieval / "relevancy" / f"caption_relevancy_EPIC_100_retrieval_{name}.pkl", pickle.dumps(matrix)
        )
