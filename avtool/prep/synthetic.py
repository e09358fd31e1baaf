"""Synthetic egocentric-like footage whose narrations describe what is visible.

Each video shows a few coloured objects on a cluttered wooden table seen by a head-worn camera. A
script of events moves one object at a time ("#C C pushes the red ball to the left"), so a video
model trained on the sample has real signal to learn: the colour and shape say the noun, the motion
says the verb.

The footage is made to cost what handheld egocentric video costs to encode and decode: texture at
every scale down to single pixels, sensor noise that is new in every frame, a head that drifts,
sways and shakes and now and then glances away and back (blurred along the motion), slow exposure
and white-balance drift, and hands that reach in from the bottom edge. The objects stay clearly
visible: hands pass under the objects they hold, the camera glances away only between narrated
events, and the colour drift is a few percent.

Every per-frame quantity of a video is planned up front from its seed (``plan_footage``), so any
range of frames renders the same pixels: long videos are rendered as segments on several cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
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
    texture: float = 1.0
    """Contrast of the table's texture. Chunk bitrate grows with the pixels per frame, so a scene shot
    with fewer pixels (4:3) gets a busier table to cost as much per second as a 16:9 one."""
    crf: int = 23
    """Quality of the raw sample (chunking re-encodes it; crf 23 keeps the raw files at ~3 Mb/s while
    the chunks come out as with crf 20)."""

    @property
    def frames(self) -> int:
        return round(self.duration * self.fps)


# Speed of an object during an event, sideways and up or down, and its size, relative to the frame
# height (lifting is slower than pushing, and the view is shorter than it is wide).
_SPEED = (0.35, 0.2)
_OBJECT_SIZE = 0.16
# Events last 1-3 s, as LaViLa's clips of Ego4D narrations do, and follow each other after short
# pauses: one narration per ~2.3 s, Ego4D's density. Now and then a longer pause: the wearer looks around.
EVENT_SECONDS = (1.0, 3.0)
PAUSE_SECONDS = (0.15, 0.8)
LOOK_AROUND_SECONDS = (1.2, 2.0)
_LOOK_AROUND_CHANCE = 0.12


@dataclass(frozen=True)
class Script:
    """What happens in one video: which objects lie where at the start, and the events."""

    objects: list[int]
    """Noun ids of the objects on the table."""
    start_positions: list[tuple[float, float]]
    """Object centres at t=0 as fractions of (width, height) of the camera's resting view."""
    events: list[Event]


def plan_script(spec: VideoSpec, objects: list[int], rng: np.random.Generator) -> Script:
    """Non-overlapping 1-3 s events separated by short pauses (now and then a longer one, in which the
    camera looks around). Each verb is about as frequent as the others; each event is feasible (an
    object near the left edge is not pushed further left) and keeps the object clear of the others."""
    events: list[Event] = []
    start_positions = _initial_positions(len(objects), rng)
    positions = list(start_positions)
    t = float(rng.uniform(0.3, 1.0))
    while True:
        # The last event is cut short to fit the video, if it can still last the shortest event's time.
        length = min(float(rng.uniform(*EVENT_SECONDS)), spec.duration - 0.2 - t)
        if length < EVENT_SECONDS[0]:
            return Script(objects, start_positions, events)
        verb = int(rng.integers(len(VERBS)))
        move = _find_move(spec, positions, verb, length, rng)
        if move is None:  # nothing can make this move now: shaking in place always can
            verb, move = _SHAKE, (int(rng.integers(len(objects))), length)
        slot, length = move
        positions[slot] = _moved(spec, positions[slot], verb, length)
        start = round(t, 3)
        events.append(Event(start, round(start + length, 3), verb, objects[slot]))
        pause = LOOK_AROUND_SECONDS if rng.uniform() < _LOOK_AROUND_CHANCE else PAUSE_SECONDS
        t += length + float(rng.uniform(*pause))


_SHAKE = next(i for i, v in enumerate(VERBS) if v.direction == (0.0, 0.0))


