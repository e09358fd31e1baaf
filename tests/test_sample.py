import json
import math
import pickle
import time

import av
import numpy as np
import pandas as pd
from typer.testing import CliRunner

from avtool.cli import app
from avtool.prep.chunk import ChunkConfig, plan_chunking, run_chunking
from avtool.prep.sample import (
    EK100_COLUMNS,
    FORMAT,
    SampleConfig,
    _fingerprint,
    _plan_ego4d,
    _plan_ek100,
    make_sample,
    render_videos,
)
from avtool.prep.synthetic import (
    NOUNS,
    VERBS,
    VideoSpec,
    plan_footage,
    plan_script,
    render_frames,
    render_video,
    segments,
)
from avtool.video.probe import probe_video
from tests.conftest import SMALL_SAMPLE


def test_layout_and_video_properties(small_sample):
    ego = sorted((small_sample / "ego4d/v1/full_scale").glob("*.mp4"))
    assert len(ego) == 2
    infos = [probe_video(p) for p in ego]
    assert {(i.width, i.height) for i in infos} == {(640, 360), (480, 360)}  # 16:9 and 4:3
    assert all(i.fps == 30 for i in infos)
    assert sorted(round(i.duration) for i in infos) == [12, 20]
    p01 = probe_video(small_sample / "ek100/P01/P01_01.MP4")
    assert p01.fps == 60 and round(p01.duration) == 8
    assert p01.bitrate > 1e6  # raw camera files: texture, noise and motion at crf 23


def test_ego4d_narrations_use_lavila_pickle_format(small_sample):
    train = pickle.loads((small_sample / "ego4d/ego4d_train.pkl").read_bytes())
    val = pickle.loads((small_sample / "ego4d/ego4d_val.pkl").read_bytes())
    uids = {p.stem for p in (small_sample / "ego4d/v1/full_scale").glob("*.mp4")}
    assert train and val
    assert {r[0] for r in train} | {r[0] for r in val} == uids
    assert not {r[0] for r in train} & {r[0] for r in val}  # held-out video
    for uid, start, end, text in train:
        assert isinstance(uid, str) and 0 <= start < end and text.startswith("#C C ")
    rephrased = pickle.loads((small_sample / "ego4d/ego4d_train.rephraser.pkl").read_bytes())
    assert len(rephrased) == len(train)
    assert all(isinstance(r[3], list) and len(r[3]) > 1 for r in rephrased)


def test_ek100_csvs_follow_the_epic_schema(small_sample):
    ann = small_sample / "ek100/annotations"
    train = pd.read_csv(ann / "EPIC_100_train.csv")
    val = pd.read_csv(ann / "EPIC_100_validation.csv")
    assert list(train.columns) == EK100_COLUMNS
    assert set(train.video_id) == {"P01_01"} and set(val.video_id) == {"P02_01"}
    row = train.iloc[0]
    assert row.start_timestamp.count(":") == 2 and row.all_nouns.startswith("['")
    assert row.verb == VERBS[row.verb_class].name and row.noun == NOUNS[row.noun_class].name
    # Frames are counted at the video's real 60 fps, not an assumed 30.
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(row.start_timestamp.split(":"))))
    assert abs(row.start_frame - seconds * 60) <= 2
    retrieval = ann / "retrieval_annotations"
    test = pd.read_csv(retrieval / "EPIC_100_retrieval_test.csv")
    sentences = pd.read_csv(retrieval / "EPIC_100_retrieval_test_sentence.csv")
    assert list(sentences.columns) == ["narration_id", "narration"]
    assert sentences.narration.is_unique
    relevancy = pickle.loads((retrieval / "relevancy/caption_relevancy_EPIC_100_retrieval_test.pkl").read_bytes())
    assert relevancy.shape == (len(test), len(sentences))
    # Each clip is fully relevant to its own sentence; relevancy is in [0, 1].
    own = [sentences.narration.tolist().index(n) for n in test.narration]
    assert np.allclose(relevancy[np.arange(len(test)), own], 1.0)
    assert relevancy.min() >= 0 and relevancy.max() <= 1


