"""A larger narration pickle over the built-in sample's Ego4D videos, for throughput runs at the paper's batch.

    python benchmarks/dense_narrations.py SAMPLE/ego4d/ego4d_train.pkl OUT.pkl --clips 4096 [--seed 0]

The sample has a few dozen narrations, fewer than one per-GPU batch of 256. This writes ``--clips``
clips in the same LaViLa format, ``(video_uid, start_sec, end_sec, narration)``: each copies a real
narration of the sample and shifts its window by up to ±``--shift`` seconds (kept inside the video),
so the clips decode exactly like real ones (same videos, chunks and clip lengths) while a run can take
hundreds of full steps. The text stays true to the footage only approximately: use it to measure
speed, not accuracy.
"""

from __future__ import annotations

import argparse
import pickle
import random
from pathlib import Path


def densify(narrations: list[tuple], clips: int, shift: float, seed: int) -> list[tuple]:
    """``clips`` copies of ``narrations`` (cycled), each window moved by up to ``shift`` seconds."""
    if not narrations:
        raise SystemExit("the narration pickle is empty")
    rng = random.Random(seed)
    out = []
    for k in range(clips):
        video, start, end, text = narrations[k % len(narrations)][:4]
        delta = rng.uniform(-shift, shift)
        # Earlier: both ends move (not before 0 s); later: only the start moves, so the window never
        # runs past the video's end. A window that would shrink below 0.25 s keeps its place.
        new_start, new_end = max(0.0, start + delta), end + min(delta, 0.0)
        if new_end - new_start < 0.25:
            new_start, new_end = start, end
        out.append((video, round(new_start, 3), round(new_end, 3), text))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metadata", type=Path, help="LaViLa narration pickle of the sample (ego4d_train.pkl).")
    parser.add_argument("out", type=Path, help="Pickle to write.")
    parser.add_argument("--clips", type=int, default=4096, help="Clips to write.")
    parser.add_argument("--shift", type=float, default=0.5, help="Largest window shift, seconds.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the shifts.")
    args = parser.parse_args()
    narrations = pickle.loads(args.metadata.read_bytes())
    dense = densify(narrations, args.clips, args.shift, args.seed)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(pickle.dumps(dense))
    tmp.replace(args.out)
    print(f"wrote {len(dense)} clips over {len({n[0] for n in dense})} videos to {args.out}")


if __name__ == "__main__":
    main()
