import pytest

from avtool.prep.sizing import ChunkSizing, Quantity


def sizing(batch, rho_bps, read_Bps, step, safety=0.04) -> ChunkSizing:
    return ChunkSizing(
        Quantity("B", batch, "clips/step", "test"),
        Quantity("ρ", rho_bps, "b/s", "test"),
        Quantity("S_r", read_Bps, "B/s", "test"),
        Quantity("Δ", step, "s", "test"),
        safety,
    )


def test_paper_example_gives_15_6_s_and_the_papers_15_s_chunks():
    # §4.3: B=1024, ρ=1 Mb/s, Δ=4 s, S_r=500 MB/s -> T <= 16 s; the paper uses 15 s.
    s = sizing(1024, 1e6, 500e6, 4.0)
    assert s.max_chunk_seconds == pytest.approx(15.625)
    assert s.chosen_chunk_seconds == 15


@pytest.mark.parametrize(
    "batch, rho, read, step, safety, t_max, chosen",
    [
        # HDD at 80 MB/s: 80e6*8*4 / (1024*1e6) = 2.5 s -> floor(2.5*0.96) = 2
        (1024, 1e6, 80e6, 4.0, 0.04, 2.5, 2),
        # NVMe at 3 GB/s, 2048 clips of 2 Mb/s, 6 s steps: 3e9*8*6/(2048*2e6) = 35.15625 s
        (2048, 2e6, 3e9, 6.0, 0.0, 35.15625, 35),
        # A tiny budget still yields 1-s chunks, never 0.
        (4096, 8e6, 10e6, 1.0, 0.5, 10e6 * 8 / (4096 * 8e6), 1),
    ],
)
def test_hand_computed_cases(batch, rho, read, step, safety, t_max, chosen):
    s = sizing(batch, rho, read, step, safety)
    assert s.max_chunk_seconds == pytest.approx(t_max)
    assert s.chosen_chunk_seconds == chosen


def test_required_read_speed_inverts_the_rule():
    s = sizing(1024, 1e6, 500e6, 4.0)
    assert s.required_read_speed(s.max_chunk_seconds) == pytest.approx(500e6)
    assert s.required_read_speed(15) == pytest.approx(1024 * 1e6 * 15 / 8 / 4)


def test_derivation_names_every_quantity_with_unit_and_source():
    text = "\n".join(sizing(1024, 1e6, 500e6, 4.0).derivation())
    for needle in (
        "B = 1024 clips/step",
        "ρ = 1.000 Mb/s",
        "S_r = 500.0 MB/s",
        "Δ = 4 s",
        "15.62 s",
        "= 15 s",
    ):
        assert needle in text
    assert text.count("(test)") == 4


# ---- the decode budget beside Eq. 3 ----


def budget(per_core: dict[str, tuple[float, float]], cores=2, chunk_len: int | None = 15, gpu_rate=None, **eq3):
    """A DecodeBudget over candidates ``{flags: (ρ b/s, clips/s per core)}``, the first one asked for."""
    from avtool.prep.sizing import Candidate, DecodeBudget

    base = sizing(**{"batch": 1024, "rho_bps": 1e6, "read_Bps": 500e6, "step": 4.0, **eq3})
    candidates = tuple(Candidate(f, rho, speed, i == 0) for i, (f, (rho, speed)) in enumerate(per_core.items()))
    rate = Quantity("needed", gpu_rate, "clips/s", "test rate") if gpu_rate is not None else None
    return DecodeBudget(base, Quantity("cores", cores, "", "test"), "test clips", candidates, chunk_len, rate)


def test_decode_budget_recommends_the_faster_tune_when_the_asked_one_cannot_keep_up():
    # B/Δ = 1024/4 = 256 clips/s; none decodes 100/core · 2 = 200 < 256, fastdecode 150 · 2 = 300 >= 256.
    b = budget({"--tune none": (1.0e6, 100.0), "--tune fastdecode": (1.14e6, 150.0)}, chunk_len=10)
    assert b.needed == 256
    assert b.recommended.candidate.flags == "--tune fastdecode"
    text = "\n".join(b.derivation())
    for needle in (
        "B / Δ = 1024 / 4 s = 256 clips/s",
        "cores = 2  (test)",
        "100.0 clips/s · 2 cores = 200 < 256 clips/s",
        "150.0 clips/s · 2 cores = 300 ≥ 256 clips/s",
        "T = 10 s ≤ T_max = 15.62 s",  # the read budget of each candidate, with its own ρ
        "T = 10 s ≤ T_max = 13.71 s",
        "→ use --tune fastdecode: 300 ≥ 256 clips/s decodable",
        "--tune none: 200 < 256 clips/s",
    ):
        assert needle in text, needle


def test_decode_budget_weighs_the_read_budget_too():
    # fastdecode decodes fast enough, but its 14% more bytes push T_max below the 15-s chunks.
    b = budget({"--tune none": (1.0e6, 100.0), "--tune fastdecode": (1.14e6, 150.0)})
    fast = b.verdicts[1]
    assert fast.max_chunk_seconds == pytest.approx(15.625 / 1.14) and not fast.read_ok
    assert b.recommended is None
    assert "no encoding satisfies both" in b.conclusion() and "needs 3 cores" in b.conclusion()
    # --chunk-len auto solves T per candidate: 13 s for fastdecode's ρ, within the read budget.
    auto = budget({"--tune none": (1.0e6, 100.0), "--tune fastdecode": (1.14e6, 150.0)}, chunk_len=None)
    assert auto.recommended.candidate.flags == "--tune fastdecode" and auto.recommended.chunk_seconds == 13


def test_decode_budget_prefers_fewer_bytes_when_both_satisfy():
    b = budget({"--tune fastdecode": (1.14e6, 150.0), "--tune none": (1.0e6, 140.0)}, chunk_len=10)
    assert b.recommended.candidate.flags == "--tune none"
    assert b.conclusion().startswith("→ use --tune none: 280 ≥ 256")


def test_decode_budget_names_the_cores_or_chunk_length_it_would_take():
    slow = budget({"--tune none": (1.0e6, 50.0), "--tune fastdecode": (1.1e6, 80.0)}, chunk_len=10, gpu_rate=700)
    assert slow.needed == 700 and "700 clips/s  (test rate)" in "\n".join(slow.derivation())
    assert slow.conclusion().endswith(
        "--tune fastdecode decodes 160 of 700 clips/s; it needs 9 cores, or fewer clips/s"
    )
    long = budget({"--tune none": (1.0e6, 500.0)}, chunk_len=60)
    assert long.conclusion() == "→ no encoding fits the read budget at 60-s chunks: use --chunk-len 15 or less"
