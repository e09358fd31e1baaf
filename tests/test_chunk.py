import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from avtool.errors import AvtoolError
from avtool.prep.chunk import ChunkConfig, in_shard, plan_chunking, run_chunking
from avtool.prep.encode import EncodeSettings
from tests.conftest import make_audio_only, make_video

FAST = EncodeSettings(chunk_len=5, preset="ultrafast", gop=1.0)
AVTOOL = [sys.executable, "-m", "avtool.cli"]


def chunk(src: Path, dst: Path, **kwargs):
    cfg = ChunkConfig(src=src, dst=dst, encode=kwargs.pop("encode", FAST), workers=kwargs.pop("workers", 2), **kwargs)
    return run_chunking(plan_chunking(cfg))


def keyframe_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [round(float(p.pts * s.time_base), 3) for p in c.demux(s) if p.size and p.is_keyframe]


def test_layout_durations_keyframes_and_manifest(small_sample, tmp_path):
    dst = tmp_path / "chunks"
    report = chunk(small_sample, dst)
    assert report.ok and len(report.chunked) == 4
    ego = sorted((small_sample / "ego4d/v1/full_scale").glob("*.mp4"), key=lambda p: p.stat().st_size)
    for video in ego:
        folder = dst / video.relative_to(small_sample)
        names = sorted(folder.iterdir(), key=lambda p: int(p.stem))
        duration = 12 if len(names) == 3 else 20
        assert [p.name for p in names] == [f"{s}.mp4" for s in range(0, duration, 5)]
    # EK-100's upper-case extension is kept: ROOT/P01/P01_01.MP4/0.MP4
    assert sorted(p.name for p in (dst / "ek100/P01/P01_01.MP4").iterdir()) == ["0.MP4", "5.MP4"]

    manifest = pd.read_csv(dst / "manifest.csv")
    assert list(manifest.columns) == [
        "video", "chunk", "start", "duration", "frames", "fps", "width", "height", "bytes", "bitrate",
    ]  # fmt: skip
    assert (
        len(manifest)
        == report.chunks
        == len([p for p in dst.rglob("*") if p.is_file() and p.suffix in (".mp4", ".MP4")])
    )
    for row in manifest.itertuples():
        path = dst / row.chunk
        assert path.stat().st_size == row.bytes
        assert min(row.width, row.height) == 288  # 360p sources scaled to a 288 short side
        with av.open(str(path)) as c:
            frames = sum(1 for p in c.demux(video=0) if p.size)
        assert frames == row.frames
        full = 5 * row.fps
        is_last = row.start == manifest[manifest.video == row.video].start.max()
        assert frames <= full + 1 and (is_last or abs(frames - full) <= 1)
        # A keyframe opens every chunk and recurs every --gop second inside it.
        assert keyframe_times(path)[: int(row.duration)] == [float(s) for s in range(int(row.duration))]
    # Per video, the chunks add up to the source duration within a frame per chunk.
    p01 = manifest[manifest.video == "ek100/P01/P01_01.MP4"]
    assert p01.fps.iloc[0] == 60 and abs(p01.duration.sum() - 8.0) <= len(p01) / 60


def test_rerun_skips_finished_videos_and_other_settings_are_refused(small_sample, tmp_path):
    dst = tmp_path / "chunks"
    src = small_sample / "ek100"
    assert chunk(src, dst).ok
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*.MP4")}
    plan = plan_chunking(ChunkConfig(src=src, dst=dst, encode=FAST))
    assert plan.jobs == [] and len(plan.done) == 2
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.MP4")} == before
    with pytest.raises(AvtoolError, match="other settings.*chunk_len"):
        plan_chunking(ChunkConfig(src=src, dst=dst, encode=EncodeSettings(chunk_len=10, preset="ultrafast")))