def plan_action_script(
    spec: VideoSpec, objects: list[int], verb: int, rng: np.random.Generator, noun: int | None = None
) -> Script:
    """A clip of one action class: ``verb`` done again and again (to ``noun``'s object if given, else to
    whichever object it can move), with short pauses, until the clip ends or no object can take it any more
    (a Kinetics-style clip)."""
    slots = None if noun is None else [objects.index(noun)]
    events: list[Event] = []
    for _ in range(100):  # a table on which the action can happen at least once (lowering needs room below)
        start_positions = _initial_positions(len(objects), rng)
        if _find_move(spec, start_positions, verb, EVENT_SECONDS[0], rng, slots) is not None:
            break
    positions = list(start_positions)
    t = float(rng.uniform(0.2, 0.6))
    while (length := min(float(rng.uniform(*EVENT_SECONDS)), spec.duration - 0.2 - t)) >= EVENT_SECONDS[0]:
        move = _find_move(spec, positions, verb, length, rng, slots)
        if move is None:
            break
        slot, length = move
        positions[slot] = _moved(spec, positions[slot], verb, length)
        start = round(t, 3)
        events.append(Event(start, round(start + length, 3), verb, objects[slot]))
        t += length + float(rng.uniform(*PAUSE_SECONDS))
    return Script(objects, start_positions, events)


def _moved(spec: VideoSpec, position: tuple[float, float], verb: int, length: float) -> tuple[float, float]:
    """Where ``verb`` for ``length`` seconds takes an object (fractions of the frame)."""
    dx, dy = VERBS[verb].direction
    return position[0] + dx * _SPEED[0] * length * spec.height / spec.width, position[1] + dy * _SPEED[1] * length


def _find_move(
    spec: VideoSpec,
    positions: list[tuple[float, float]],
    verb: int,
    length: float,
    rng: np.random.Generator,
    slots: list[int] | None = None,
) -> tuple[int, float] | None:
    """(object slot, seconds) for ``verb``: objects (``slots``, else all) in random order, each tried at
    ``length`` and then shorter (an object far up cannot be lifted for long)."""
    for slot in rng.permutation(len(positions) if slots is None else slots):
        for seconds in (length, (length + EVENT_SECONDS[0]) / 2, EVENT_SECONDS[0]):
            x, y = _moved(spec, positions[slot], verb, seconds)
            # Away from the edges by more than the camera's drift, so that objects stay in view.
            if 0.12 <= x <= 0.88 and 0.18 <= y <= 0.8 and _path_is_clear(spec, positions, int(slot), (x, y)):
                return int(slot), seconds
    return None


def _path_is_clear(spec: VideoSpec, positions: list[tuple[float, float]], slot: int, end: tuple[float, float]) -> bool:
    """Whether object ``slot`` can move in a straight line to ``end`` keeping a gap of a quarter of its
    size to every other object, so that no object hides another."""
    scale = np.array([spec.width, spec.height])
    others = np.array([p for i, p in enumerate(positions) if i != slot]).reshape(-1, 2) * scale
    start = np.array(positions[slot])
    path = (start + np.linspace(0, 1, 9)[:, None] * (np.array(end) - start)) * scale
    gaps = np.linalg.norm(path[:, None, :] - others[None, :, :], axis=-1)
    return bool(gaps.min(initial=np.inf) >= 1.25 * _OBJECT_SIZE * spec.height)


