import pickle

import av
import numpy as np
import pandas as pd

from avtool.prep.sample import EK100_COLUMNS, SampleConfig, _plan_ek100, make_sample
from avtool.prep.synthetic import NOUNS, VERBS
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
    assert p01.bitrate > 100e3  # camera motion and sensor noise keep the bitrate realistic


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


def test_narrations_describe_the_visible_motion(small_sample):
    """Decode the frames at the start and end of each push, lift or lowering and check that the
    named object moved in the named direction (the camera's drift is a few pixels, the push tens)."""
    train = pd.read_csv(small_sample / "ek100/annotations/EPIC_100_train.csv")
    path = small_sample / "ek100/P01/P01_01.MP4"
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    checked = 0
    for row in train.itertuples():
        verb = VERBS[row.verb_class]
        if verb.direction == (0.0, 0.0):
            continue
        rgb = NOUNS[row.noun_class].rgb
        start = _object_centroid(frames[row.start_frame], rgb)
        end = _object_centroid(frames[min(row.stop_frame, len(frames) - 1)], rgb)
        moved = (end - start) @ np.array(verb.direction)
        assert moved > 15, f"{row.narration}: moved {moved:.1f} px along its direction"
        checked += 1
    assert checked >= 1


def test_same_seed_same_data_and_rerun_is_skipped(small_sample, tmp_path):
    cfg = SampleConfig(dest=tmp_path / "again", seed=0, **SMALL_SAMPLE)
    report = make_sample(cfg)
    assert not report.skipped
    for rel in ("ego4d/ego4d_train.pkl", "ek100/annotations/EPIC_100_train.csv"):
        assert (tmp_path / "again" / rel).read_bytes() == (small_sample / rel).read_bytes()
    assert make_sample(cfg).skipped
    other = make_sample(SampleConfig(dest=tmp_path / "other", seed=1, **SMALL_SAMPLE))
    assert (tmp_path / "other/ego4d/ego4d_train.pkl").read_bytes() != (
        small_sample / "ego4d/ego4d_train.pkl"
    ).read_bytes()
    assert not other.skipped


def test_default_sample_holds_out_enough_retrieval_clips(tmp_path):
    """`make demo` evaluates zero-shot MIR on the default sample's held-out participant: it needs ~50
    clips for the before/after numbers to mean something (planning only, nothing is rendered)."""
    cfg = SampleConfig(dest=tmp_path)
    _, rows = _plan_ek100(cfg, tmp_path)
    held_out = [video for video, _, _ in rows if video.split("_")[0] == cfg.ek100_videos[-1][0].split("_")[0]]
    assert len(held_out) >= 50
    assert sum(seconds for _, _, seconds in cfg.ek100_videos) + sum(cfg.ego4d_durations) == 435  # 7.25 min