def _object_centroid(frame: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    distance = np.abs(frame.astype(int) - np.array(rgb)).sum(-1)
    ys, xs = np.nonzero(distance < 60)
    return np.array([xs.mean(), ys.mean()])


def _actions(sample):
    """(video, first frame, last frame, verb id, noun id) of every narrated action, EK-100's and Ego4D's."""
    ann = sample / "ek100/annotations"
    for name in ("EPIC_100_train.csv", "EPIC_100_validation.csv"):
        for row in pd.read_csv(ann / name).itertuples():
            path = sample / "ek100" / row.participant_id / f"{row.video_id}.MP4"
            yield path, row.start_frame, row.stop_frame, row.verb_class, row.noun_class
    texts = {f"#C C {v.phrase.format(obj=n.phrase)}": (i, j) for i, v in enumerate(VERBS) for j, n in enumerate(NOUNS)}
    for name in ("ego4d_train.pkl", "ego4d_val.pkl"):
        for uid, start, end, text in pickle.loads((sample / "ego4d" / name).read_bytes()):
            path = sample / "ego4d/v1/full_scale" / f"{uid}.mp4"
            yield path, round(start * 30), round(end * 30), *texts[text]


def test_narrations_describe_the_visible_motion(small_sample):
    """Decode the frames at the start and end of each push, lift or lowering and check that the
    named object moved in the named direction (the head's drift over an event is tens of pixels at
    most, the push a hundred or more; hands pass under the objects)."""
    decoded = {}
    checked = 0
    for path, first, last, verb_id, noun_id in _actions(small_sample):
        verb = VERBS[verb_id]
        if verb.direction == (0.0, 0.0):
            continue
        if path not in decoded:
            with av.open(str(path)) as c:
                decoded[path] = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        frames = decoded[path]
        start = _object_centroid(frames[first], NOUNS[noun_id].rgb)
        end = _object_centroid(frames[min(last, len(frames) - 1)], NOUNS[noun_id].rgb)
        moved = (end - start) @ np.array(verb.direction)
        assert moved > 15, f"{path.name} {verb.name} {NOUNS[noun_id].name}: moved {moved:.1f} px along its direction"
        checked += 1
    assert checked >= 3


def test_same_seed_same_data_and_rerun_is_skipped(small_sample, tmp_path):
    cfg = SampleConfig(dest=tmp_path / "again", seed=0, **SMALL_SAMPLE)
    report = make_sample(cfg)
    assert not report.skipped
    # Byte for byte, videos included.
    files = sorted(p.relative_to(small_sample) for p in small_sample.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix in (".mp4", ".MP4")]) == 4
    for rel in files:
        if rel.name != "avtool_sample.json":  # it also records the trial encode's measurement
            assert (tmp_path / "again" / rel).read_bytes() == (small_sample / rel).read_bytes(), rel
    assert json.loads((tmp_path / "again/avtool_sample.json").read_text())["format"] == FORMAT
    assert make_sample(cfg).skipped
    # Another seed, another sample (planned only: rendering it would show nothing more).
    other = SampleConfig(dest=tmp_path / "again", seed=1, **SMALL_SAMPLE)
    assert _fingerprint(other) != _fingerprint(cfg)
    assert _plan_ego4d(other, other.dest)[1] != _plan_ego4d(cfg, cfg.dest)[1]


def _mean_chunk_bitrates(src, dst) -> dict[tuple[int, int, float], float]:
    """Chunk with `avtool chunk`'s defaults (15 s, 288p, crf 23, medium, 1-s keyframes): mean over the
    chunks of 8·bytes/duration, per (width, height, fps) of the chunks."""
    report = run_chunking(plan_chunking(ChunkConfig(src=src, dst=dst, workers=2)))
    assert report.ok, report.failures
    manifest = pd.read_csv(dst / "manifest.csv")
    manifest["rate"] = 8 * manifest.bytes / manifest.duration
    return manifest.groupby(["width", "height", "fps"]).rate.mean().to_dict()


