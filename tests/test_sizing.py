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
