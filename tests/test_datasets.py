import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avtool.data import (
    EK100CLS,
    EK100MIR,
    ClipConfig,
    Ego4DConfig,
    Ego4DNarrations,
    EK100CLSConfig,
    EK100MIRConfig,
    KineticsConfig,
    KineticsList,
    LoaderConfig,
    make_loader,
    parse_timestamp,
    set_epoch,
)
from avtool.data.safe_pickle import read_pickle
from avtool.errors import AvtoolError

pytest_plugins = ("tests.clip_fixtures",)

ANN = Path("ek100/annotations")
RET = ANN / "retrieval_annotations"


def ego4d(sample: Path, chunks: Path, metadata: str = "ego4d_train.rephraser.pkl", **clips) -> Ego4DNarrations:
    return Ego4DNarrations(
        Ego4DConfig(sample / "ego4d" / metadata, ClipConfig(chunks / "ego4d/v1/full_scale", **clips))
    )


def mir(sample: Path, chunks: Path, split: str = "train", **clips) -> EK100MIR:
    return EK100MIR(EK100MIRConfig(
        sample / RET / f"EPIC_100_retrieval_{split}.csv",
        sample / RET / f"EPIC_100_retrieval_{split}_sentence.csv",
        sample / RET / "relevancy" / f"caption_relevancy_EPIC_100_retrieval_{split}.pkl",
        ClipConfig(chunks / "ek100", **clips),
    ))  # fmt: skip


def test_ego4d_items_are_seeded_per_epoch_and_index(small_sample, chunked_sample):
    data = ego4d(small_sample, chunked_sample)
    rows = pickle.loads((small_sample / "ego4d/ego4d_train.rephraser.pkl").read_bytes())
    assert len(data) == len(rows) > 3
    item = data[(0, 2)]
    assert item["video"].shape == (4, 224, 224, 3) and item["video"].dtype == torch.uint8
    assert item["text"] in rows[2][3] and item["index"] == 2
    again = data[(0, 2)]
    assert torch.equal(again["video"], item["video"]) and again["text"] == item["text"]
    # Other epochs draw other crops, frames and paraphrases.
    others = [data[(epoch, 2)] for epoch in range(1, 6)]
    assert any(not torch.equal(o["video"], item["video"]) for o in others)
    assert len({o["text"] for o in others} | {item["text"]}) > 1
    assert data[2]["text"] == item["text"]  # a bare index is epoch 0


def test_ego4d_evaluation_is_deterministic_and_uses_plain_narrations(small_sample, chunked_sample):
    data = ego4d(small_sample, chunked_sample, "ego4d_val.pkl", train=False, num_frames=8, size=112)
    rows = pickle.loads((small_sample / "ego4d/ego4d_val.pkl").read_bytes())
    a, b = data[(0, 1)], data[(5, 1)]
    assert a["video"].shape == (8, 112, 112, 3) and a["text"] == rows[1][3]
    assert torch.equal(a["video"], b["video"])  # midpoints and centre crop: no randomness


def test_ek100_mir_draws_positive_sentences(small_sample, chunked_sample):
    data = mir(small_sample, chunked_sample)
    relevancy = pickle.loads(
        (small_sample / RET / "relevancy/caption_relevancy_EPIC_100_retrieval_train.pkl").read_bytes()
    )
    assert data.relevancy.shape == relevancy.shape == (len(data), len(data.sentences))
    for epoch in range(3):
        for i in range(len(data)):
            item = data[(epoch, i)]
            assert item["video"].shape == (4, 224, 224, 3)
            assert item["relevancy"] > 0.1 and data.sentences[item["sentence"]] == item["text"]
            assert item["relevancy"] == pytest.approx(float(relevancy[i, item["sentence"]]))
    test = mir(small_sample, chunked_sample, "test", train=False)
    table = pd.read_csv(small_sample / RET / "EPIC_100_retrieval_test.csv")
    assert [test[i]["text"] for i in range(len(test))] == list(table["narration"])
    assert set(test[0]) == {"video", "text", "clip"}


