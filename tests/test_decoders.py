import pickle
import warnings

import numpy as np
import pytest
import torch

from avtool.errors import AvtoolError
from avtool.video.augment import CLIP_MEAN, CLIP_STD, AugmentConfig, augment_batch
from avtool.video.clips import ChunkIndex, ChunkRead
from avtool.video.crops import Crop
from avtool.video.decode import DecoderConfig, StageTimes, make_decoder

pytest_plugins = ("tests.clip_fixtures",)

# A crop with odd offsets and sizes, smaller than the output in height (upscaled) and larger in width.
CROP = Crop(x=37, y=21, w=301, h=203)
SIZE = 160


@pytest.fixture(scope="module")
def chunk(chunked_sample) -> ChunkRead:
    """Frames spread over a 5-s, 30-fps chunk with B-frames (two of them in one GOP)."""
    index = ChunkIndex(chunked_sample)
    key = next(k for k in index.keys() if k.startswith("ego4d") and round(index.get(k).duration) == 20)
    video = index.get(key)
    return ChunkRead(video.paths[1], (3, 40, 47, 149), 30.0, video.width, video.height)


def decode(chunk: ChunkRead, crop: Crop = CROP, size: int = SIZE, **config) -> tuple[np.ndarray, StageTimes]:
    times = StageTimes()
    return make_decoder(DecoderConfig(**config)).decode(chunk, crop, size, times), times


def test_fused_and_decode_then_crop_agree_for_every_backend_and_access(chunk):
    reference, _ = decode(chunk, mode="decode-then-crop", access="sequential")
    assert reference.shape == (4, SIZE, SIZE, 3) and reference.dtype == np.uint8
    assert len({frame.tobytes() for frame in reference}) == 4  # four different frames
    for backend in ("pyav", "decord"):
        for access in ("seek", "sequential"):
            for mode in ("fused", "decode-then-crop"):
                out, _ = decode(chunk, backend=backend, mode=mode, access=access)
                assert out.shape == reference.shape and out.dtype == np.uint8
                diff = np.abs(out.astype(int) - reference).mean()
                # Same crop, different scaler (swscale in the decoder vs torch): a few grey levels on the sample's
                # pixel-fine texture and noise (decord's scaler: up to 6); a crop off by a few pixels gives tens.
                assert diff < (0.01 if mode == "decode-then-crop" else 8.0), (backend, mode, access, diff)


def test_seek_gives_the_same_pixels_as_sequential_while_decoding_less(chunk):
    for mode in ("fused", "decode-then-crop"):
        sequential, seq_times = decode(chunk, mode=mode, access="sequential")
        seek, seek_times = decode(chunk, mode=mode, access="seek")
        plain, plain_times = decode(chunk, mode=mode, access="seek", skip_nonref=False)
        np.testing.assert_array_equal(seek, sequential)
        np.testing.assert_array_equal(plain, sequential)
        assert seq_times.frames_decoded >= 150  # up to frame 149 from the chunk start
        # GOPs without a requested frame are never decoded; skipped non-reference frames save more.
        assert plain_times.frames_decoded < 100 and seek_times.frames_decoded < plain_times.frames_decoded


def test_every_single_frame_of_a_chunk_is_found_by_seeking(chunk):
    reference, _ = decode(
        ChunkRead(chunk.source, tuple(range(150)), 30.0, chunk.width, chunk.height),
        crop=Crop(0, 0, 64, 64), size=16, access="sequential",
    )  # fmt: skip
    for frame in (0, 1, 29, 30, 31, 89, 148, 149):
        one = ChunkRead(chunk.source, (frame,), 30.0, chunk.width, chunk.height)
        out, _ = decode(one, crop=Crop(0, 0, 64, 64), size=16, access="seek")
        np.testing.assert_array_equal(out[0], reference[frame])


def test_repeated_ids_and_output_order_follow_the_request(chunk):
    request = ChunkRead(chunk.source, (40, 40, 47, 47), 30.0, chunk.width, chunk.height)
    out, _ = decode(request)
    ref, _ = decode(chunk)
    np.testing.assert_array_equal(out, ref[[1, 1, 2, 2]])


def test_flip_mirrors_the_output(chunk):
    for mode in ("fused", "decode-then-crop"):
        plain, _ = decode(chunk, mode=mode)
        flipped, _ = decode(chunk, crop=Crop(CROP.x, CROP.y, CROP.w, CROP.h, flip=True), mode=mode)
        np.testing.assert_array_equal(flipped, plain[:, :, ::-1])


