"""`avtool sample`: a dataset in the real Ego4D and EPIC-Kitchens-100 layouts, made locally.

Two sizes: ``demo`` (7 minutes of footage, for the demo and the tests) and ``bench`` (4 hours of Ego4D
footage with narrations as dense as Ego4D's, for throughput runs; see BENCH_VIDEOS). Either way the
footage's 288p chunks cost ~1 Mb/s, as real egocentric video does, which the sample measures and reports.

Ego4D layout::

    DEST/ego4d/v1/full_scale/<uuid>.mp4                        raw long videos, 30 fps
    DEST/ego4d/ego4d_train.pkl                                 [(video_uid, start_sec, end_sec, narration)]
    DEST/ego4d/ego4d_train.rephraser.pkl                       narration is a list of paraphrases
    DEST/ego4d/ego4d_val.pkl                                   held-out video(s)

Kinetics layout (short clips of one action on one kind of object each, e.g. push_left_red_ball)::

    DEST/kinetics/{train,val}/<class>/<id>.mp4                 10-s clips, short side 320, 30 fps
    DEST/kinetics/{train,val}.csv                              AVION's lists: path num_frames label
    DEST/kinetics/{train,val}_videomae.csv                     VideoMAE's lists: path label
    DEST/kinetics/classes.txt                                  class names, line i: class i

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
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from avtool.atomic import atomic_write_bytes, atomic_write_text
from avtool.errors import AvtoolError
from avtool.options import option
from avtool.prep.encode import EncodeSettings, trial_bitrate
from avtool.prep.synthetic import (
    EVENT_SECONDS,
    NOUNS,
    VERBS,
    Event,
    Script,
    VideoSpec,
    concat_videos,
    plan_action_script,
    plan_script,
    render_video,
    segments,
)
from avtool.video.probe import probe_video

EK100_COLUMNS = [
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
    "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
    "noun_class", "all_nouns", "all_noun_classes",
]  # fmt: skip

_PARAPHRASE_SUBJECTS = ("#C C", "the camera wearer", "C", "someone")
FORMAT = 2
"""Version of the footage and metadata; a sample of another version is rewritten (2: footage that
costs what real footage costs, denser narrations)."""
SEGMENT_SECONDS = 120.0
"""Long videos are rendered in pieces of this length on separate cores and joined. Fixed, not taken
from the core count, so that every machine writes the same bytes."""
TRIAL_SECONDS = 5.0
"""Seconds of each kind of video (size and rate) trial-encoded with the chunk defaults to report the
chunks' bitrate."""
_DEMO_DURATIONS = (60.0, 75.0, 90.0)
BENCH_VIDEOS, BENCH_MINUTES = 16, 15.0
"""The bench preset: 16 Ego4D videos of 15 minutes (4 h; three 300-s chunks each) whose 15 training
videos hold ~5,960 narrations (one per ~2.3 s, as dense as Ego4D's), 23 steps of 256 clips per epoch.
It renders 440,000 frames in ~4 min on 16 cores (~140 frames/s per core) into ~5 GB of raw video
(~3 Mb/s). Hundreds of distinct steps would take Ego4D's density over tens of hours of footage: more
epochs (whose frame sampling is jittered) or --videos/--minutes give longer runs."""


