"""Phantom throughput on this machine: slices/s for generation alone and with PNG writing.

Run from the repository root: `.venv/bin/python benchmarks/phantom_speed.py [--n N]`.
Single process; the target is >= 100 slices/s at 256 px with PNGs written.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from core.phantom.generate import generate_stack, write_dataset  # noqa: E402
from core.subtypes import SUBTYPES  # noqa: E402


def generation_rate(size: int, n: int, stack_size: int = 5) -> float:
    rng = np.random.default_rng(0)
    generate_stack(rng, size, 1, "subdural")  # warm the cached coordinate grid
    kinds = [None, *SUBTYPES]
    start, done, i = time.perf_counter(), 0, 0
    while done < n:
        done += len(generate_stack(rng, size, stack_size, kinds[i % len(kinds)], 0.5))
        i += 1
    return done / (time.perf_counter() - start)


def writing_rate(size: int, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_dataset(Path(tmp), n, size=size, seed=0)
        return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="slices per measurement")
    n = ap.parse_args().n
    print(f"{'size':>5} {'generate slices/s':>18} {'generate+PNG slices/s':>22}")
    for size in (64, 128, 256):
        print(f"{size:>5} {generation_rate(size, n):>18.0f} {writing_rate(size, n):>22.0f}", flush=True)


if __name__ == "__main__":
    main()