def test_fused_crops_of_one_decoder_do_not_leak_into_each_other(chunk):
    # The fused path keeps one crop graph per frame geometry and re-targets it per clip.
    decoder = make_decoder(DecoderConfig(mode="fused"))
    crops = [CROP, Crop(0, 0, 64, 48), Crop(1, 3, chunk.width - 1, chunk.height - 3, flip=True), CROP]
    outputs = [decoder.decode(chunk, crop, SIZE) for crop in crops]
    for crop, out in zip(crops, outputs, strict=True):
        np.testing.assert_array_equal(out, decode(chunk, crop=crop)[0])  # a fresh decoder per crop
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(decoder)).decode(chunk, CROP, SIZE), outputs[0])


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("mode", ["fused", "decode-then-crop"])
def test_views_of_one_decode_equal_one_decode_per_crop(chunk, backend, mode):
    # Repeated sampling and multi-crop testing decode a read once and crop it per view: each view must be
    # exactly what decoding with that crop alone gives, in the request's frame order.
    crops = [CROP, Crop(0, 0, 64, 48, flip=True), CROP]
    reordered = ChunkRead(chunk.source, (47, 3, 149, 40, 3), chunk.fps, chunk.width, chunk.height)
    decoder = make_decoder(DecoderConfig(backend=backend, mode=mode))
    times = StageTimes()
    views = decoder.decode_views(reordered, crops, SIZE, times)
    assert views.shape == (3, 5, SIZE, SIZE, 3) and views.dtype == np.uint8
    for crop, view in zip(crops, views, strict=True):
        np.testing.assert_array_equal(view, decode(reordered, crop=crop, backend=backend, mode=mode)[0])
    assert not np.array_equal(views[0], views[1])
    if backend == "pyav":
        # One decode for all the views: no more frames decoded than for one crop.
        single = decode(reordered, backend=backend, mode=mode)[1]
        assert times.reads == 1 and times.frames_decoded == single.frames_decoded


def test_one_decoder_reused_across_chunks_videos_and_accesses_matches_fresh_ones(chunked_sample):
    # A decoder keeps its codec contexts across chunks (keyed by stream parameters) and resets them
    # per clip: interleaving videos of other sizes and frame rates, and seek with sequential, must
    # give exactly what a fresh decoder gives for each read.
    index = ChunkIndex(chunked_sample)
    reads = []
    for key in sorted(index.keys()):
        video = index.get(key)
        for path, fps in list(zip(video.paths, video.fps, strict=True))[:2]:
            reads.append(ChunkRead(path, (0, 7, 20), fps, video.width, video.height))
    assert len({(r.width, r.height, r.fps) for r in reads}) >= 3
    crop = Crop(x=11, y=9, w=120, h=100)
    for mode in ("fused", "decode-then-crop"):
        shared = {access: make_decoder(DecoderConfig(mode=mode, access=access)) for access in ("seek", "sequential")}
        for k, read in enumerate(reads * 2):
            access = ("seek", "sequential")[k % 2]
            fresh = make_decoder(DecoderConfig(mode=mode, access=access)).decode(read, crop, 64)
            np.testing.assert_array_equal(shared[access].decode(read, crop, 64), fresh, err_msg=f"{mode} {k}")
        assert 1 < len(shared["seek"]._contexts) <= 4  # one per stream geometry, bounded


def test_stage_times_add_up(chunk):
    _, times = decode(chunk)
    assert times.reads == 1 and times.total > 0
    assert times.decode > 0 and times.convert > 0 and times.open > 0
    assert times.resize == 0  # fused: crop and scale happen inside the conversion
    assert times.open + times.demux + times.decode + times.convert <= times.total + 1e-6
    _, times = decode(chunk, mode="decode-then-crop")
    assert times.resize > 0 and times.other >= 0


def test_wrong_frame_rate_or_crop_is_refused(chunk):
    stale = ChunkRead(chunk.source, chunk.frame_ids, 25.0, chunk.width, chunk.height)
    for backend in ("pyav", "decord"):
        with pytest.raises(AvtoolError, match="runs at 30 fps but its metadata says 25 fps"):
            decode(stale, backend=backend)
        with pytest.raises(AvtoolError, match="does not fit"):
            decode(chunk, crop=Crop(400, 0, 200, 100), backend=backend)
    with pytest.raises(AvtoolError, match="frame.*200 not found"):
        decode(ChunkRead(chunk.source, (5, 200), 30.0, chunk.width, chunk.height))


