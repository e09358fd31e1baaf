"""RandAugment for clips: timm's operations (VideoMAE's ``rand-m7-n4-mstd0.5-inc1``), drawn once per clip.

VideoMAE applies RandAugment to the list of a clip's frames, so that every frame gets the same operations
with the same magnitudes; a per-frame RandAugment would make each frame a different image and the clip
flicker. Here the operations, their magnitudes (with timm's magnitude noise), signs and the resampling
filter are drawn from the sample's generator (the same for the same (seed, epoch, index) in any worker) and
timm's own implementations of the operations are applied to each frame.

Unlike VideoMAE, which augments the full frames before its RandomResizedCrop, the crop here has already
happened inside decoding (Fused DecodeCrop), so the operations see the 224² crop: translations are relative
to the crop's size, as timm's are to the image's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

from avtool.errors import AvtoolError

VIDEOMAE_RANDAUGMENT = "rand-m7-n4-mstd0.5-inc1"
"""VideoMAE's and AVION's fine-tuning policy: 4 operations of magnitude 7 (noise 0.5), increasing severity."""


class ClipRandAugment:
    """``__call__(clip, rng)``: uint8 (T, H, W, 3) → the same shape, one RandAugment draw for all frames."""

    def __init__(self, policy: str = VIDEOMAE_RANDAUGMENT, image_size: int = 224) -> None:
        # VideoMAE's hyper-parameters: translations up to 45% of the image side, bicubic resampling.
        hparams = {"translate_const": int(image_size * 0.45), "interpolation": Image.BICUBIC}
        try:
            transform = rand_augment_transform(policy, hparams)
        except (AssertionError, KeyError, ValueError) as e:
            raise AvtoolError(f"RandAugment policy {policy!r} is not timm's rand-m<M>-n<N>[...] form ({e})") from None
        self.policy = policy
        self._ops = list(transform.ops)
        self._num_layers = transform.num_layers
        self._weights = transform.choice_weights

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        frames = [Image.fromarray(frame) for frame in clip]
        chosen = rng.choice(len(self._ops), self._num_layers, replace=self._weights is None, p=self._weights)
        for index in chosen:
            op = self._ops[int(index)]
            if op.prob < 1.0 and rng.random() > op.prob:
                continue
            magnitude = op.magnitude
            if op.magnitude_std == float("inf"):
                magnitude = rng.uniform(0, magnitude)
            elif op.magnitude_std > 0:
                magnitude = rng.normal(magnitude, op.magnitude_std)
            magnitude = max(0.0, min(float(magnitude), op.magnitude_max or 10))
            # timm's level functions flip the sign with Python's global generator: give them one seeded from
            # the clip's draw, and put the global state back.
            with _python_random(int(rng.integers(2**63))):
                level_args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
            kwargs = dict(op.kwargs)
            if isinstance(kwargs.get("resample"), (list, tuple)):
                kwargs["resample"] = kwargs["resample"][int(rng.integers(len(kwargs["resample"])))]
            frames = [op.aug_fn(frame, *level_args, **kwargs) for frame in frames]
        return np.stack([np.asarray(frame.convert("RGB")) for frame in frames])


@contextmanager
def _python_random(seed: int) -> Iterator[None]:
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)