def test_ek100_cls_actions_over_train_and_val(small_sample, chunked_sample):
    data = EK100CLS(EK100CLSConfig(small_sample / ANN / "EPIC_100_validation.csv",
                                   ClipConfig(chunked_sample / "ek100", num_frames=16, train=False)))  # fmt: skip
    both = pd.concat([pd.read_csv(small_sample / ANN / f"EPIC_100_{s}.csv") for s in ("train", "validation")])
    pairs = sorted({f"{v}:{n}" for v, n in zip(both["verb_class"], both["noun_class"], strict=True)})
    assert data.actions == pairs and data.num_actions == len(pairs)
    table = pd.read_csv(small_sample / ANN / "EPIC_100_validation.csv")
    for i in range(len(data)):
        item = data[i]
        assert item["video"].shape == (16, 224, 224, 3)
        assert (item["verb"], item["noun"]) == (table["verb_class"][i], table["noun_class"][i])
        assert data.actions[item["action"]] == f"{item['verb']}:{item['noun']}"
        assert (data.action_verbs[item["action"]], data.action_nouns[item["action"]]) == (item["verb"], item["noun"])


def test_kinetics_list_over_chunk_folders_and_plain_files(small_sample, chunked_sample, tmp_path):
    (tmp_path / "raw").mkdir()
    shutil.copy(small_sample / "ek100/P02/P02_01.MP4", tmp_path / "raw/clip one.mp4")
    shutil.copytree(chunked_sample / "ek100/P01/P01_01.MP4", tmp_path / "chunked.mp4")
    lines = tmp_path / "train.csv"
    lines.write_text("raw/clip one.mp4 300 3\nchunked.mp4 9999 7\n")
    data = KineticsList(KineticsConfig(lines, ClipConfig(tmp_path, num_frames=16, size=64), stride=4))
    assert len(data) == 2
    first, second = data[0], data[1]
    assert (first["label"], second["label"]) == (3, 7)
    assert first["video"].shape == second["video"].shape == (16, 64, 64, 3)
    segments = KineticsList(KineticsConfig(lines, ClipConfig(tmp_path, num_frames=4, train=False)))
    assert segments[1]["video"].shape == (4, 224, 224, 3)  # 9999 in the list, 480 frames in fact: clamped
    lines.write_text("raw/clip one.mp4 300 3\n../raw/clip one.mp4 300 3\n/etc/passwd 300 1\n")
    with pytest.raises(AvtoolError, match=r"2 problem\(s\): line 2: video ../raw/clip one.mp4: leaves the chunk root"):
        KineticsList(KineticsConfig(lines, ClipConfig(tmp_path, num_frames=16, size=64)))