def test_in_memory_chunk_decodes_like_the_file(chunk):
    memory = ChunkRead(chunk.source.read_bytes(), chunk.frame_ids, 30.0, chunk.width, chunk.height)
    for backend in ("pyav", "decord"):
        np.testing.assert_array_equal(decode(memory, backend=backend)[0], decode(chunk, backend=backend)[0])


def test_nvdec_falls_back_to_the_cpu_with_one_warning_or_decodes_on_the_gpu(chunk):
    cpu, _ = decode(chunk)
    decoder = make_decoder(DecoderConfig(backend="pyav-nvdec"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = decoder.decode(chunk, CROP, SIZE)
        second = decoder.decode(chunk, CROP, SIZE)
    if decoder.device == "cuda (NVDEC)":  # a machine with an NVIDIA decoder: the GPU path must agree
        assert np.abs(first.astype(int) - cpu).mean() < 3.0
        return
    assert decoder.device.startswith("cpu (NVDEC unavailable")
    assert [str(w.message) for w in caught if "NVDEC" in str(w.message)] == [
        f"pyav-nvdec: {decoder.device[5:-1]}; decoding on the CPU instead"
    ]  # one line, once per decoder
    np.testing.assert_array_equal(first, cpu)
    np.testing.assert_array_equal(second, cpu)
    with pytest.raises(AvtoolError, match=r"^pyav-nvdec: NVDEC unavailable: .*; use the pyav decoder"):
        make_decoder(DecoderConfig(backend="pyav-nvdec", fallback=False)).decode(chunk, CROP, SIZE)


def test_decoder_config_is_validated():
    with pytest.raises(AvtoolError, match="decoder must be one of.*decode mode must be one of"):
        DecoderConfig(backend="ffmpeg", mode="fast")


def test_augment_normalises_to_the_vit_layout():
    video = torch.tensor(CLIP_MEAN).round().to(torch.uint8).expand(2, 4, 8, 8, 3).contiguous()
    out = augment_batch(video)
    assert out.shape == (2, 3, 4, 8, 8) and out.dtype == torch.float32
    expected = (torch.tensor(CLIP_MEAN).round() - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 0, 0, 0], expected)
    white = augment_batch(torch.full((1, 1, 2, 2, 3), 255, dtype=torch.uint8), AugmentConfig(dtype=torch.bfloat16))
    assert white.dtype == torch.bfloat16
    torch.testing.assert_close(white[0, :, 0, 0, 0].float(), (255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD),
                               atol=0.02, rtol=0.01)  # fmt: skip


def test_augment_flip_and_jitter_are_per_clip_and_seeded():
    video = torch.randint(0, 256, (6, 2, 8, 8, 3), dtype=torch.uint8)
    plain = augment_batch(video)
    flipped = augment_batch(video, AugmentConfig(flip=1.0))
    torch.testing.assert_close(flipped, plain.flip(-1))
    config = AugmentConfig(flip=0.5, brightness=0.4, contrast=0.4, saturation=0.4)
    a = augment_batch(video, config, torch.Generator().manual_seed(0))
    b = augment_batch(video, config, torch.Generator().manual_seed(0))
    c = augment_batch(video, config, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    # Jitter keeps values in the 0-255 range before normalisation.
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1, 1)
    raw = a * std + mean
    assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3
    # Every frame of a clip gets the same jitter: the ratio to the plain clip is constant for brightness.
    bright = augment_batch(video, AugmentConfig(brightness=0.5), torch.Generator().manual_seed(3)) * std + mean
    ratio = bright / (plain * std + mean).clamp(min=1)
    unclamped = (bright < 254) & ((plain * std + mean) > 10)
    per_clip = [ratio[i][unclamped[i]] for i in range(6)]
    assert all(r.max() - r.min() < 1e-3 for r in per_clip)
    with pytest.raises(AvtoolError, match=r"\(B, T, H, W, 3\)"):
        augment_batch(torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8))


def _decode_in_child(decoder, read, crop, out) -> None:
    out.put(decoder.decode(read, crop, 64))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_forked_worker_does_not_reuse_its_parents_decoders(chunk, threads):
    # Data-loader workers are forked from a process that may have decoded already; a frame-threaded
    # decoder inherited that way waits forever on threads the child does not have.
    import multiprocessing as mp

    decoder = make_decoder(DecoderConfig(threads=threads))
    expected = decoder.decode(chunk, CROP, 64)  # leaves a decoder in the cache
    context = mp.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_decode_in_child, args=(decoder, chunk, CROP, out), daemon=True)
    child.start()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0
    np.testing.assert_array_equal(out.get(timeout=10), expected)
    np.testing.assert_array_equal(decoder.decode(chunk, CROP, 64), expected)  # the parent's cache still works