def test_rotation_metadata_is_honoured(tmp_path):
    make_video(tmp_path / "src/rotated.mp4", 3, size="320x240", rotation=90)
    report = chunk(tmp_path / "src", tmp_path / "dst")
    assert report.ok
    row = pd.read_csv(tmp_path / "dst/manifest.csv").iloc[0]
    # Upright: 240 wide, 320 tall; small sources are not upscaled to the 288 short side.
    assert (row.width, row.height) == (240, 320)


def ffmpeg(*args: str) -> None:
    from avtool.video.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def frames_of(path: Path, format: str = "rgb24") -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format=format) for f in c.decode(video=0)]).astype(np.float32)


def test_display_geometry_of_real_world_sources_is_kept(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    # Non-square pixels (an anamorphic PAL-like frame): 175 wide pixels of SAR 572:525 show 190.7 wide.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=175x143:rate=30:duration=2", "-vf", "setsar=572/525", *x264,
           str(src / "anamorphic.mp4"))  # fmt: skip
    # Rotations between multiples of 90°: turned by the nearest multiple, like the 90° video pixel for pixel.
    plain = make_video(tmp_path / "plain.mp4", 2, size="320x240")
    for angle in (80, 90):
        ffmpeg("-display_rotation", str(angle), "-i", str(plain), "-c", "copy", str(src / f"rot{angle}.mp4"))
    # Truly interlaced footage: each frame weaves the top field of one instant with the bottom of the next.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=60:duration=2", "-vf", "tinterlace=interleave_top",
           *x264, "-flags", "+ildct+ilme", str(src / "interlaced.mp4"))  # fmt: skip
    plan = plan_chunking(ChunkConfig(src=src, dst=tmp_path / "dst", encode=FAST))
    notes = " | ".join(plan.notes)
    assert "anamorphic.mp4: non-square pixels (SAR 73:67)" in notes  # 572:525 as H.264 stores it
    assert "rot80.mp4: rotated 80°: turned by 90°" in notes and "rot90.mp4" not in notes
    assert "interlaced.mp4: interlaced: deinterlaced" in notes and "plain" not in notes
    assert chunk(src, tmp_path / "dst", encode=FAST).ok
    rows = pd.read_csv(tmp_path / "dst/manifest.csv").set_index("video")
    assert tuple(rows.loc["anamorphic.mp4", ["width", "height"]]) == (190, 142)  # 190.7 × 143, even sizes
    with av.open(str(tmp_path / "dst/anamorphic.mp4/0.mp4")) as c:
        assert c.streams.video[0].sample_aspect_ratio in (None, 1)
    assert tuple(rows.loc["rot80.mp4", ["width", "height"]]) == (240, 320)
    np.testing.assert_array_equal(frames_of(tmp_path / "dst/rot80.mp4/0.mp4"),
                                  frames_of(tmp_path / "dst/rot90.mp4/0.mp4"))  # fmt: skip

    def combing(frames: np.ndarray) -> float:
        """Each row against the mean of the rows above and below: where two instants weave, rows alternate."""
        return float(np.abs(frames[:, 1:-1] - (frames[:, 2:] + frames[:, :-2]) / 2).mean())

    # Luma alone: the chroma of 4:2:0 interlaced frames is upsampled per field, unlike a progressive frame's.
    source = frames_of(src / "interlaced.mp4", "gray")
    chunked = frames_of(tmp_path / "dst/interlaced.mp4/0.mp4", "gray")
    assert len(chunked) == len(source) == 60  # one frame per frame
    assert combing(chunked) < 0.7 * combing(source)  # 0.54 deinterlaced; 0.98 re-encoded as it was


