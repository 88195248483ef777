"""The Scan page's CAM grid for one session alone vs N sessions at once (threads sharing the cached models).

    python benchmarks/cam_sessions.py [--run checkpoints/demo] [--sessions 5] [--rounds 3] [--threads 2]

Every convolutional model of the run explains one 512 px phantom slice (core.explain.cam.explain_image,
gradcam), as the page does for an upload. Alone: the grid --rounds times in one thread. Concurrent:
--sessions threads each run the grid --rounds times, each in a different model order (as separate
sessions would reach the models). Printed: p50 grid seconds of each and their ratio; goal <= 4x.
Without --run and no checkpoints/demo, a tiny run (resnet18, mobilenet_v2 at 64 px) is trained in a
temporary folder first.
"""
import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.explain.cam import explain_image  # noqa: E402
from core.inference import load_predictor  # noqa: E402
from core.io import store as ckpt  # noqa: E402
from core.phantom.generate import generate_slice, render, write_dataset  # noqa: E402

GOAL_RATIO = 4.0


def tiny_run(folder: Path) -> Path:
    import train   # only here: training is the fallback, not what is measured
    write_dataset(folder / "data", n=60, size=64, seed=0)
    out = folder / "run"
    assert train.main(["--data", str(folder / "data"), "--models", "resnet18,mobilenet_v2", "--epochs", "1",
                       "--image-size", "64", "--out", str(out)]) == 0
    return out


def grid(predictors: list, image: np.ndarray, order: list[int]) -> float:
    start = time.perf_counter()
    for i in order:
        explain_image(predictors[i], image, "gradcam")
    return time.perf_counter() - start


def concurrent(predictors: list, image: np.ndarray, sessions: int, rounds: int) -> list[float]:
    n, times, guard = len(predictors), [], threading.Lock()
    start_together = threading.Barrier(sessions)

    def session(k: int):
        order = [(i + k) % n for i in range(n)][::-1 if k % 2 else 1]   # each session its own order
        start_together.wait()
        for _ in range(rounds):
            seconds = grid(predictors, image, order)
            with guard:
                times.append(seconds)
    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None)
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run) if args.run else ROOT / "checkpoints" / "demo"
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is None and not ckpt.list_models(run):
            run = tiny_run(Path(tmp))
        predictors = [p for p in (load_predictor(run / m) for m in ckpt.list_models(run)) if p.family.explained_by_cam]
        image = render(generate_slice(np.random.default_rng(7), 512, "subdural", 0.3).hu)
        grid(predictors, image, list(range(len(predictors))))   # warm-up: oneDNN kernel choice
        alone = [grid(predictors, image, list(range(len(predictors)))) for _ in range(args.rounds * 2)]
        together = concurrent(predictors, image, args.sessions, args.rounds)
    p1, pn = statistics.median(alone), statistics.median(together)
    print(f"{run.name}: {len(predictors)} CAM models, gradcam on a 512 px slice, {args.threads} torch threads, "
          f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"  1 session          p50 {p1:6.2f} s  (min {min(alone):.2f}, n={len(alone)})")
    print(f"  {args.sessions} sessions at once p50 {pn:6.2f} s  (min {min(together):.2f}, n={len(together)})")
    print(f"  ratio {pn / p1:.1f}x (goal <= {GOAL_RATIO:.0f}x: {'met' if pn / p1 <= GOAL_RATIO else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
