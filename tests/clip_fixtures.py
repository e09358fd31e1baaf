"""Chunked versions of the session's small sample, shared by the clip, decoder, dataset and bench tests
(``pytest_plugins = ("tests.clip_fixtures",)``; do not import this module from tests).

Chunks are 5 s long so that short clips cross chunk boundaries, and use a preset with B-frames so
that seeking, reordering and skipped non-reference frames are exercised on real streams."""

from __future__ import annotations

from pathlib import Path

import pytest

from avtool.prep.chunk import ChunkConfig, plan_chunking, run_chunking
from avtool.prep.encode import EncodeSettings

CLIP_ENCODE = EncodeSettings(chunk_len=5, preset="veryfast", gop=1.0)


@pytest.fixture(scope="session")
def chunked_sample(small_sample, tmp_path_factory) -> Path:
    """``small_sample`` cut into 5-s chunks: DST/ego4d/v1/full_scale/<uid>.mp4/0.mp4, DST/ek100/P01/P01_01.MP4/0.MP4…"""
    dst = tmp_path_factory.mktemp("chunked")
    report = run_chunking(plan_chunking(ChunkConfig(src=small_sample, dst=dst, encode=CLIP_ENCODE, workers=2)))
    if not report.ok:
        raise RuntimeError(f"chunking the sample failed: {report.failures}")
    return dst
