import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from avtool.errors import AvtoolError
from avtool.prep.chunk import ChunkConfig, plan_chunking, run_chunking
from avtool.prep.encode import EncodeSettings
from avtool.video.clips import (
    ChunkedVideo,
    ChunkIndex,
    ChunkRead,
    plan_clip,
    plan_frames,
    segment_frame_ids,
    stride_frame_ids,
)
from avtool.video.crops import Crop
from avtool.video.decode import DecoderConfig, make_decoder, read_clip
from avtool.video.decode.resize import crop_resize
from tests.conftest import make_video

pytest_plugins = ("tests.clip_fixtures",)

EK_60FPS = "ek100/P01/P01_01.MP4"


def all_frames(video: ChunkedVideo) -> list[np.ndarray]:
    """Ground truth: every frame of every chunk, decoded in order from each chunk's start."""
    frames = []
    for path in video.paths:
        with av.open(str(path)) as container:
            frames += [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames


def ego_key(index: ChunkIndex, seconds: int) -> str:
    return next(k for k in index.keys() if k.startswith("ego4d") and round(index.get(k).duration) == seconds)


def test_segment_midpoints_jitter_and_bounds():
    assert segment_frame_ids(0, 40, 4) == [5, 15, 25, 35]
    assert segment_frame_ids(100, 104, 8) == [100, 100, 101, 101, 102, 102, 103, 103]  # short clip: repeats
    assert segment_frame_ids(7, 7, 3) == [7, 7, 7]  # empty range still yields a frame
    draws = np.array([segment_frame_ids(0, 40, 4, np.random.default_rng(s)) for s in range(400)])
    # Jitter stays inside each frame's own segment and reaches both of its halves.
    for i in range(4):
        assert draws[:, i].min() == 10 * i and draws[:, i].max() == 10 * i + 9
    assert segment_frame_ids(0, 40, 4, np.random.default_rng(3)) == segment_frame_ids(
        0, 40, 4, np.random.default_rng(3)
    )
    with pytest.raises(AvtoolError, match="at least one frame"):
        segment_frame_ids(0, 10, 0)


def test_stride_sampling():
    assert stride_frame_ids(100, 4, 4) == [43, 47, 51, 55]  # centred in evaluation
    assert stride_frame_ids(10, 4, 4) == [0, 4, 8, 9]  # too short: the last frame repeats
    starts = {stride_frame_ids(100, 4, 4, np.random.default_rng(s))[0] for s in range(200)}
    assert min(starts) >= 0 and max(starts) <= 87 and len(starts) > 40


def test_index_from_manifest_and_from_chunk_headers_agree(chunked_sample, tmp_path):
    index = ChunkIndex(chunked_sample)
    assert index.manifest_path == chunked_sample / "manifest.csv"
    assert len(index.keys()) == 4 and EK_60FPS in index.keys()
    key = ego_key(index, 20)
    shutil.copytree(chunked_sample / key, tmp_path / "copy.mp4")
    scanned = ChunkIndex(tmp_path)  # no manifest here: headers are read
    assert scanned.manifest_path is None and scanned.keys() == ["copy.mp4"]
    a, b = index.get(key), scanned.get("copy.mp4")
    assert (a.starts, a.frames, a.fps, a.width, a.height) == (b.starts, b.frames, b.fps, b.width, b.height)
    assert a.starts == (0, 5, 10, 15) and a.frames == (150,) * 4 and a.duration == 20


def test_manifest_of_a_parent_folder_is_used_for_a_dataset_subfolder(chunked_sample):
    index = ChunkIndex(chunked_sample / "ek100")
    assert index.manifest_path == chunked_sample / "manifest.csv"
    video = index.get("P01/P01_01.MP4")
    assert video.fps == (60.0, 60.0) and video.frames == (300, 180)


def test_ntsc_rate_chunk_boundaries_from_headers_match_the_chunker(tmp_path):
    make_video(tmp_path / "src" / "ntsc.mp4", 11, fps="30000/1001", size="160x120")
    dst = tmp_path / "dst"
    encode = EncodeSettings(chunk_len=5, preset="ultrafast")
    assert run_chunking(plan_chunking(ChunkConfig(src=tmp_path / "src", dst=dst, encode=encode))).ok
    from_manifest = ChunkIndex(dst).get("ntsc.mp4")
    (dst / "manifest.csv").unlink()
    from_headers = ChunkIndex(dst).get("ntsc.mp4")
    # 5 s at 29.97 fps is 149.85 frames: the chunker puts 150, 150 and the rest in the chunks.
    assert from_headers.frames == from_manifest.frames == (150, 150, 30)
    assert from_headers.frame_at(5.0) == 150 and from_headers.frame_at(4.99) == 149


def test_clip_across_a_chunk_boundary_maps_to_both_chunks(chunked_sample):
    index = ChunkIndex(chunked_sample)
    video = index.get(ego_key(index, 20))
    plan = plan_clip(video, 4.5, 5.5, 8)  # 30 fps: frames 135..164
    assert plan.frame_ids == (136, 140, 144, 148, 151, 155, 159, 163)
    assert [r.source.name for r in plan.reads] == ["0.mp4", "5.mp4"]
    assert plan.reads[0].frame_ids == (136, 140, 144, 148) and plan.reads[1].frame_ids == (1, 5, 9, 13)
    # int(t0)//L*L … int(t1)//L*L: a clip inside one chunk reads only that chunk.
    assert [r.source.name for r in plan_clip(video, 10.2, 14.9, 4).reads] == ["10.mp4"]
    # Decoded frames are the frames at those global positions, with one crop for all of them.
    truth = np.stack(all_frames(video))
    crop = Crop(40, 20, 300, 250)
    clip = read_clip(make_decoder(DecoderConfig(mode="decode-then-crop")), plan, crop, 112)
    assert clip.shape == (8, 112, 112, 3)
    np.testing.assert_array_equal(clip.numpy(), crop_resize(truth[list(plan.frame_ids)], crop, 112))


def test_each_chunk_uses_its_own_frame_rate(chunked_sample):
    index = ChunkIndex(chunked_sample)
    fast = index.get(EK_60FPS)
    assert fast.frame_at(1.0) == 60 and fast.frame_at(5.0) == 300 and fast.frame_end(5.0) == 300
    plan = plan_clip(fast, 4.9, 5.1, 4)  # 60 fps: frames 294..305
    assert plan.frame_ids == (295, 298, 301, 304)
    assert [r.frame_ids for r in plan.reads] == [(295, 298), (1, 4)]
    assert all(r.fps == 60 for r in plan.reads)
    slow = index.get("ek100/P02/P02_01.MP4")
    assert slow.fps[0] == 30 and plan_clip(slow, 4.9, 5.1, 4).frame_ids == (147, 149, 150, 152)


def test_clip_end_past_the_video_is_clamped_and_frames_outside_are_refused(chunked_sample):
    video = ChunkIndex(chunked_sample).get(EK_60FPS)  # 8 s
    assert plan_clip(video, 7.5, 9.0, 4).frame_ids == (453, 461, 468, 476)  # ends at frame 479
    with pytest.raises(AvtoolError, match="frame 480 is outside the video"):
        plan_frames(video, [0, 480])


def test_missing_chunk_is_named(chunked_sample, tmp_path):
    index = ChunkIndex(chunked_sample)
    key = ego_key(index, 20)
    shutil.copytree(chunked_sample / key, tmp_path / "v.mp4")
    (tmp_path / "v.mp4" / "10.mp4").unlink()
    with pytest.raises(AvtoolError, match=r"v.mp4: chunk\(s\) missing: 10.mp4"):
        ChunkIndex(tmp_path).get("v.mp4")
    with pytest.raises(AvtoolError, match="nope.mp4: video not found"):
        ChunkIndex(tmp_path).get("nope.mp4")
    # Listed in the manifest but gone from disk: the decoder names the file instead of hanging.
    video = index.get(key)
    read = ChunkRead(tmp_path / "gone" / "5.mp4", (0, 3), 30.0, video.width, video.height)
    for backend in ("pyav", "decord"):
        with pytest.raises(AvtoolError, match=r"gone/5.mp4: chunk file missing"):
            make_decoder(DecoderConfig(backend=backend)).decode(read, Crop(0, 0, 64, 64), 32)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_chunk_raises_instead_of_returning_other_frames(chunked_sample, tmp_path, damage):
    index = ChunkIndex(chunked_sample)
    video = index.get(ego_key(index, 20))
    data = video.paths[1].read_bytes()
    bad = tmp_path / "5.mp4"
    bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\x00garbage" * 500)
    read = ChunkRead(bad, (10, 140), 30.0, video.width, video.height)
    for access in ("seek", "sequential"):
        with pytest.raises(AvtoolError, match=r"5.mp4: "):
            make_decoder(DecoderConfig(access=access)).decode(read, Crop(0, 0, 64, 64), 32)


def test_plain_video_file_is_one_chunk(tmp_path):
    make_video(tmp_path / "k400" / "abc.mp4", 2, fps=25, size="96x64")
    video = ChunkIndex(tmp_path).get("k400/abc.mp4")
    assert video.paths == (tmp_path / "k400" / "abc.mp4",) and video.frames == (50,) and video.fps == (25.0,)
    assert (video.width, video.height) == (96, 64)
    clip = read_clip(make_decoder(DecoderConfig()), plan_frames(video, [0, 49]), Crop(0, 0, 64, 64), 32)
    assert clip.shape == (2, 32, 32, 3) and not np.array_equal(clip[0], clip[1])


def test_chunk_read_label_names_the_file():
    assert ChunkRead(Path("/x/5.mp4"), (1,), 30.0, 10, 10).label == "/x/5.mp4"
    assert ChunkRead(b"abc", (1,), 30.0, 10, 10, name="mem").label == "mem"


def test_a_deleted_chunk_is_named_wherever_it_was(tmp_path):
    from avtool.video.clips import ChunkIndex

    for kept, missing in (((0, 30, 45), "15.mp4"), ((0, 15, 45), "30.mp4"), ((0, 15, 60, 75), "30.mp4, 45.mp4")):
        folder = tmp_path / str(kept) / "video.mp4"
        folder.mkdir(parents=True)
        for start in kept:
            (folder / f"{start}.mp4").write_bytes(b"")  # never opened: the gap is found from the names
        with pytest.raises(AvtoolError, match=rf"chunk\(s\) missing: {missing} \(chunks every 15 s expected\)"):
            ChunkIndex(tmp_path / str(kept)).get("video.mp4")


def test_avion_jittered_stride_sampling():
    from avtool.video.clips import jittered_stride_frame_ids

    rng = np.random.default_rng(0)
    starts = []
    for _ in range(500):
        ids = jittered_stride_frame_ids(300, 16, 4, rng)
        assert len(ids) == 16 and ids == sorted(ids) and 0 <= ids[0] and ids[-1] < 300
        # start + 4k + a jitter in [0, 4): frame k lies within 3 of 4k after the first.
        assert all(abs(i - ids[0] - 4 * k) < 4 for k, i in enumerate(ids))
        starts.append(ids[0])
    assert max(starts) < 300 - 68 + 4 and min(starts) < 8  # start in [0, 300 − 68), plus a jitter below 4
    short = jittered_stride_frame_ids(40, 16, 4, rng)  # shorter than 68 frames: from 0, wrapping around
    assert len(short) == 16 and max(short) < 40


def test_test_clips_spread_over_the_video_and_one_clip_is_centred():
    from avtool.video.clips import stride_frame_ids, test_clip_frame_ids

    starts = [test_clip_frame_ids(300, 16, 4, k, 5)[0] for k in range(5)]
    assert starts == [0, 59, 119, 179, 239]  # room 300 − 61 = 239 spread in 4 steps
    assert test_clip_frame_ids(300, 16, 4, 4, 5)[-1] == 299
    assert test_clip_frame_ids(300, 16, 4, 0, 1) == stride_frame_ids(300, 16, 4)  # centred, as one-view testing
    assert test_clip_frame_ids(30, 16, 4, 3, 5) == [min(4 * i, 29) for i in range(16)]  # too short: from 0
    segments = [test_clip_frame_ids(80, 4, None, k, 2) for k in range(2)]
    assert segments == [[5, 25, 45, 65], [15, 35, 55, 75]]
