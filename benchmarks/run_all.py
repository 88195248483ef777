"""`make bench`: every speed measurement, one after another, printing its figures.

Each script runs in its own process so one's threads and caches do not colour the next one's figures.
The run benchmarks (latency per model of checkpoints/demo, the Scan page's work per upload, the dashboard's
cold start to the Leaderboard) run only when the demo run exists.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    ["benchmarks/phantom_speed.py"],
    ["benchmarks/train_throughput.py", "--size", "80", "--n", "256"],
    ["benchmarks/cam_speed.py"],
]


def main() -> int:
    steps = list(STEPS)
    if (ROOT / "checkpoints" / "demo" / "split.csv").is_file():
        steps.append(["-m", "core.benchmark", "--run", "checkpoints/demo"])
        steps.append(["benchmarks/scan_page.py", "--run", "checkpoints/demo"])
        steps.append(["benchmarks/huge_upload.py"])
        steps.append(["benchmarks/cam_sessions.py", "--run", "checkpoints/demo"])
        steps.append(["benchmarks/cold_start.py", "--checkpoints", "checkpoints"])
    failed = 0
    for step in steps:
        print(f"\n$ python {' '.join(step)}", flush=True)
        failed += subprocess.call([sys.executable, *step], cwd=ROOT) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