@dataclass(frozen=True)
class SampleConfig:
    """The built-in sample: synthetic footage and metadata in the Ego4D and EPIC-Kitchens-100 layouts."""

    dest: Path = option(
        flags="--dest", positional=True, panel="Data", metavar="DIR", help="Folder that receives ego4d/ and ek100/."
    )
    preset: Literal["demo", "bench"] = option(
        "demo",
        panel="Data",
        help=f"Size: demo (3 Ego4D videos of 60-90 s, 7 min in all) or bench ({BENCH_VIDEOS} Ego4D videos of "
        f"{BENCH_MINUTES:g} min, for throughput runs). EK-100 has the same 3 videos in both.",
    )
    videos: int | None = option(
        None, panel="Data", show_default="the preset's", help="Ego4D videos (the last one is held out)."
    )
    minutes: float | None = option(
        None, panel="Data", unit="min", show_default="the preset's", help="Length of each Ego4D video."
    )
    seed: int = option(0, panel="Run", help="Seed of every random choice: the same seed gives the same videos and "
                       "metadata.")  # fmt: skip
    ego4d_durations: tuple[float, ...] | None = None
    """Length of each raw Ego4D video in seconds, the last one held out for validation; set, it wins
    over the preset, --videos and --minutes."""
    ek100_videos: tuple[tuple[str, int, float], ...] = (
        ("P01_01", 60, 30.0), ("P01_02", 50, 30.0), ("P02_01", 30, 150.0),
    )  # fmt: skip
    """(video id, fps, seconds) of each EK-100 video; the last participant is the held-out split (the
    validation CSV and the retrieval test set, 68 clips in the 150-s default, so that zero-shot MIR in
    `make demo` is measured on enough clips to tell learning from chance)."""
    kinetics_clips: int = option(
        4, panel="Data",
        help="Kinetics-layout clips per action class for training (one more per class is held out for "
        "validation); 0: no Kinetics layout.",
    )  # fmt: skip
    kinetics_seconds: float = 10.0
    """Length of each Kinetics clip (Kinetics' clips are 10 s)."""
    kinetics_val_clips: int = 1
    """Held-out Kinetics clips per action class (the validation list)."""
    workers: int = option(
        default_factory=lambda: os.cpu_count() or 1,
        flags="--procs",
        panel="Run",
        show_default="all cores",
        help="Video segments rendered in parallel.",
    )

    def __post_init__(self) -> None:
        if self.videos is not None and self.videos < 1:
            raise AvtoolError(f"--videos must be at least 1, got {self.videos}")
        if self.minutes is not None and not self.minutes > 0:
            raise AvtoolError(f"--minutes must be positive, got {self.minutes}")
        if self.kinetics_clips < 0 or not self.kinetics_seconds >= 2 * EVENT_SECONDS[0]:
            raise AvtoolError(f"--kinetics-clips must be 0 or more and clips at least {2 * EVENT_SECONDS[0]:g} s long")
        if self.kinetics_val_clips < 1:
            raise AvtoolError(f"kinetics_val_clips must be at least 1, got {self.kinetics_val_clips}")

    def durations(self) -> tuple[float, ...]:
        """Seconds of each Ego4D video: ``ego4d_durations``, else --videos × --minutes over the preset's."""
        if self.ego4d_durations is not None:
            return tuple(self.ego4d_durations)
        bench = self.preset == "bench"
        videos = self.videos or (BENCH_VIDEOS if bench else len(_DEMO_DURATIONS))
        minutes = self.minutes or (BENCH_MINUTES if bench else None)
        if minutes is None:
            return tuple(_DEMO_DURATIONS[i % len(_DEMO_DURATIONS)] for i in range(videos))
        return (round(minutes * 60, 3),) * videos


@dataclass
class SampleReport:
    dest: Path
    videos: list[str]
    seconds_of_video: float
    narrations: int
    skipped: bool
    """True when DEST already held this exact sample and nothing was written."""
    chunk_bitrate: float | None = None
    """Bits/s of 288p chunks at the chunk defaults (crf 23), from trial encodes: the kinds' figures
    weighted by their seconds of footage."""
    trial_seconds: float = 0.0
    """Seconds of footage trial-encoded for ``chunk_bitrate``."""
    bitrates: dict[str, float] = field(default_factory=dict)
    """The trial's bits/s of each kind of video, e.g. ``640x360@30``."""
    trial_settings: str = ""
    """What the trial encoded, e.g. ``288p chunks at crf 23, medium``."""


def make_sample(cfg: SampleConfig, on_video_done: Callable[[str], None] | None = None) -> SampleReport:
    """Write the sample dataset under ``cfg.dest`` (idempotent: an existing sample of the same seed,
    sizes and format is kept)."""
    dest = Path(cfg.dest)
    marker = dest / "avtool_sample.json"
    fingerprint = _fingerprint(cfg)
    ego_jobs, ego_rows = _plan_ego4d(cfg, dest)
    ek_jobs, ek_rows = _plan_ek100(cfg, dest)
    kinetics = _plan_kinetics(cfg, dest)
    videos = ego_jobs + ek_jobs + [(spec, script) for spec, script, _, _ in kinetics]
    report = SampleReport(
        dest, [str(s.path) for s, _ in videos], sum(s.duration for s, _ in videos), len(ego_rows) + len(ek_rows),
        skipped=False,
    )  # fmt: skip
    recorded = json.loads(marker.read_text()) if marker.exists() else None
    if isinstance(recorded, dict) and {k: v for k, v in recorded.items() if k != "measured"} == fingerprint:
        report.skipped = True
        _set_measured(report, recorded.get("measured", {}))
        return report

    dest.mkdir(parents=True, exist_ok=True)
    render_videos(videos, cfg.workers, on_video_done)
    _write_ego4d_metadata(cfg, dest, ego_rows)
    _write_ek100_metadata(dest, ek_rows)
    _write_kinetics_lists(dest, kinetics)
    measured = measure_chunk_bitrate([spec for spec, _ in videos])
    _set_measured(report, measured)
    atomic_write_text(marker, json.dumps({**fingerprint, "measured": measured}, indent=2))
    return report