def test_trims_offset_clocks_and_timestamp_gaps_chunk_and_truncation_still_fails(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    x264 = ["-c:v", "libx264", "-preset", "fast", "-pix_fmt", "yuv420p"]
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=8", *x264, str(tmp_path / "b.mp4"))
    # Stream-copy trims of a B-frame MP4: at its end, and from a non-keyframe (an edit list hides the lead-in).
    ffmpeg("-i", str(tmp_path / "b.mp4"), "-c", "copy", "-t", "4", str(src / "cut.mp4"))
    ffmpeg("-ss", "1.3", "-i", str(tmp_path / "b.mp4"), "-c", "copy", "-t", "4", str(src / "cut_mid.mp4"))
    # A camera clock that starts an hour in; and the same file cut short (its header still says 3606 s).
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=6", *x264, "-output_ts_offset", "3600",
           str(src / "clock.mkv"))  # fmt: skip
    data = (src / "clock.mkv").read_bytes()
    (src / "clock_cut.mkv").write_bytes(data[: len(data) * 2 // 3])
    # Timestamp gaps (0.16 s missing every 400 frames): the average rate is no longer the nominal one.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=40", "-c:v", "libx264", "-preset",
           "ultrafast", "-g", "50", str(tmp_path / "g.mp4"))  # fmt: skip
    ffmpeg("-i", str(tmp_path / "g.mp4"), "-c", "copy", "-bsf:v",
           "setts=pts=PTS+floor(N/400)*2048:dts=DTS+floor(N/400)*2048", str(src / "gaps.mp4"))  # fmt: skip

    plan = plan_chunking(ChunkConfig(src=src, dst=tmp_path / "dst", encode=FAST))
    seconds = {job.rel.name: job.info.duration for job in plan.jobs}
    assert seconds["clock.mkv"] == pytest.approx(6.0) and seconds["cut.mp4"] == pytest.approx(4.0, abs=0.1)
    report = chunk(src, tmp_path / "dst", encode=replace(FAST, preset="fast"))  # B-frames in the chunks too
    failures = {f.video: f.reason for f in report.failures}
    assert set(failures) == {"clock_cut.mkv"} and "truncated or corrupt" in failures["clock_cut.mkv"]
    manifest = pd.read_csv(tmp_path / "dst/manifest.csv")
    assert set(manifest.video) == {"cut.mp4", "cut_mid.mp4", "clock.mkv", "gaps.mp4"}
    assert manifest[manifest.video == "clock.mkv"].frames.sum() == 180
    # Every chunk opens on a keyframe that is shown, and the manifest counts the frames a decoder gives.
    for row in manifest.itertuples():
        with av.open(str(tmp_path / "dst" / row.chunk)) as c:
            frames = list(c.decode(video=0))
        assert frames[0].key_frame and len(frames) == row.frames, row.chunk


def test_upscale_and_fps_options(tmp_path):
    make_video(tmp_path / "src/small.mp4", 2, fps=25, size="160x120")
    encode = EncodeSettings(chunk_len=5, preset="ultrafast", upscale=True, fps=10)
    assert chunk(tmp_path / "src", tmp_path / "dst", encode=encode).ok
    row = pd.read_csv(tmp_path / "dst/manifest.csv").iloc[0]
    assert (row.width, row.height, row.fps, row.frames) == (384, 288, 10, 20)


def test_bad_inputs_are_listed_while_the_rest_completes(tmp_path):
    src = tmp_path / "src"
    make_video(src / "good.mp4", 3)
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.mp4").write_text("not a video at all")
    make_audio_only(src / "audio_only.mp4")
    whole = make_video(tmp_path / "whole.mp4", 6)
    data = whole.read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end: unreadable
    faststart = tmp_path / "faststart.mp4"
    from avtool.video.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(whole), "-c", "copy", "-movflags", "+faststart",
                    str(faststart)], check=True)  # fmt: skip
    data = faststart.read_bytes()
    (src / "cut_short.mp4").write_bytes(data[: len(data) // 2])  # header intact, frames missing

    reasons = {
        "empty.mp4": "empty file",
        "notes.mp4": "not a readable video",
        "audio_only.mp4": "no video stream",
        "truncated.mp4": "not a readable video",
        "cut_short.mp4": "truncated or corrupt",
    }
    report = chunk(src, tmp_path / "dst", encode=EncodeSettings(chunk_len=2, preset="ultrafast"))
    failures = {f.video: f.reason for f in report.plan.failures + report.failures}
    assert set(failures) == set(reasons) and report.chunked == ["good.mp4"] and not report.ok
    for name, reason in reasons.items():
        assert reason in failures[name] and "\n" not in failures[name]

    # The CLI lists the same failures at the end, without a traceback, and exits non-zero.
    shutil.rmtree(tmp_path / "dst")
    result = subprocess.run([*AVTOOL, "chunk", str(src), str(tmp_path / "dst"), "--chunk-len", "2",
                             "--preset", "ultrafast"], capture_output=True, text=True, env={**os.environ,
                             "COLUMNS": "250"})  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "5 failed video(s)" in result.stderr
    for name, reason in reasons.items():
        assert any(name in line and reason in line for line in result.stderr.splitlines()), name
    assert sorted(p.name for p in (tmp_path / "dst/good.mp4").iterdir()) == ["0.mp4", "2.mp4"]
    for name in reasons:
        assert not (tmp_path / "dst" / name).exists()
    assert not list((tmp_path / "dst").glob(".*.partial*"))


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_no_partial_output_and_resumes(tmp_path, sig):
    src = tmp_path / "src"
    for i in range(3):
        make_video(src / f"v{i}.mp4", 20, size="640x360")
    dst = tmp_path / "dst"
    args = [*AVTOOL, "chunk", str(src), str(dst), "--chunk-len", "5", "--preset", "medium", "--encoders", "1"]
    # A shell's background job starts with SIGINT ignored, and a child inherits that: restore the default so
    # the Ctrl-C below reaches avtool however the suite was launched.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    _wait_for(lambda: any(dst.glob(".*.partial*")) if dst.exists() else False)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in stderr and "rerun" in stderr
        assert not list(dst.glob(".*.partial*"))
    else:
        assert proc.returncode == -signal.SIGKILL
    finished = [p for p in dst.glob("v*.mp4") if p.is_dir()]
    assert len(finished) < 3
    for folder in finished:  # whatever is visible is complete
        assert sorted(p.name for p in folder.iterdir()) == ["0.mp4", "10.mp4", "15.mp4", "5.mp4"]

    result = subprocess.run([*AVTOOL, "chunk", str(src), str(dst), "--chunk-len", "5", "--preset", "medium"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not list(dst.glob(".*.partial*"))
    manifest = pd.read_csv(dst / "manifest.csv")
    assert sorted(manifest.video.unique()) == ["v0.mp4", "v1.mp4", "v2.mp4"] and len(manifest) == 12


def test_plan_writes_nothing_and_predicts(small_sample, tmp_path):
    dst = tmp_path / "dst"
    result = subprocess.run([*AVTOOL, "chunk", str(small_sample / "ek100"), str(dst), "--chunk-len", "auto",
                             "--read-speed", "500", "--batch-size", "1024", "--step-time", "4", "--plan",
                             "--preset", "ultrafast"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not dst.exists()
    out = " ".join(result.stdout.split())
    assert "B·ρ·T ≤ S_r·Δ" in out and "S_r = 500.0 MB/s (--read-speed)" in out and "T_max" in out
    assert "2 video(s) to chunk" in out
    # The decode budget beside it: both tunes trial-encoded and decoded, and a recommendation.
    assert "Decode budget" in out and "B / Δ = 1024 / 4 s = 256 clips/s" in out
    assert "--tune none (asked)" in out and "--tune fastdecode" in out and "→" in out
    assert "--tune none --bframes 8" in out and "--tune fastdecode --bframes 8" in out


def test_auto_chunk_len_follows_eq3(small_sample, tmp_path):
    # A slow disk (1 MB/s) forces short chunks: T = 8e6·4 / (1024·ρ) with ρ measured.
    cfg = ChunkConfig(src=small_sample / "ek100", dst=tmp_path / "d", encode=replace(FAST, chunk_len="auto"),
                      read_speed=1.0, trial_videos=1)  # fmt: skip
    plan = plan_chunking(cfg)
    rho = plan.sizing.bitrate.value
    assert plan.chunk_len == max(1, int(8e6 * 4 / (1024 * rho) * 0.96))
    assert plan.config.encode.chunk_len == plan.chunk_len


def test_shards_partition_the_inputs_and_share_one_manifest(small_sample, tmp_path):
    dst = tmp_path / "dst"
    parts = [plan_chunking(ChunkConfig(src=small_sample, dst=dst, encode=FAST, shard=(i, 3))) for i in range(3)]
    names = [sorted(j.rel.as_posix() for j in p.jobs) for p in parts]
    everything = sorted(n for part in names for n in part)
    assert len(everything) == len(set(everything)) == 4
    assert all(in_shard(Path(n), (i, 3)) for i, part in enumerate(names) for n in part)
    for part in parts:
        run_chunking(part)
    assert sorted(pd.read_csv(dst / "manifest.csv").video.unique()) == everything
    with pytest.raises(AvtoolError, match="shard"):
        ChunkConfig(src=small_sample, dst=dst, shard=(3, 3))


@contextmanager
def _tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` with ``options`` for the test's duration (skipped where not allowed)."""
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip(f"needs permission to mount a tmpfs ({options})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def test_full_disk_stops_with_a_clear_reason(tmp_path):
    with _tmpfs(tmp_path / "small_disk", "size=600k") as mount:
        src = tmp_path / "src"
        for i in range(2):
            make_video(src / f"v{i}.mp4", 12, size="640x360")
        report = chunk(src, mount / "dst", encode=EncodeSettings(chunk_len=4, preset="ultrafast", crf=10), workers=1)
        assert not report.ok and report.aborted and "disk full" in report.aborted
        assert any("disk full" in f.reason for f in report.failures)
        assert not list((mount / "dst").glob(".*.partial*"))
        # The CLI: one line saying what to do, the summary of what finished, status 1, no traceback.
        shutil.rmtree(mount / "dst")
        done = subprocess.run([*AVTOOL, "chunk", str(src), str(mount / "dst"), "--chunk-len", "4", "--preset",
                               "ultrafast", "--crf", "10", "--encoders", "1"], capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        said = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 1 and "Traceback" not in said, said
        assert "free space and rerun" in said and "videos chunked" in said


def test_read_only_destination_is_one_line_before_any_encoding(tmp_path):
    with _tmpfs(tmp_path / "read_only", "size=1m,ro") as mount:
        make_video(tmp_path / "src" / "a.mp4", 2)
        done = subprocess.run([*AVTOOL, "chunk", str(tmp_path / "src"), str(mount / "dst")], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0
        assert "cannot write DST" in done.stderr and "choose a writable destination" in done.stderr


def test_missing_source_is_one_line_error(tmp_path):
    result = subprocess.run([*AVTOOL, "chunk", str(tmp_path / "nope"), str(tmp_path / "dst")], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file or folder" in result.stderr


def test_other_containers_become_mp4_chunks_under_their_own_name(tmp_path):
    make_video(tmp_path / "src/a.mkv", 3)
    make_video(tmp_path / "src/sub/b.mov", 3, audio=True)
    report = chunk(tmp_path / "src", tmp_path / "dst", encode=EncodeSettings(chunk_len=2, preset="ultrafast"))
    assert report.ok, report.failures
    assert sorted(p.name for p in (tmp_path / "dst/a.mkv").iterdir()) == ["0.mp4", "2.mp4"]
    assert sorted(p.name for p in (tmp_path / "dst/sub/b.mov").iterdir()) == ["0.mp4", "2.mp4"]
    with av.open(str(tmp_path / "dst/sub/b.mov/0.mp4")) as c:
        assert not c.streams.audio  # audio is dropped by default


def x264_options(path: Path) -> dict[str, str]:
    """The settings libx264 writes into its SEI at the start of the stream (``options: cabac=1 ref=3 …``)."""
    data = path.read_bytes()
    start = data.index(b"options: ") + len(b"options: ")
    text = data[start : data.index(b"\x00", start)].decode()
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_tune_fastdecode_reaches_libx264_and_its_chunks_verify_and_decode(tmp_path):
    make_video(tmp_path / "src/v.mp4", 6, size="320x240")
    # superfast keeps CABAC and deblocking on (ultrafast turns them off), so fastdecode visibly changes them.
    plain = replace(FAST, preset="superfast")
    fast = replace(plain, tune="fastdecode")
    assert chunk(tmp_path / "src", tmp_path / "plain", encode=plain).ok
    assert chunk(tmp_path / "src", tmp_path / "fast", encode=fast).ok
    assert x264_options(tmp_path / "plain/v.mp4/0.mp4")["cabac"] == "1"
    options = x264_options(tmp_path / "fast/v.mp4/0.mp4")
    assert (options["cabac"], options["deblock"].split(":")[0], options["weightb"]) == ("0", "0", "0")
    for start in (0, 5):
        path = tmp_path / f"fast/v.mp4/{start}.mp4"
        assert decoded_frames(path) == pd.read_csv(tmp_path / "fast/manifest.csv").set_index("start").frames[start]
        with av.open(str(path)) as c:
            assert next(p for p in c.demux(video=0) if p.size).is_keyframe
    # The tune identifies a chunk set: a rerun with another tune is refused; a DST recorded before the tune
    # existed (no "tune" in its record) resumes as tune none.
    with pytest.raises(AvtoolError, match="other settings.*tune"):
        plan_chunking(ChunkConfig(src=tmp_path / "src", dst=tmp_path / "plain", encode=fast))
    record = tmp_path / "plain/.avtool/chunk_settings.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "tune"}))
    assert plan_chunking(ChunkConfig(src=tmp_path / "src", dst=tmp_path / "plain", encode=plain)).done == ["v.mp4"]


def test_nonreference_bframes_reach_libx264_verify_and_let_a_seeking_decoder_skip_them(tmp_path):
    from avtool.video.clips import ChunkRead
    from avtool.video.crops import Crop
    from avtool.video.decode import DecoderConfig, StageTimes, make_decoder

    make_video(tmp_path / "src/v.mp4", 6, size="320x240")
    plain = replace(FAST, preset="superfast")
    skippable = replace(plain, bframes=8)
    assert chunk(tmp_path / "src", tmp_path / "plain", encode=plain).ok
    assert chunk(tmp_path / "src", tmp_path / "b8", encode=skippable).ok
    options = x264_options(tmp_path / "b8/v.mp4/0.mp4")
    assert (options["bframes"], options["b_pyramid"], options["b_adapt"]) == ("8", "0", "0")
    manifest = pd.read_csv(tmp_path / "b8/manifest.csv").set_index("start")
    assert decoded_frames(tmp_path / "b8/v.mp4/5.mp4") == manifest.frames[5]

    def frames_decoded(dst: str) -> tuple[int, bytes]:
        # The last frame of each 1-s GOP: without skippable B-frames every frame before it is decoded.
        read = ChunkRead(tmp_path / dst / "v.mp4/0.mp4", (29, 59, 89, 119), 30.0, 320, 240)
        times = StageTimes()
        out = make_decoder(DecoderConfig(access="seek")).decode(read, Crop(0, 0, 320, 240), 64, times)
        return times.frames_decoded, out.tobytes()

    assert frames_decoded("b8")[0] < 0.6 * frames_decoded("plain")[0]
    # B-frames name the encoding: resuming a DST made without them is refused, and the recorded settings of a
    # DST made before the option existed (no "bframes") mean none.
    with pytest.raises(AvtoolError, match="other settings.*bframes"):
        plan_chunking(ChunkConfig(src=tmp_path / "src", dst=tmp_path / "plain", encode=skippable))
    record = tmp_path / "plain/.avtool/chunk_settings.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "bframes"}))
    assert plan_chunking(ChunkConfig(src=tmp_path / "src", dst=tmp_path / "plain", encode=plain)).done == ["v.mp4"]
    for bad in (-1, 17, True):
        with pytest.raises(AvtoolError, match="--bframes must be in 0..16"):
            replace(plain, bframes=bad)


def test_gop_default_leaves_keyframes_to_libx264_but_forces_chunk_starts(tmp_path):
    make_video(tmp_path / "src/v.mp4", 12, size="320x240")
    default = replace(FAST, gop="default")
    assert chunk(tmp_path / "src", tmp_path / "gop1").ok
    assert chunk(tmp_path / "src", tmp_path / "default", encode=default).ok
    for start in (0, 5, 10):
        ones, few = (keyframe_times(tmp_path / f"{d}/v.mp4/{start}.mp4") for d in ("gop1", "default"))
        assert few == [0.0] and len(ones) > len(few)  # only the chunk start: x264's keyint 250 never comes
    assert x264_options(tmp_path / "default/v.mp4/0.mp4")["keyint"] == "250"
    # 300-s chunks (LaViLa's) with x264's keyframes; the CLI spells it --gop default.
    long = EncodeSettings(chunk_len=300, gop="default", preset="ultrafast")
    report = chunk(tmp_path / "src", tmp_path / "long", encode=long)
    assert report.ok and sorted(p.name for p in (tmp_path / "long/v.mp4").iterdir()) == ["0.mp4"]
    from typer.testing import CliRunner

    from avtool.cli import app

    result = CliRunner().invoke(app, ["chunk", "a", "b", "--gop", "default", "--chunk-len", "300", "--print-config"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["encode"]["gop"] == "default"
    with pytest.raises(AvtoolError, match="--gop"):
        EncodeSettings(chunk_len=5, gop="often")


def test_quality_is_high_at_crf_18_lower_at_crf_40_and_lands_in_quality_json(tmp_path):
    make_video(tmp_path / "src/v.mp4", 6, size="640x360")
    reports = {}
    for crf in (18, 40):
        encode = replace(FAST, crf=crf, preset="veryfast")
        reports[crf] = chunk(tmp_path / "src", tmp_path / f"crf{crf}", encode=encode, quality=True, quality_seconds=1.0)
        assert reports[crf].ok and not reports[crf].quality_failures
    good, bad = (reports[crf].quality_summary for crf in (18, 40))
    assert good.psnr > 40 and good.ssim > 0.98 and good.frames == 30 and good.videos == 1
    assert 20 < bad.psnr < good.psnr - 8 and bad.ssim < good.ssim
    saved = json.loads((tmp_path / "crf18/quality.json").read_text())
    assert saved["overall"]["psnr_db"] == pytest.approx(good.psnr, abs=1e-3) and set(saved["videos"]) == {"v.mp4"}
    assert saved["settings"]["crf"] == 18
    assert "PSNR" in good.summary() and "1.0 s of 1 video(s)" in good.summary()


def test_an_earlier_chunk_output_inside_src_is_skipped_with_a_note(tmp_path):
    src = tmp_path / "src"
    make_video(src / "a.mp4", 2)
    chunk(src, tmp_path / "first")
    shutil.move(tmp_path / "first", src / "old_chunks")  # a previous DST, later moved under SRC
    plan = plan_chunking(ChunkConfig(src=src, dst=tmp_path / "dst", encode=FAST))
    assert [j.rel.as_posix() for j in plan.jobs] == ["a.mp4"]
    assert plan.skipped_outputs == [src / "old_chunks"]
    done = subprocess.run([*AVTOOL, "chunk", str(src), str(tmp_path / "dst"), "--plan"], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())  # rich wraps long lines
    assert "skipped" in said and "old_chunks: it is an earlier avtool chunk output" in said
