"""Synthetic egocentric-like footage whose narrations describe what is visible.

Each video shows a few coloured objects on a textured table seen by a drifting, shaking camera. A
script of events moves one object at a time ("#C C pushes the red ball to the left"), so a video
model trained on the sample has real signal to learn: the colour and shape say the noun, the motion
says the verb. Sensor noise and camera motion keep the bitrate in the range of real footage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avtool.atomic import partial_name


@dataclass(frozen=True)
class Verb:
    name: str
    """EK-100-style verb label, e.g. ``push-left``."""
    phrase: str
    """Narration template; ``{obj}`` is replaced by the object's phrase."""
    direction: tuple[float, float]
    """Unit motion (dx, dy) in image coordinates; (0, 0) means shaking in place."""


@dataclass(frozen=True)
class Noun:
    name: str
    """EK-100-style noun label, e.g. ``ball:red``."""
    phrase: str
    rgb: tuple[int, int, int]
    shape: str
    """One of ``disc``, ``square``, ``triangle``, ``bar``, ``ring``, ``diamond``."""


VERBS: tuple[Verb, ...] = (
    Verb("push-left", "pushes the {obj} to the left", (-1.0, 0.0)),
    Verb("push-right", "pushes the {obj} to the right", (1.0, 0.0)),
    Verb("lift", "lifts the {obj} up", (0.0, -1.0)),
    Verb("lower", "puts the {obj} down", (0.0, 1.0)),
    Verb("shake", "shakes the {obj}", (0.0, 0.0)),
)

NOUNS: tuple[Noun, ...] = (
    Noun("ball:red", "red ball", (220, 40, 40), "disc"),
    Noun("box:blue", "blue box", (40, 80, 230), "square"),
    Noun("cone:green", "green cone", (40, 190, 60), "triangle"),
    Noun("bottle:yellow", "yellow bottle", (235, 210, 40), "bar"),
    Noun("plate:white", "white plate", (240, 240, 240), "ring"),
    Noun("gem:purple", "purple gem", (150, 60, 200), "diamond"),
)


@dataclass(frozen=True)
class Event:
    """One narrated action: object ``noun`` undergoes ``verb`` during [start, end] seconds."""

    start: float
    end: float
    verb: int
    noun: int

    def narration(self) -> str:
        return f"#C C {VERBS[self.verb].phrase.format(obj=NOUNS[self.noun].phrase)}"

    def short_narration(self) -> str:
        """EK-100 style imperative narration, e.g. ``push-left red ball``."""
        return f"{VERBS[self.verb].name.replace('-', ' ')} {NOUNS[self.noun].phrase}"


@dataclass(frozen=True)
class VideoSpec:
    path: Path
    width: int
    height: int
    fps: int
    duration: float
    seed: int
    crf: int = 20
    """Quality of the raw sample (camera originals are high quality; chunking re-encodes)."""


# Pixels per second an object moves during an event, relative to the frame height.
_SPEED = 0.35
_OBJECT_SIZE = 0.16


@dataclass(frozen=True)
class Script:
    """What happens in one video: which objects lie where at the start, and the events."""

    objects: list[int]
    """Noun ids of the objects on the table."""
    start_positions: list[tuple[float, float]]
    """Object centres at t=0 as fractions of (width, height)."""
    events: list[Event]


def plan_script(spec: VideoSpec, objects: list[int], rng: np.random.Generator) -> Script:
    """Non-overlapping 1–3.5 s events separated by short pauses, each feasible (an object near the
    left edge is not pushed further left)."""
    events: list[Event] = []
    start_positions = _initial_positions(len(objects), rng)
    positions = list(start_positions)
    t = float(rng.uniform(0.3, 1.0))
    while True:
        length = float(rng.uniform(1.0, 3.5))
        if t + length > spec.duration - 0.2:
            return Script(objects, start_positions, events)
        slot = int(rng.integers(len(objects)))
        x, y = positions[slot]
        travel = _SPEED * length * spec.height / spec.width, _SPEED * length
        feasible = [
            v
            for v, verb in enumerate(VERBS)
            if 0.1 <= x + verb.direction[0] * travel[0] <= 0.9 and 0.15 <= y + verb.direction[1] * travel[1] <= 0.85
        ]
        verb = int(rng.choice(feasible))
        dx, dy = VERBS[verb].direction
        positions[slot] = (x + dx * travel[0], y + dy * travel[1])
        events.append(Event(round(t, 3), round(t + length, 3), verb, objects[slot]))
        t += length + float(rng.uniform(0.2, 1.2))


