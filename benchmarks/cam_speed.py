"""Grad-CAM latency per registry CNN: one hemorrhage map at native size, batch 1, on CPU threads.

    python benchmarks/cam_speed.py [--threads 2] [--repeats 5] [--channels-last] [--scorecam alexnet,resnet18]

Random weights (a map costs the same whatever the weights). Each model is built once, warmed up
with one map, then timed `repeats` times; the median and the best are printed next to the plain
inference forward (the floor: a CAM needs that forward anyway) and next to the library's GradCAM
called directly, which back-propagates through the whole network. The goal: all nine together
<= 1.5 s on a 2-core CPU. ScoreCAM (one forward per activation channel) is reported separately.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget  # noqa: E402

from core.explain.cam import cam_batch  # noqa: E402
from core.nets.build import cam_layers, create_model  # noqa: E402
from core.registry import CNN_NAMES, REGISTRY  # noqa: E402

GOAL_S = 1.5


def timed(fn, repeats: int) -> list[float]:
    fn()   # warm-up: first-call allocations and oneDNN kernel selection
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def library_gradcam(model, name, x):
    with GradCAM(model=model, target_layers=cam_layers(model)) as cam:
        cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)])
    model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true", help="run models and inputs in channels_last")
    ap.add_argument("--scorecam", default="alexnet,resnet18", help="models to time ScoreCAM on ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    print(f"CPU, {torch.get_num_threads()} threads, batch 1, native size, median (best) of {args.repeats}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':<20}{'size':>5}{'forward ms':>18}{'library GradCAM ms':>22}{'cam_batch ms':>20}")
    totals = {"forward": [0.0, 0.0], "library": [0.0, 0.0], "ours": [0.0, 0.0]}
    for name in CNN_NAMES:
        size = REGISTRY[name].input_size
        model = create_model(name).eval().to(memory_format=fmt)
        x = torch.randn(1, 3, size, size).contiguous(memory_format=fmt)

        def forward():
            with torch.inference_mode():
                model(x)

        runs = {"forward": timed(forward, args.repeats),
                "library": timed(lambda: library_gradcam(model, name, x), args.repeats),
                "ours": timed(lambda: cam_batch(model, name, x), args.repeats)}
        cells = []
        for key, values in runs.items():
            med, best = statistics.median(values), min(values)
            totals[key][0] += med
            totals[key][1] += best
            cells.append(f"{med * 1e3:.0f} ({best * 1e3:.0f})")
        print(f"{name:<20}{size:>5}{cells[0]:>18}{cells[1]:>22}{cells[2]:>20}", flush=True)
        del model
    cells = [f"{med:.2f} ({best:.2f}) s" for med, best in totals.values()]
    print(f"{'all nine':<25}{cells[0]:>18}{cells[1]:>22}{cells[2]:>20}")
    med, best = totals["ours"]
    verdict = "meets" if med <= GOAL_S else f"misses by {med - GOAL_S:.2f} s ({med / GOAL_S:.1f}x)"
    print(f"goal: nine hemorrhage Grad-CAMs <= {GOAL_S} s: median total {med:.2f} s {verdict}")

    for name in [m for m in args.scorecam.split(",") if m]:
        size = REGISTRY[name].input_size
        model = create_model(name).eval()
        x = torch.randn(1, 3, size, size)
        start = time.perf_counter()
        cam_batch(model, name, x, "scorecam")
        print(f"ScoreCAM {name} (one map, {size} px): {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
