import math

import numpy as np
import pytest

from avtool.errors import AvtoolError
from avtool.video.crops import Crop, CropPolicy, center_crop, random_resized_crop


def draws(width: int, height: int, n: int = 3000, seed: int = 0) -> list[Crop]:
    rng = np.random.default_rng(seed)
    return [random_resized_crop(width, height, rng) for _ in range(n)]


def test_random_resized_crop_distribution_on_a_wide_frame():
    width, height = 512, 288
    crops = draws(width, height)
    for c in crops:
        c.check(width, height)  # inside the frame
    area = np.array([c.w * c.h / (width * height) for c in crops])
    aspect = np.array([c.w / c.h for c in crops])
    # Rounding w and h to pixels moves the area and aspect a little past the drawn ranges.
    assert area.min() >= 0.5 - 0.01 and area.max() <= 1.0
    assert aspect.min() >= 3 / 4 - 0.01 and aspect.max() <= 4 / 3 + 0.01
    # Tall crops of half the area or more stop fitting below w/h = 0.89 on 16:9; the range is reached.
    assert aspect.min() < 0.9 and aspect.max() > 1.33
    # Offsets are uniform over the free room: the mean offset is half the room.
    room = np.array([width - c.w for c in crops])
    x = np.array([c.x for c in crops])
    assert abs(x.mean() - room.mean() / 2) < 3
    assert (x == 0).any() and (x == room).any()


def test_log_aspect_is_symmetric_on_a_square_frame():
    # On a square frame a tall crop fits exactly when its mirrored wide crop does, so log(w/h) has mean 0.
    aspect = np.array([c.w / c.h for c in draws(400, 400)])
    assert abs(np.mean(np.log(aspect))) < 0.01
    assert abs(np.mean(aspect > 1) - 0.5) < 0.03


def test_random_resized_crop_is_deterministic_per_seed():
    assert draws(640, 360, 50, seed=7) == draws(640, 360, 50, seed=7)
    assert draws(640, 360, 50, seed=7) != draws(640, 360, 50, seed=8)


def test_random_resized_crop_follows_the_formula():
    rng = np.random.default_rng(11)
    copy = np.random.default_rng(11)
    crop = random_resized_crop(640, 360, rng)
    while True:  # the first draw that fits is used
        s, r = copy.uniform(0.5, 1.0), math.exp(copy.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(640 * 360 * s * r)), round(math.sqrt(640 * 360 * s / r))
        if w <= 640 and h <= 360:
            break
    assert (crop.w, crop.h) == (w, h)
    assert crop.x == copy.integers(0, 640 - w + 1) and crop.y == copy.integers(0, 360 - h + 1)


def test_fallback_is_a_centred_crop_within_the_aspect_range():
    # A 10×1000 strip fits no 3/4..4/3 crop of half its area: ten misses, then the fallback.
    crop = random_resized_crop(10, 1000, np.random.default_rng(0))
    assert crop == Crop(0, (1000 - 13) // 2, 10, 13)
    assert random_resized_crop(1000, 10, np.random.default_rng(0)) == Crop((1000 - 13) // 2, 0, 13, 10)


def test_center_crop_is_the_centred_short_side_square():
    assert center_crop(512, 288) == Crop(112, 0, 288, 288)
    assert center_crop(288, 384) == Crop(0, 48, 288, 288)


def test_policy_flips_with_the_given_probability_and_needs_a_generator():
    policy = CropPolicy(flip=0.5)
    rng = np.random.default_rng(0)
    flips = [policy.draw(320, 240, rng).flip for _ in range(2000)]
    assert 0.45 < np.mean(flips) < 0.55
    assert CropPolicy(kind="center").draw(320, 240, None) == Crop(40, 0, 240, 240)
    with pytest.raises(AvtoolError, match="needs a random generator"):
        CropPolicy().draw(320, 240, None)
    with pytest.raises(AvtoolError, match="crop scale"):
        CropPolicy(scale=(0.9, 0.5))
    with pytest.raises(AvtoolError, match="does not fit"):
        Crop(300, 0, 100, 100).check(320, 240)


def test_multi_scale_crop_takes_videomae_sizes_and_its_13_fixed_offsets():
    from avtool.video.crops import multi_scale_crop

    rng = np.random.default_rng(0)
    width, height = 569, 320  # Kinetics re-encoded to a short side of 320
    sides = [320, 280, 240, 211]  # int(320 · {1, .875, .75, .66})
    seen_sizes, seen_offsets = set(), set()
    for _ in range(3000):
        crop = multi_scale_crop(width, height, rng)
        i, j = sides.index(crop.h), sides.index(crop.w)
        assert abs(i - j) <= 1  # width and height at most one scale apart
        step_x, step_y = (width - crop.w) // 4, (height - crop.h) // 4
        assert crop.x % max(step_x, 1) == 0 and crop.y % max(step_y, 1) == 0
        seen_sizes.add((crop.w, crop.h))
        seen_offsets.add((crop.x // max(step_x, 1), crop.y // max(step_y, 1)) if step_x and step_y else None)
        crop.check(width, height)
    assert len(seen_sizes) == 10  # 4 + 3 + 3 pairs with |i − j| ≤ 1
    grid = {(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)}
    assert seen_offsets - {None} == grid
    # A side within 3 px of the output size becomes it: 0.875 · 254 = 222 → 224.
    snapped = {multi_scale_crop(400, 254, np.random.default_rng(s)).h for s in range(200)}
    assert 224 in snapped and 222 not in snapped
    policy = CropPolicy(kind="multi-scale", flip=0.5)
    assert {policy.draw(width, height, rng).flip for _ in range(50)} == {True, False}


def test_spatial_crops_spread_short_side_squares_along_the_long_side():
    from avtool.video.crops import spatial_crops

    assert spatial_crops(568, 320, 3) == [Crop(0, 0, 320, 320), Crop(124, 0, 320, 320), Crop(248, 0, 320, 320)]
    assert spatial_crops(320, 400, 3) == [Crop(0, 0, 320, 320), Crop(0, 40, 320, 320), Crop(0, 80, 320, 320)]
    assert spatial_crops(568, 320, 1) == [center_crop(568, 320)]