def _initial_positions(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    # Spread objects over columns so that they rarely overlap; coordinates are fractions of the frame.
    columns = (np.arange(n) + 0.5) / n * 0.7 + 0.15
    return [(float(c), float(rng.uniform(0.3, 0.7))) for c in rng.permutation(columns)]


def object_tracks(spec: VideoSpec, script: Script) -> np.ndarray:
    """Centre of every object in every frame, as fractions of (width, height): (frames, objects, 2)."""
    frames = round(spec.duration * spec.fps)
    tracks = np.empty((frames, len(script.objects), 2))
    tracks[:] = np.array(script.start_positions)
    slot_of = {noun: i for i, noun in enumerate(script.objects)}
    times = np.arange(frames) / spec.fps
    for event in script.events:
        slot = slot_of[event.noun]
        dx, dy = VERBS[event.verb].direction
        active = (times >= event.start) & (times < event.end)
        after = times >= event.end
        elapsed = np.clip(times - event.start, 0, event.end - event.start)
        if (dx, dy) == (0.0, 0.0):
            # Shaking: a fast horizontal oscillation that returns the object to where it was.
            tracks[active, slot, 0] += 0.03 * np.sin(2 * np.pi * 3 * elapsed[active])
            continue
        step_x = dx * _SPEED * elapsed * spec.height / spec.width
        step_y = dy * _SPEED * elapsed
        tracks[active | after, slot, 0] += step_x[active | after]
        tracks[active | after, slot, 1] += step_y[active | after]
    return tracks


def render_video(spec: VideoSpec, script: Script) -> None:
    """Render the script and encode it with libx264 to ``spec.path`` (atomically)."""
    rng = np.random.default_rng(spec.seed)
    tracks = object_tracks(spec, script)
    background = _table_texture(spec.width * 2, spec.height * 2, rng)
    camera = _camera_path(len(tracks), spec, rng)
    sprites = [_sprite(NOUNS[n], int(_OBJECT_SIZE * spec.height)) for n in script.objects]
    # Sensor noise, cycled: changing noise costs bits as it does in real footage. It is added in
    # uint8 without clipping, which is safe because texture and sprites stay below 255 - 6.
    noise = rng.integers(0, 6, size=(6, spec.height, spec.width, 3), dtype=np.uint8)
    frame = np.empty((spec.height, spec.width, 3), dtype=np.uint8)

    tmp = partial_name(spec.path)
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(spec.fps))
            stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
            stream.options = {"crf": str(spec.crf), "preset": "superfast"}
            stream.codec_context.thread_count = 1
            for i, centres in enumerate(tracks):
                cx, cy = camera[i]
                np.add(background[cy : cy + spec.height, cx : cx + spec.width], noise[i % len(noise)], out=frame)
                for sprite, (fx, fy) in zip(sprites, centres, strict=True):
                    # Objects live on the table, so the camera's motion moves them too.
                    _paste(frame, sprite, int(fx * spec.width), int(fy * spec.height))
                image = av.VideoFrame.from_ndarray(frame, format="rgb24")
                container.mux(stream.encode(image))
            container.mux(stream.encode(None))
        os.replace(tmp, spec.path)
    finally:
        tmp.unlink(missing_ok=True)


def _table_texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A wood-like table: low-frequency colour blobs plus fine grain."""
    coarse = rng.uniform(0, 1, size=(height // 32 + 2, width // 32 + 2, 1))
    rows = np.linspace(0, coarse.shape[0] - 1, height)
    cols = np.linspace(0, coarse.shape[1] - 1, width)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, coarse.shape[0] - 1), np.minimum(c0 + 1, coarse.shape[1] - 1)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    smooth = (
        coarse[r0][:, c0] * (1 - fr) * (1 - fc)
        + coarse[r1][:, c0] * fr * (1 - fc)
        + coarse[r0][:, c1] * (1 - fr) * fc
        + coarse[r1][:, c1] * fr * fc
    )
    grain = np.sin(np.arange(height)[:, None, None] * 0.9 + rng.normal(0, 0.5, size=(height, 1, 1))) * 6
    base = np.array([150, 110, 75]) + (smooth - 0.5) * np.array([70, 60, 50])
    return np.clip(base + grain, 0, 240).astype(np.uint8)


def _camera_path(frames: int, spec: VideoSpec, rng: np.random.Generator) -> np.ndarray:
    """Top-left corner of the camera window on the table: a slow random drift plus hand shake."""
    drift = np.cumsum(rng.normal(0, 0.6, size=(frames, 2)), axis=0)
    drift = np.cumsum(drift * 0.002, axis=0) * spec.fps / 30
    shake = rng.normal(0, 1.0, size=(frames, 2))
    centre = np.array([spec.width / 2, spec.height / 2])
    path = centre + drift + shake
    limit = np.array([spec.width, spec.height])
    # Reflect at the texture's edges so the window always stays on the table.
    path = np.abs((path + limit) % (2 * limit) - limit)
    return path.astype(int)


def _sprite(noun: Noun, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(colour image, alpha mask) of an object, shaded so it is not a flat patch."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    shapes = {
        "disc": xx**2 + yy**2 <= 1,
        "square": (abs(xx) <= 0.8) & (abs(yy) <= 0.8),
        "triangle": (yy >= -0.9) & (yy <= 0.9) & (abs(xx) <= (yy + 0.9) / 1.8),
        "bar": (abs(xx) <= 0.35) & (abs(yy) <= 1),
        "ring": (xx**2 + yy**2 <= 1) & (xx**2 + yy**2 >= 0.35),
        "diamond": abs(xx) + abs(yy) <= 1,
    }
    mask = shapes[noun.shape]
    shade = (1.1 - 0.25 * (xx + yy))[..., None]
    colour = np.clip(np.array(noun.rgb) * shade, 0, 245).astype(np.uint8)
    return colour, mask


def _paste(frame: np.ndarray, sprite: tuple[np.ndarray, np.ndarray], cx: int, cy: int) -> None:
    colour, mask = sprite
    size = mask.shape[0]
    x0, y0 = cx - size // 2, cy - size // 2
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + size, frame.shape[1]), min(y0 + size, frame.shape[0])
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sub_mask = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    region = frame[fy0:fy1, fx0:fx1]
    region[sub_mask] = colour[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0][sub_mask]