def test_chunks_cost_what_real_footage_costs(small_sample, tmp_path):
    """The paper's ρ for Ego4D at 288p is 1 Mb/s: chunks of every kind of sample video (16:9 and 4:3 at
    30 fps, EK-100 at 60, 50 and 30 fps) come to 0.8-1.3 Mb/s, and the sample's own trial figure says so."""
    extra = tmp_path / "extra" / "P01_02.MP4"  # the default sample's 50-fps video, 10 s of it
    spec = VideoSpec(extra, 640, 360, 50, 10.0, seed=3)
    render_video(spec, plan_script(spec, [0, 2, 4, 5], np.random.default_rng(3)))
    rates = _mean_chunk_bitrates(small_sample, tmp_path / "chunks")
    rates.update(_mean_chunk_bitrates(extra.parent, tmp_path / "chunks50"))
    assert set(rates) == {(512, 288, 30.0), (384, 288, 30.0), (512, 288, 60.0), (512, 288, 50.0)}
    for kind, rate in rates.items():
        assert 0.8e6 <= rate <= 1.3e6, f"{kind}: {rate / 1e6:.2f} Mb/s"
    report = make_sample(SampleConfig(dest=small_sample, seed=0, **SMALL_SAMPLE))
    assert report.skipped and set(report.bitrates) == {"640x360@30", "480x360@30", "640x360@60"}
    assert 0.8e6 <= report.chunk_bitrate <= 1.3e6 and report.trial_seconds > 0
    chunked = np.mean([rates[k] for k in ((512, 288, 30.0), (384, 288, 30.0), (512, 288, 60.0))])
    assert abs(report.chunk_bitrate / chunked - 1) < 0.15