def _set_measured(report: SampleReport, measured: dict) -> None:
    report.chunk_bitrate = measured.get("chunk_bitrate")
    report.trial_seconds = measured.get("trial_seconds", 0.0)
    report.bitrates = dict(measured.get("bitrates", {}))
    report.trial_settings = measured.get("settings", "")


def render_videos(
    videos: list[tuple[VideoSpec, Script]],
    workers: int,
    on_video_done: Callable[[str], None] | None = None,
    segment_seconds: float = SEGMENT_SECONDS,
) -> None:
    """Render every video, long ones as ``segment_seconds`` pieces on separate cores that are joined
    as soon as all of a video's pieces are done."""
    pieces: dict[Path, list[Path]] = {}
    jobs = []
    for spec, script in videos:
        ranges = segments(spec, segment_seconds)
        if len(ranges) == 1:
            jobs.append((spec, script, None, spec.path))
            continue
        paths = [spec.path.with_name(f".{spec.path.name}.piece{k}.mp4") for k in range(len(ranges))]
        pieces[spec.path] = paths
        jobs += [(spec, script, r, p) for r, p in zip(ranges, paths, strict=True)]
    # Longest first keeps the pool busy until the end.
    jobs.sort(key=lambda job: -_job_cost(job))
    left = {spec.path: len(pieces.get(spec.path, [spec.path])) for spec, _ in videos}
    try:
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
            pending = {pool.submit(_render, job) for job in jobs}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    path = future.result()
                    left[path] -= 1
                    if left[path] == 0:
                        if path in pieces:
                            concat_videos(pieces[path], path)
                        if on_video_done is not None:
                            on_video_done(str(path))
    finally:
        # Pieces are hidden files (chunking skips them), removed once joined or when a render fails.
        for paths in pieces.values():
            for piece in paths:
                piece.unlink(missing_ok=True)


def _job_cost(job: tuple) -> float:
    spec, _, frames, _ = job
    first, last = frames or (0, spec.frames)
    return (last - first) * spec.width * spec.height


def _render(job: tuple[VideoSpec, Script, tuple[int, int] | None, Path]) -> Path:
    spec, script, frames, path = job
    render_video(spec, script, frames, path)
    return spec.path


def measure_chunk_bitrate(specs: list[VideoSpec], seconds: float = TRIAL_SECONDS) -> dict:
    """Trial-encode ``seconds`` of one video of each kind (size and rate) as `avtool chunk` would with
    its defaults (288p, crf 23, medium, 1-s keyframes): the chunks' bitrate without chunking. The
    mean weights each kind by its seconds of footage."""
    kinds: dict[str, list[VideoSpec]] = {}
    for spec in specs:
        kinds.setdefault(f"{spec.width}x{spec.height}@{spec.fps}", []).append(spec)
    rates, trial, settings = {}, 0.0, EncodeSettings()
    with tempfile.TemporaryDirectory(prefix="avtool-sample-trial-") as scratch:
        for kind, members in kinds.items():
            longest = max(members, key=lambda s: s.duration)
            rates[kind] = trial_bitrate(probe_video(longest.path), settings, Path(scratch), seconds)
            trial += min(seconds, longest.duration)
    weight = {kind: sum(s.duration for s in members) for kind, members in kinds.items()}
    mean = sum(rates[k] * weight[k] for k in rates) / sum(weight.values())
    return {
        "chunk_bitrate": round(mean),
        "trial_seconds": trial,
        "bitrates": {k: round(v) for k, v in rates.items()},
        "settings": f"{settings.short_side}p chunks at crf {settings.crf}, {settings.preset}",
    }


def _fingerprint(cfg: SampleConfig) -> dict:
    """What the sample's bytes depend on: the format, the seed and the resolved sizes."""
    sizes = {"ego4d_durations": list(cfg.durations()), "ek100_videos": [list(v) for v in cfg.ek100_videos]}
    if cfg.kinetics_clips:  # (samples made before the Kinetics layout keep their fingerprint)
        # (2: classes of one action on one kind of object)
        sizes["kinetics"] = [cfg.kinetics_clips, cfg.kinetics_seconds, cfg.kinetics_val_clips, 2]
    return {"format": FORMAT, "seed": cfg.seed, **sizes}