def test_kinetics_views_share_one_clip_and_test_views_cover_clips_and_crops(chunked_sample, tmp_path):
    from avtool.video.crops import CropPolicy

    shutil.copytree(chunked_sample / "ek100/P01/P01_01.MP4", tmp_path / "chunked.mp4")
    (tmp_path / "list.csv").write_text("chunked.mp4 0 5\n")
    policy = CropPolicy(kind="multi-scale", flip=0.5, output_size=48)

    def dataset(train: bool = True, **config: int) -> KineticsList:
        clips = ClipConfig(tmp_path, num_frames=4, size=48, train=train, crop=policy)
        return KineticsList(KineticsConfig(tmp_path / "list.csv", clips, stride=4, jitter=True, **config))

    # Repeated sampling: N crops of the same frames, drawn from the sample's seed (the same on every call).
    views = dataset(views=3)[(2, 0)]["video"]
    assert views.shape == (3, 4, 48, 48, 3)
    assert torch.equal(views, dataset(views=3)[(2, 0)]["video"])
    assert len({v.numpy().tobytes() for v in views}) > 1  # independent crops
    # The first view is the single-view sample: the same frame ids and the first crop drawn after them.
    assert torch.equal(views[0], dataset()[(2, 0)]["video"])
    # 5 temporal clips x 3 spatial crops, clip-major; the middle clip's centre crop is the one-view test sample.
    test = dataset(False, temporal_clips=5, spatial_crops=3)[0]["video"]
    assert test.shape == (15, 4, 48, 48, 3)
    odd = 5  # even clip counts have no middle clip; 5 does
    assert torch.equal(test[(odd // 2) * 3 + 1], dataset(False)[0]["video"])
    assert len({v.numpy().tobytes() for v in test}) == 15
    with pytest.raises(AvtoolError, match="must be at least 1"):
        dataset(views=0)


def test_bad_ek100_metadata_lists_every_problem(small_sample, chunked_sample, tmp_path):
    table = pd.read_csv(small_sample / ANN / "EPIC_100_validation.csv", dtype=str)
    table.loc[0, "start_timestamp"] = "00:0x:01"
    table.loc[1, "stop_timestamp"] = "00:09:00.00"  # past the end of a 10-s video
    extra = table.iloc[[0]].copy()
    extra["video_id"], extra["participant_id"], extra["start_timestamp"] = "P09_99", "P09", "00:00:01.00"
    pd.concat([table, extra]).to_csv(tmp_path / "EPIC_100_validation.csv", index=False)
    for name in ("EPIC_100_train.csv",):
        shutil.copy(small_sample / ANN / name, tmp_path / name)
    config = EK100CLSConfig(tmp_path / "EPIC_100_validation.csv", ClipConfig(chunked_sample / "ek100"))
    with pytest.raises(AvtoolError) as error:
        EK100CLS(config)
    message = str(error.value)
    assert "\n" not in message and "3 problem(s)" in message
    assert "row 2 (P02_01_0): unparsable timestamp '00:0x:01'" in message
    assert "is outside video P02/P02_01.MP4 (10.00 s)" in message
    assert "video P09/P09_99.MP4" in message and "not found" in message
    table.drop(columns=["narration"]).to_csv(tmp_path / "no_narration.csv", index=False)
    with pytest.raises(AvtoolError, match="no_narration.csv: missing column.s. narration"):
        EK100CLS(EK100CLSConfig(tmp_path / "no_narration.csv", ClipConfig(chunked_sample / "ek100")))


def test_mismatched_relevancy_matrix_is_refused(small_sample, chunked_sample, tmp_path):
    wrong = tmp_path / "relevancy.pkl"
    wrong.write_bytes(pickle.dumps(np.zeros((1, 1), dtype=np.float32)))
    config = EK100MIRConfig(
        small_sample / RET / "EPIC_100_retrieval_train.csv",
        small_sample / RET / "EPIC_100_retrieval_train_sentence.csv",
        wrong,
        ClipConfig(chunked_sample / "ek100"),
    )
    with pytest.raises(AvtoolError, match=r"relevancy matrix .* is 1×1, expected \d+ clips × \d+ sentences"):
        EK100MIR(config)


def test_bad_ego4d_rows_are_listed(chunked_sample, tmp_path):
    uid = next(p.name[:-4] for p in (chunked_sample / "ego4d/v1/full_scale").iterdir())
    rows = [(uid, 1.0, 2.0, "ok"), (uid, "x", 2.0, "bad start"), (uid, 3.0, 2.0, "reversed"), (uid, 1.0),
            ("missing-uid", 1.0, 2.0, "no video"), (uid, 100.0, 101.0, "too late")]  # fmt: skip
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(rows))
    config = Ego4DConfig(tmp_path / "bad.pkl", ClipConfig(chunked_sample / "ego4d/v1/full_scale"))
    with pytest.raises(AvtoolError, match=r"bad.pkl: 1 problem\(s\): row 3: expected \(video_uid"):
        Ego4DNarrations(config)
    del rows[3]
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(rows))
    with pytest.raises(AvtoolError) as error:
        Ego4DNarrations(config)
    message = str(error.value)
    assert "4 problem(s)" in message and "video missing-uid.mp4" in message
    assert "non-numeric time" in message and "bad interval [3, 2]" in message and "[100, 101] s is outside" in message
    (tmp_path / "not.pkl").write_bytes(b"not a pickle")
    with pytest.raises(AvtoolError, match="not.pkl: not a readable pickle"):
        Ego4DNarrations(Ego4DConfig(tmp_path / "not.pkl", config.clips))


class _RunsACommand:
    """A pickled object whose unpickling would run a shell command (the classic pickle payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_planted_pickles_run_nothing_and_are_refused_by_name(chunked_sample, tmp_path):
    uid = next(p.name[:-4] for p in (chunked_sample / "ego4d/v1/full_scale").iterdir())
    marker = tmp_path / "ran"
    clips = ClipConfig(chunked_sample / "ego4d/v1/full_scale")
    planted = {
        "row.pkl": [(uid, 1.0, 2.0, "ok"), (uid, 1.0, 2.0, _RunsACommand(marker))],
        "whole.pkl": _RunsACommand(marker),
        "eval.pkl": [(uid, 1.0, 2.0, "ok")] + [type("E", (), {"__reduce__": lambda self: (eval, ("1",))})()],
    }
    for name, payload in planted.items():
        (tmp_path / name).write_bytes(pickle.dumps(payload))
        with pytest.raises(AvtoolError, match=rf"{name}: refused to load this metadata pickle: it names "
                           r"(posix|nt|os)\.system|builtins\.eval") as error:  # fmt: skip
            Ego4DNarrations(Ego4DConfig(tmp_path / name, clips))
        assert "nothing in it was run" in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()
    relevancy = tmp_path / "relevancy.pkl"
    relevancy.write_bytes(pickle.dumps(np.array([_RunsACommand(marker)], dtype=object)))
    with pytest.raises(AvtoolError, match="relevancy.pkl: refused to load this relevancy pickle"):
        read_pickle(relevancy, "relevancy")
    assert not marker.exists()
    # What the formats hold still loads: rows of plain values and NumPy arrays of numbers (any protocol).
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        relevancy.write_bytes(pickle.dumps({"m": matrix, "rows": [(uid, 1.0, 2, None)]}, protocol=protocol))
        loaded = read_pickle(relevancy, "relevancy")
        np.testing.assert_array_equal(loaded["m"], matrix)
        assert loaded["rows"] == [(uid, 1.0, 2, None)]


def test_video_names_that_leave_the_root_are_listed_before_the_run(chunked_sample, tmp_path):
    root = chunked_sample / "ego4d/v1/full_scale"
    uid = next(p.name[:-4] for p in root.iterdir())
    outside = tmp_path / "elsewhere"
    shutil.copytree(root / f"{uid}.mp4", outside / f"{uid}.mp4")  # real chunks, outside the root
    rows = [(uid, 1.0, 2.0, "ok"), (str(outside / uid), 1.0, 2.0, "absolute"),
            (f"../../{outside.name}/{uid}", 1.0, 2.0, "climbs"), ("/etc/passwd", 1.0, 2.0, "system file")]  # fmt: skip
    (tmp_path / "paths.pkl").write_bytes(pickle.dumps(rows))
    with pytest.raises(AvtoolError) as error:
        Ego4DNarrations(Ego4DConfig(tmp_path / "paths.pkl", ClipConfig(root)))
    message = str(error.value)
    assert "3 problem(s)" in message, message
    assert message.count("an absolute path (video names are relative to the chunk root)") == 2
    assert "leaves the chunk root (..)" in message


def test_a_chunk_deleted_after_loading_fails_with_its_name(small_sample, chunked_sample, tmp_path):
    shutil.copytree(chunked_sample / "ek100", tmp_path / "ek100")
    shutil.copytree(chunked_sample / ".avtool", tmp_path / ".avtool")
    shutil.copy(chunked_sample / "manifest.csv", tmp_path / "manifest.csv")
    data = mir(small_sample, tmp_path)
    (tmp_path / "ek100/P01/P01_01.MP4/0.MP4").unlink()
    with pytest.raises(AvtoolError, match=r"ek100/P01/P01_01.MP4/0.MP4: chunk file missing"):
        data[0]


def test_timestamps():
    assert parse_timestamp("00:00:01.89") == pytest.approx(1.89)
    assert parse_timestamp("01:02:03.5") == pytest.approx(3723.5)
    assert np.isnan(parse_timestamp("1.89")) and np.isnan(parse_timestamp("00:00:xx"))


def test_loader_batches_shuffles_per_epoch_and_reproduces(small_sample, chunked_sample):
    data = ego4d(small_sample, chunked_sample, size=64)
    config = LoaderConfig(batch_size=2, workers=2, timeout=60, prefetch_factor=1, seed=3)
    loader = make_loader(data, config, rank=0, world_size=1)
    assert loader.timeout == 60 and loader.persistent_workers and loader.sampler.seed == 3

    def epoch(e: int) -> tuple[list[int], torch.Tensor]:
        set_epoch(loader, e)
        batches = list(loader)
        assert all(b["video"].shape == (2, 4, 64, 64, 3) and len(b["text"]) == 2 for b in batches)
        return [i for b in batches for i in b["index"].tolist()], torch.cat([b["video"] for b in batches])

    order0, video0 = epoch(0)
    order1, _ = epoch(1)
    again, video_again = epoch(0)
    assert len(order0) == len(data) // 2 * 2 and order0 != order1
    assert order0 == again and torch.equal(video0, video_again)  # same epoch, same clips, any worker
    # Two ranks split one epoch into disjoint halves (drop_last) that cover it (padding repeats a clip).
    for drop_last in (True, False):
        halves = [{i for _, i in make_loader(data, LoaderConfig(workers=0, drop_last=drop_last), r, 2).sampler}
                  for r in range(2)]  # fmt: skip
        assert (not halves[0] & halves[1]) if drop_last else (halves[0] | halves[1] == set(range(len(data))))
    with pytest.raises(AvtoolError, match="batch_size >= 1"):
        LoaderConfig(batch_size=0)


def test_truncated_or_missing_chunks_are_listed_before_the_run(small_sample, chunked_sample, tmp_path):
    shutil.copytree(chunked_sample / "ek100", tmp_path / "ek100")
    shutil.copytree(chunked_sample / ".avtool", tmp_path / ".avtool")
    shutil.copy(chunked_sample / "manifest.csv", tmp_path / "manifest.csv")
    chunk = tmp_path / "ek100/P01/P01_01.MP4/5.MP4"
    chunk.write_bytes(chunk.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(AvtoolError, match=r"P01_01.MP4/5.MP4: 1000 bytes, the manifest records \d+ \(truncated"):
        mir(small_sample, tmp_path)
    chunk.unlink()
    with pytest.raises(AvtoolError, match=r"P01_01.MP4/5.MP4: chunk file missing \(listed in the manifest\)"):
        mir(small_sample, tmp_path)


def test_list_labels_read_either_format_without_the_videos(tmp_path):
    from avtool.data.kinetics import list_labels

    (tmp_path / "a.csv").write_text("x/a clip.mp4 300 4\ny.mp4 2\n\n")
    assert list_labels(tmp_path / "a.csv").tolist() == [4, 2]
    (tmp_path / "b.csv").write_text("x.mp4 3\nno label here\n")
    with pytest.raises(AvtoolError, match="line 2: expected"):
        list_labels(tmp_path / "b.csv")