def test_sample_summary_prints_the_chunk_bitrate(small_sample, tmp_path):
    config = tmp_path / "small.json"
    config.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_SAMPLE.items()}))
    result = CliRunner().invoke(app, ["sample", str(small_sample), "--config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "sample already present: 4 videos" in result.output
    assert "288p chunks at crf 23, medium: ~" in result.output and "Mb/s (trial encode of" in result.output


def test_segments_render_the_same_frames_and_join_into_one_video(tmp_path):
    """Long videos are rendered in pieces on several cores: a piece's frames are the whole video's,
    the joined file holds every frame in order, and the bytes do not depend on the process count."""
    spec = VideoSpec(tmp_path / "a" / "v.mp4", 320, 180, 30, 4.0, seed=5)
    script = plan_script(spec, [0, 1, 2, 3], np.random.default_rng(5))
    whole = [f.copy() for f in render_frames(spec, plan_footage(spec, script), 40, 44)]
    piece = [f.copy() for f in render_frames(spec, plan_footage(spec, script), 42, 44)]
    assert all((a == b).all() for a, b in zip(whole[2:], piece, strict=True))

    render_videos([(spec, script)], workers=2, segment_seconds=1.5)  # 3 pieces
    assert sorted(p.name for p in spec.path.parent.iterdir()) == ["v.mp4"]  # pieces removed once joined
    again = VideoSpec(tmp_path / "b" / "v.mp4", 320, 180, 30, 4.0, seed=5)
    render_videos([(again, script)], workers=1, segment_seconds=1.5)
    assert again.path.read_bytes() == spec.path.read_bytes()
    info = probe_video(spec.path)
    assert info.fps == 30 and abs(info.duration - 4.0) < 1e-6

    def decode(path):
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    # The joined file decodes to the pieces' frames, in order: joining copies packets, it does not re-encode.
    pieces = []
    for k, frames in enumerate(segments(spec, 1.5)):
        render_video(spec, script, frames, tmp_path / f"piece{k}.mp4")
        pieces += decode(tmp_path / f"piece{k}.mp4")
    joined = decode(spec.path)
    assert len(joined) == len(pieces) == 120
    assert all((a == b).all() for a, b in zip(joined, pieces, strict=True))


def test_bench_preset_has_long_videos_and_ego4d_dense_narrations(tmp_path):
    """Planning only: the bench preset's sizes, 300-s chunks in every video, and narrations as dense as
    Ego4D's with LaViLa-length windows, enough for 20 steps of 256 per epoch."""
    cfg = SampleConfig(dest=tmp_path, preset="bench")
    assert cfg.durations() == (900.0,) * 16
    assert SampleConfig(dest=tmp_path, preset="bench", videos=2, minutes=10).durations() == (600.0, 600.0)
    assert SampleConfig(dest=tmp_path, videos=4).durations() == (60.0, 75.0, 90.0, 60.0)
    assert SampleConfig(dest=tmp_path).durations() == (60.0, 75.0, 90.0)
    assert all(math.floor(d / 300) >= 2 for d in cfg.durations())
    start = time.perf_counter()
    jobs, rows = _plan_ego4d(cfg, tmp_path)
    assert time.perf_counter() - start < 10
    held_out = len(jobs) - 1
    assert sum(1 for _, i, _ in rows if i != held_out) >= 20 * 256
    for i, (spec, script) in enumerate(jobs):
        events = script.events
        lengths = np.array([e.end - e.start for e in events])
        assert lengths.min() >= 1.0 - 1e-6 and lengths.max() <= 3.0 + 1e-6
        assert 2.0 <= spec.duration / len(events) <= 4.0, (
            f"video {i}: one narration per {spec.duration / len(events):.1f} s"
        )
        assert events[-1].end <= spec.duration
    assert {(s.width, s.height) for s, _ in jobs} == {(640, 360), (480, 360)}
    result = CliRunner().invoke(
        app, ["sample", str(tmp_path), "--preset", "bench", "--videos", "2", "--minutes", "10", "--print-config"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert (printed["preset"], printed["videos"], printed["minutes"]) == ("bench", 2, 10.0)


def test_default_sample_holds_out_enough_retrieval_clips(tmp_path):
    """`make demo` evaluates zero-shot MIR on the default sample's held-out participant: it needs ~50
    clips for the before/after numbers to mean something (planning only, nothing is rendered)."""
    cfg = SampleConfig(dest=tmp_path)
    _, rows = _plan_ek100(cfg, tmp_path)
    held_out = [video for video, _, _ in rows if video.split("_")[0] == cfg.ek100_videos[-1][0].split("_")[0]]
    assert len(held_out) >= 50
    assert sum(seconds for _, _, seconds in cfg.ek100_videos) + sum(cfg.durations()) == 435  # 7.25 min


def test_kinetics_layout_has_one_action_per_clip_and_both_list_formats(tmp_path):
    from avtool.data import ClipConfig, KineticsConfig, KineticsList
    from avtool.prep.sample import KINETICS_CLASSES, SampleConfig, kinetics_class_name, make_sample

    cfg = SampleConfig(dest=tmp_path / "s", ego4d_durations=(4.0,), ek100_videos=(("P01_01", 30, 3.0),),
                       kinetics_clips=1, kinetics_seconds=3.0, workers=2)  # fmt: skip
    make_sample(cfg)
    root = tmp_path / "s" / "kinetics"
    classes = (root / "classes.txt").read_text().split()
    assert classes[:3] == ["push_left_red_ball", "push_right_blue_box", "lift_green_cone"]
    assert len(classes) == len(set(classes)) == len(KINETICS_CLASSES)
    train = (root / "train.csv").read_text().splitlines()
    val = (root / "val_videomae.csv").read_text().splitlines()
    assert len(train) == len(val) == len(classes)  # one clip per class each, the last held out
    path, frames, label = train[2].split()
    assert path.startswith(f"train/{kinetics_class_name(int(label))}/") and int(frames) == 90
    info = probe_video(root / path)
    assert (info.width, info.height, info.fps) == (568, 320, 30.0)
    # Every clip shows its own class's action on its class's object and nothing else (the events of its
    # script), with one other object on the table.
    from avtool.prep.sample import _plan_kinetics

    for _, script, _, label in _plan_kinetics(cfg, tmp_path / "s"):
        assert script.events and {(e.verb, e.noun) for e in script.events} == {KINETICS_CLASSES[label]}
        assert len(script.objects) == 2 and KINETICS_CLASSES[label][1] in script.objects
    # avtool reads both formats: AVION's (path num_frames label) and VideoMAE's (path label).
    for name in ("train.csv", "val_videomae.csv"):
        data = KineticsList(KineticsConfig(root / name, ClipConfig(root, num_frames=4, size=32), stride=4, jitter=True))
        item = data[0]
        assert item["video"].shape == (4, 32, 32, 3) and 0 <= item["label"] < len(classes)