def _objects(rng: np.random.Generator, noun: int | None = None, count: int = 4) -> list[int]:
    """``count`` objects for a table, ``noun`` among them if given."""
    if noun is None:
        return sorted(int(i) for i in rng.choice(len(NOUNS), size=count, replace=False))
    others = [i for i in range(len(NOUNS)) if i != noun]
    return sorted([noun, *(int(i) for i in rng.choice(others, size=count - 1, replace=False))])


def _plan_ego4d(cfg: SampleConfig, dest: Path) -> tuple[list, list[tuple]]:
    jobs, rows = [], []
    root = dest / "ego4d" / "v1" / "full_scale"
    # 16:9 and 4:3, as Ego4D's cameras record; the 4:3 scenes' busier table makes up for their
    # fewer pixels, so that both kinds of chunks cost ~1 Mb/s.
    sizes = [(640, 360, 1.0), (480, 360, 1.5)]
    for i, duration in enumerate(cfg.durations()):
        rng = np.random.default_rng([cfg.seed, 1, i])
        uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        width, height, texture = sizes[i % len(sizes)]
        seed = int(rng.integers(2**31))
        spec = VideoSpec(root / f"{uid}.mp4", width, height, 30, duration, seed=seed, texture=texture)
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


KINETICS_SIZE = (568, 320)
"""Kinetics clips as the recipes re-encode them: short side 320 (16:9)."""


KINETICS_CLASSES: tuple[tuple[int, int], ...] = tuple((i, i) for i in range(len(VERBS)))
"""(verb, noun) of each Kinetics class: one action on one kind of object, as Kinetics' classes name both
("push left red ball"); the clip's other objects are drawn from the other nouns."""


KINETICS_OBJECTS = 2
"""Objects on a Kinetics clip's table: the class's own and one other (a Kinetics clip is framed on its
action)."""


def kinetics_class_name(label: int) -> str:
    """Folder and class name of a Kinetics class, e.g. ``push_left_red_ball``."""
    verb, noun = KINETICS_CLASSES[label]
    return "_".join(f"{VERBS[verb].name} {NOUNS[noun].phrase}".replace("-", " ").split())


def _plan_kinetics(cfg: SampleConfig, dest: Path) -> list[tuple[VideoSpec, Script, str, int]]:
    """(spec, script, split, label) of each Kinetics clip: ``kinetics_clips`` + ``kinetics_val_clips`` per action
    class (the last ones of each class held out for validation), every clip showing its class's action again
    and again."""
    out = []
    width, height = KINETICS_SIZE
    for label, (verb, noun) in enumerate(KINETICS_CLASSES):
        for k in range(cfg.kinetics_clips + cfg.kinetics_val_clips if cfg.kinetics_clips else 0):
            rng = np.random.default_rng([cfg.seed, 4, label, k])
            split = "val" if k >= cfg.kinetics_clips else "train"
            clip_id = f"{rng.bytes(6).hex()}_{k:06d}"
            path = dest / "kinetics" / split / kinetics_class_name(label) / f"{clip_id}.mp4"
            spec = VideoSpec(path, width, height, 30, cfg.kinetics_seconds, seed=int(rng.integers(2**31)))
            script = plan_action_script(spec, _objects(rng, noun, KINETICS_OBJECTS), verb, rng, noun)
            out.append((spec, script, split, label))
    return out


def _write_kinetics_lists(dest: Path, clips: list[tuple[VideoSpec, Script, str, int]]) -> None:
    """The lists in AVION's format (``path num_frames label``) and VideoMAE's (``path label``), paths relative
    to DEST/kinetics, and the class names (line i: class i)."""
    if not clips:
        return
    root = dest / "kinetics"
    for split in ("train", "val"):
        rows = [(spec.path.relative_to(root).as_posix(), spec.frames, label)
                for spec, _, s, label in clips if s == split]  # fmt: skip
        atomic_write_text(root / f"{split}.csv", "".join(f"{p} {n} {label}\n" for p, n, label in rows))
        atomic_write_text(root / f"{split}_videomae.csv", "".join(f"{p} {label}\n" for p, _, label in rows))
    names = [kinetics_class_name(i) for i in range(len(KINETICS_CLASSES))]
    atomic_write_text(root / "classes.txt", "".join(f"{name}\n" for name in names))


def _write_ego4d_metadata(cfg: SampleConfig, dest: Path, rows: list[tuple[str, int, Event]]) -> None:
    held_out = len(cfg.durations()) - 1
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
