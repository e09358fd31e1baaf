import pytest

from avtool.train.schedule import LrSchedule


def test_warmup_then_half_cosine_as_in_the_mir_recipe():
    # Appendix B.2: 1e-6 -> 3e-5 over the first epoch, then half-wave cosine to 1e-5.
    s = LrSchedule(peak_lr=3e-5, total_steps=110, warmup_steps=10, start_lr=1e-6, end_lr=1e-5)
    assert s(0) == pytest.approx(1e-6)
    assert s(5) == pytest.approx(1e-6 + (3e-5 - 1e-6) / 2)
    assert s(10) == pytest.approx(3e-5)
    assert s(60) == pytest.approx((3e-5 + 1e-5) / 2)
    assert s(110) == pytest.approx(1e-5) and s(500) == pytest.approx(1e-5)
    assert all(s(i) >= s(i + 1) for i in range(10, 120))


def test_fixed_lr_for_pretraining():
    s = LrSchedule(peak_lr=3e-5, total_steps=100, warmup_steps=10, fixed=True)
    assert {s(i) for i in (0, 5, 50, 1000)} == {3e-5}