def _initial_positions(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    # Spread objects over columns so that they rarely overlap; coordinates are fractions of the frame.
    columns = (np.arange(n) + 0.5) / n * 0.7 + 0.15
    return [(float(c), float(rng.uniform(0.3, 0.7))) for c in rng.permutation(columns)]


def object_tracks(spec: VideoSpec, script: Script) -> np.ndarray:
    """Centre of every object in every frame, as fractions of (width, height) of the camera's resting
    view of the table: (frames, objects, 2)."""
    frames = spec.frames
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
        step_x = dx * _SPEED[0] * elapsed * spec.height / spec.width
        step_y = dy * _SPEED[1] * elapsed
        tracks[active | after, slot, 0] += step_x[active | after]
        tracks[active | after, slot, 1] += step_y[active | after]
    return tracks


_MARGIN = 16
"""Pixels around the view kept for motion blur (the longest blur streak is 2·_MARGIN)."""
_NOISE_PAD = 96
"""The noise fields exceed the canvas by this much, so that each frame crops them at a new offset."""


@dataclass(frozen=True)
class Footage:
    """Everything that varies per frame, for the whole video."""

    world: np.ndarray
    """The table, (rows, cols, 3) uint8, larger than the view so that the camera can move over it."""
    rest: tuple[int, int]
    """World (x, y) of the view's top-left corner when the camera is at rest."""
    camera: np.ndarray
    """(frames, 2) world offset of the view from ``rest``, in pixels; objects move with the table."""
    blur: np.ndarray
    """(frames, 2) the view's travel during each frame's exposure, in pixels: the blur streak."""
    gain: np.ndarray
    """(frames, 3) exposure × white balance of each channel."""
    noise: np.ndarray
    """(2, rows, cols, 3) sensor noise fields in uint8 two's complement, each |n| <= 6."""
    noise_offsets: np.ndarray
    """(frames, 4) (y, x) of each frame's crop of each noise field: two independent offsets make
    every frame's noise new, at the cost of two slices instead of a fresh random draw."""
    tracks: np.ndarray
    """(frames, objects, 2) object centres (see ``object_tracks``)."""
    hands: np.ndarray
    """(frames, 2, 2) palm centres of the left and right hand, in the units of ``tracks``; NaN when away."""
    sprites: list[tuple[np.ndarray, np.ndarray]]


def plan_footage(spec: VideoSpec, script: Script) -> Footage:
    """The video's table, camera path, exposure, noise and hands, all drawn from ``spec.seed``."""
    rng = np.random.default_rng([spec.seed, 7])
    camera, blur = _camera_path(spec, script, rng)
    reach = np.ceil(np.abs(camera).max(axis=0)).astype(int) + _MARGIN + 2
    world = _table_texture(spec.width + 2 * reach[0], spec.height + 2 * reach[1], spec.texture, rng)
    noise_shape = (spec.height + _NOISE_PAD, spec.width + _NOISE_PAD, 3)
    return Footage(
        world=world,
        rest=(int(reach[0]), int(reach[1])),
        camera=camera,
        blur=blur,
        gain=_gain_path(spec, camera, rng),
        noise=np.stack([_noise_field(noise_shape, rng) for _ in range(2)]),
        noise_offsets=rng.integers(0, _NOISE_PAD, size=(spec.frames, 4)),
        tracks=object_tracks(spec, script),
        hands=_hand_tracks(spec, script, rng),
        sprites=[_sprite(NOUNS[n], int(_OBJECT_SIZE * spec.height)) for n in script.objects],
    )


def _value_noise(rows: int, cols: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``cell`` pixels across (bilinear over a random grid)."""
    grid = rng.uniform(0, 1, size=(int(rows / cell) + 2, int(cols / cell) + 2))
    r, c = np.arange(rows) / cell, np.arange(cols) / cell
    r0, c0 = r.astype(int), c.astype(int)
    fr, fc = (r - r0)[:, None], (c - c0)[None, :]
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c0 + 1] * fc
    bottom = grid[r0 + 1][:, c0] * (1 - fc) + grid[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


# Luminance octaves of the table, (cell size in pixels, amplitude): the fine ones nearly as strong as
# the coarse ones, as in close-up footage of a worn surface. Tuned so that 288p chunks of a 16:9 view
# at crf 23 come out at ~1 Mb/s (the paper's ρ for Ego4D); `texture` scales them all.
_OCTAVES = ((96, 15.0), (40, 15.0), (16, 22.0), (6, 45.0), (2.5, 48.0), (1, 30.0))
# Muted colours of the clutter (greys, crust and peel tones), far from every object's colour.
_CLUTTER_RGB = np.array(
    [[90, 90, 95], [175, 165, 145], [170, 150, 110], [120, 95, 70], [60, 55, 50], [150, 160, 150], [185, 170, 140]],
    dtype=float,
)


def _table_texture(cols: int, rows: int, texture: float, rng: np.random.Generator) -> np.ndarray:
    """A worn, cluttered wooden table: planks with grain, stains, seams, crumbs and small muted items."""
    yy = np.arange(rows)[:, None]
    lum = sum(a * (_value_noise(rows, cols, cell, rng) - 0.5) for cell, a in _OCTAVES)
    # Grain: thin wavy stripes along the planks, of varying contrast.
    warp = _value_noise(rows, cols, 60, rng) * 18
    lum = lum + 30 * np.sin(yy * 1.7 + warp) * _value_noise(rows, cols, 30, rng)
    # Planks: a dark seam, two pixels wide, every 50-90 px.
    seams = np.cumsum(rng.uniform(50, 90, size=rows // 50 + 2)).astype(int)
    seams = seams[seams < rows - 1]
    seam_rows = np.zeros(rows, bool)
    seam_rows[seams] = seam_rows[seams + 1] = True
    lum = lum - 87 * seam_rows[:, None]
    # Crumbs and specks: single pixels, light and dark.
    specks = rng.uniform(0, 1, size=(rows, cols)) < 0.03
    lum = lum + np.where(specks, rng.choice([-110.0, 100.0], size=(rows, cols)), 0.0)
    # A warm wood tone whose hue wanders a little between stains.
    hue = _value_noise(rows, cols, 120, rng)[..., None] - 0.5
    rgb = np.array([148.0, 112.0, 80.0]) + hue * np.array([30.0, 10.0, -20.0])
    rgb = rgb + texture * lum[..., None] * np.array([1.0, 0.85, 0.7])
    _scatter_clutter(rgb, rng)
    return np.clip(rgb, 20, 225).astype(np.uint8)


def _scatter_clutter(rgb: np.ndarray, rng: np.random.Generator) -> None:
    """Small items with sharp edges, two per 100×100 px: blobs 3-14 px across and strokes 10-40 px long."""
    rows, cols = rgb.shape[:2]
    for _ in range(rows * cols // 5000):
        cx, cy = rng.uniform(0, cols), rng.uniform(0, rows)
        colour = _CLUTTER_RGB[rng.integers(len(_CLUTTER_RGB))] + rng.normal(0, 8, size=3)
        angle = rng.uniform(0, np.pi)
        blob = rng.uniform() < 0.5
        a, b = (rng.uniform(1.5, 7), rng.uniform(1.5, 5)) if blob else (rng.uniform(5, 20), rng.uniform(0.5, 1.2))
        r = int(np.ceil(a)) + 1
        y0, y1 = max(0, int(cy) - r), min(rows, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(cols, int(cx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = (yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        shade = 1.0 + 0.15 * np.clip(-(u + v) / (a + b), -1, 1)  # lit from the top left
        rgb[y0:y1, x0:x1][inside] = colour * shade[inside][:, None]


def _noise_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Sensor noise, mostly luminance with some chroma, as uint8 two's complement with |n| <= 6."""
    luma = rng.normal(0, 1.6, size=shape[:2] + (1,))
    chroma = rng.normal(0, 0.8, size=shape)
    return np.clip(np.round(luma + chroma), -6, 6).astype(np.int8).view(np.uint8)


def _smooth_walk(frames: int, fps: float, seconds: float, rng: np.random.Generator, dims: int = 2) -> np.ndarray:
    """A stationary random process of unit deviation that forgets in ``seconds`` (Ornstein-Uhlenbeck)."""
    a = np.exp(-1.0 / (seconds * fps))
    steps = rng.normal(0, np.sqrt(1 - a * a), size=(frames, dims))
    out = np.empty((frames, dims))
    value = rng.normal(0, 1, size=dims)
    for i in range(frames):  # a few scalars per frame: negligible next to rendering the frame
        value = a * value + steps[i]
        out[i] = value
    return out


def _camera_path(spec: VideoSpec, script: Script, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(offset, blur streak) per frame. The head drifts around the work area, sways and bobs with the
    wearer's movement, trembles, and in long pauses glances away and back; the view's travel over
    half a frame (the exposure) is its blur. While the hands work (during events) the head steadies,
    as people's do when they watch their hands: then the object's own motion is what stands out."""
    frames, h = spec.frames, spec.height
    t = np.arange(frames) / spec.fps
    watching = np.zeros((frames, 1))
    for event in script.events:
        watching[(t >= event.start) & (t < event.end)] = 1.0
    wander = 1.0 - 0.8 * _lag(watching, spec.fps, 0.15)
    drift = _smooth_walk(frames, spec.fps, 1.5, rng) * (0.045 * h) * wander
    sway = _smooth_walk(frames, spec.fps, 0.25, rng) * (0.012 * h) * wander
    # Head bob (1.4-2.2 Hz), sway of the step (3-5 Hz) and tremor (7-11 Hz): a few pixels each.
    phase = rng.uniform(0, 2 * np.pi, size=(3, 2))
    freq = rng.uniform([[1.4], [3.0], [7.0]], [[2.2], [5.0], [11.0]], size=(3, 2))
    amp = np.array([[0.008], [0.004], [0.0015]]) * h
    shake = sum(amp[k] * np.sin(2 * np.pi * freq[k] * t[:, None] + phase[k]) for k in range(3))
    offset = drift + sway + shake + _look_arounds(spec, script, t, rng)
    return offset, np.gradient(offset, axis=0) * 0.5


def _look_arounds(spec: VideoSpec, script: Script, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fast glances away (a fifth to a third of the frame width) and back, in each pause between
    events long enough for one, so that no narrated event is looked away from."""
    out = np.zeros((len(t), 2))
    ends = [0.0] + [e.end for e in script.events]
    starts = [e.start for e in script.events] + [spec.duration]
    for gap_start, gap_end in zip(ends, starts, strict=True):
        if gap_end - gap_start < LOOK_AROUND_SECONDS[0] - 0.05:
            continue
        angle = rng.uniform(0, 2 * np.pi)
        target = rng.uniform(0.18, 0.32) * spec.width * np.array([np.cos(angle), 0.6 * np.sin(angle)])
        # Out and back as a raised cosine, leaving 0.1 s at each end of the pause.
        a, b = gap_start + 0.1, gap_end - 0.1
        inside = (t >= a) & (t < b)
        out[inside] = target * (0.5 - 0.5 * np.cos(2 * np.pi * (t[inside] - a) / (b - a)))[:, None]
    return out


def _gain_path(spec: VideoSpec, camera: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel gain: auto-exposure drifting by a few percent and following, with a lag, where the
    camera looks (a brighter or a darker part of the room), and a slowly wandering white balance.
    Small enough that every object keeps its colour's name."""
    exposure = 1.0 + 0.04 * _smooth_walk(spec.frames, spec.fps, 4.0, rng, dims=1)
    away = np.linalg.norm(camera, axis=1, keepdims=True) / spec.width
    exposure *= 1.0 + float(rng.choice([-0.25, 0.25])) * _lag(away, spec.fps, 0.3)
    balance = 1.0 + 0.02 * _smooth_walk(spec.frames, spec.fps, 8.0, rng, dims=3)
    return np.clip(exposure * balance, 0.8, 1.15)


def _lag(x: np.ndarray, fps: float, seconds: float) -> np.ndarray:
    """``x`` followed by a first-order lag of ``seconds`` (how auto-exposure reacts)."""
    a = np.exp(-1.0 / (seconds * fps))
    out = np.empty_like(x)
    value = x[0]
    for i in range(len(x)):
        value = a * value + (1 - a) * x[i]
        out[i] = value
    return out


def _hand_tracks(spec: VideoSpec, script: Script, rng: np.random.Generator) -> np.ndarray:
    """Palm centres of two hands (NaN when away). For most events a hand comes in from the bottom
    edge, holds the object from below while it moves, and withdraws."""
    frames = spec.frames
    t = np.arange(frames) / spec.fps
    hands = np.full((frames, 2, 2), np.nan)
    tracks = object_tracks(spec, script)
    slot_of = {noun: i for i, noun in enumerate(script.objects)}
    for event in script.events:
        if rng.uniform() < 0.3:
            continue
        slot = slot_of[event.noun]
        reach_in, reach_out = rng.uniform(0.25, 0.5), rng.uniform(0.25, 0.5)
        idx = np.nonzero((t >= event.start - reach_in) & (t < event.end + reach_out))[0]
        # The hand on the object's side, unless it is still withdrawing from the last event.
        side = int(tracks[idx[0], slot, 0] >= 0.5)
        if not np.isnan(hands[idx, side, 0]).all():
            side = 1 - side
        held = np.clip(idx, round(event.start * spec.fps), min(round(event.end * spec.fps), frames) - 1)
        grip = tracks[held, slot] + np.array([0.0, _OBJECT_SIZE * 0.75])
        # Away from the grip: 0 while holding, 1 below the bottom edge.
        before = np.clip((event.start - t[idx]) / reach_in, 0, 1)
        after = np.clip((t[idx] - event.end) / reach_out, 0, 1)
        away = np.maximum(before, after) ** 2
        grip[:, 1] += away * (1.4 - grip[:, 1])
        hands[idx, side] = grip
    return hands


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


_SKIN = np.array([196.0, 148.0, 122.0])


def _segment_distance(xx: np.ndarray, yy: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance of every pixel to the segment from ``a`` to ``b``."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    s = np.clip(((xx - ax) * dx + (yy - ay) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(xx - ax - s * dx, yy - ay - s * dy)


def _hand_sprite(width: int, length: int, lean: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(colour, mask, palm position) of a hand seen from above reaching from below: a forearm
    ``length`` pixels long leaning ``lean`` pixels sideways per pixel down, a palm and four fingers,
    each a capsule shaded darker towards its edges. Drawn once per video and pasted like an object."""
    r = width / 2
    pad = int(2.2 * r) + 1
    cols = 2 * pad + int(abs(lean) * length)
    px = pad if lean >= 0 else cols - pad
    py = pad
    yy, xx = np.mgrid[0 : py + length, 0:cols]
    elbow = (px + lean * length, py + length)
    # Each part's "depth" is 1 at its axis and 0 at its edge; the hand is where any part's is positive.
    depth = 1 - _segment_distance(xx, yy, (px, py + 0.5 * r), elbow) / (0.85 * r)
    depth = np.maximum(depth, 1 - _segment_distance(xx, yy, (px - 0.3 * r, py), (px + 0.3 * r, py)) / r)
    for k in range(4):
        fx = px + (k - 1.5) * 0.45 * r
        depth = np.maximum(depth, 1 - _segment_distance(xx, yy, (fx, py - 0.6 * r), (fx, py - 1.6 * r)) / (0.22 * r))
    shade = 0.8 + 0.25 * np.sqrt(np.clip(depth, 0, 1))
    return np.clip(_SKIN * shade[..., None], 0, 235).astype(np.uint8), depth > 0, (px, py)


def _paste_hand(canvas: np.ndarray, hand: tuple[np.ndarray, np.ndarray, tuple[int, int]], x: int, y: int) -> None:
    colour, mask, (px, py) = hand
    rows, cols = mask.shape
    x0, y0 = x - px, y - py
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + cols, canvas.shape[1]), min(y0 + rows, canvas.shape[0])
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sub = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    canvas[fy0:fy1, fx0:fx1][sub] = colour[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0][sub]


def _paste(canvas: np.ndarray, sprite: tuple[np.ndarray, np.ndarray], cx: int, cy: int) -> None:
    colour, mask = sprite
    size = mask.shape[0]
    x0, y0 = cx - size // 2, cy - size // 2
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + size, canvas.shape[1]), min(y0 + size, canvas.shape[0])
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sub_mask = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    region = canvas[fy0:fy1, fx0:fx1]
    region[sub_mask] = colour[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0][sub_mask]


def render_frames(spec: VideoSpec, footage: Footage, start: int, stop: int) -> Iterator[np.ndarray]:
    """RGB frames ``start`` to ``stop`` (exclusive), each (height, width, 3) uint8. The same array is
    reused: consume each frame before asking for the next."""
    h, w, m = spec.height, spec.width, _MARGIN
    acc = np.empty((h, w, 3), dtype=np.uint16)
    frame = np.empty((h, w, 3), dtype=np.uint8)
    # The left hand's forearm leans right towards the body, the right hand's left.
    hands = [_hand_sprite(int(0.13 * h), int(1.3 * h), lean) for lean in (0.25, -0.25)]
    for i in range(start, stop):
        # The view plus a margin for the blur: the table, then hands (under the objects they hold),
        # then the objects, all moving with the table.
        ox, oy = footage.camera[i]
        left, top = int(np.floor(ox)) - m, int(np.floor(oy)) - m
        x0, y0 = footage.rest[0] + left, footage.rest[1] + top
        canvas = footage.world[y0 : y0 + h + 2 * m, x0 : x0 + w + 2 * m].copy()
        for hand, (hx, hy) in zip(hands, footage.hands[i], strict=True):
            if not np.isnan(hx):
                _paste_hand(canvas, hand, int(hx * w - left), int(hy * h - top))
        for sprite, (fx, fy) in zip(footage.sprites, footage.tracks[i], strict=True):
            _paste(canvas, sprite, int(fx * w - left), int(fy * h - top))
        taps = _blur_taps(footage.blur[i])
        _blur_into(acc, canvas, footage.blur[i], taps, ox - np.floor(ox), oy - np.floor(oy))
        _expose(frame, acc, footage.gain[i], taps)
        ny0, nx0, ny1, nx1 = footage.noise_offsets[i]
        np.add(frame, footage.noise[0, ny0 : ny0 + h, nx0 : nx0 + w], out=frame)
        np.add(frame, footage.noise[1, ny1 : ny1 + h, nx1 : nx1 + w], out=frame)
        yield frame


def _blur_taps(streak: np.ndarray) -> int:
    """Samples averaged along a blur streak: a power of two, more for longer streaks."""
    length = float(np.hypot(*streak))
    return 2 if length < 2 else 4 if length < 5 else 8


def _blur_into(acc: np.ndarray, canvas: np.ndarray, streak: np.ndarray, taps: int, fx: float, fy: float) -> None:
    """Sum into ``acc`` the canvas sampled at ``taps`` points along the streak, centred at the sub-pixel
    camera position (fx, fy)."""
    h, w = acc.shape[:2]
    acc[:] = 0
    for k in range(taps):
        s = (k + 0.5) / taps - 0.5
        dx = int(np.clip(np.floor(_MARGIN + fx + s * streak[0] + 0.5), 0, 2 * _MARGIN))
        dy = int(np.clip(np.floor(_MARGIN + fy + s * streak[1] + 0.5), 0, 2 * _MARGIN))
        acc += canvas[dy : dy + h, dx : dx + w]


def _expose(frame: np.ndarray, acc: np.ndarray, gain: np.ndarray, taps: int) -> None:
    """frame = mean of the taps × gain, clipped to [12, 243] so that adding two noise fields (|n| <= 12
    together) cannot wrap around; through a lookup table per channel, numpy's cheapest per-pixel map."""
    levels = np.arange(256 * taps) / taps
    lut = np.clip(np.round(levels[None, :] * gain[:, None]), 12, 243).astype(np.uint8)
    for c in range(3):
        np.take(lut[c], acc[..., c], out=frame[..., c])


def segments(spec: VideoSpec, seconds: float) -> list[tuple[int, int]]:
    """Frame ranges of ``seconds`` each (the last one shorter) covering the video."""
    step = max(1, round(seconds * spec.fps))
    return [(a, min(a + step, spec.frames)) for a in range(0, spec.frames, step)]


def render_video(
    spec: VideoSpec, script: Script, frames: tuple[int, int] | None = None, path: Path | None = None
) -> None:
    """Render the script, or only its frames [start, stop), and encode it with libx264 to ``path``
    (default ``spec.path``), atomically."""
    path = path or spec.path
    start, stop = frames or (0, spec.frames)
    footage = plan_footage(spec, script)
    tmp = partial_name(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(spec.fps))
            stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
            stream.options = {"crf": str(spec.crf), "preset": "superfast"}
            stream.codec_context.thread_count = 1  # one core per job, and the same bytes on every machine
            for frame in render_frames(spec, footage, start, stop):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def concat_videos(pieces: Sequence[Path], path: Path) -> None:
    """Join video files encoded alike (each starting with a keyframe) into ``path`` without re-encoding,
    atomically."""
    tmp = partial_name(path)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            stream, offset = None, 0
            for piece in pieces:
                with av.open(str(piece)) as src:
                    source = src.streams.video[0]
                    if stream is None:
                        stream = out.add_stream_from_template(source)
                    end = offset
                    for packet in src.demux(source):
                        if packet.dts is None:  # the demuxer's empty flush packet
                            continue
                        packet.pts += offset
                        packet.dts += offset
                        end = max(end, packet.pts + packet.duration)
                        packet.stream = stream
                        out.mux(packet)
                    offset = end
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
