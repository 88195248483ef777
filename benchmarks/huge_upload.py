"""A huge upload through the Scan page (streamlit AppTest, in this process): seconds, peak and retained memory.

    python benchmarks/huge_upload.py [--checkpoints checkpoints] [--side 7700]

The run in --checkpoints (the demo, by default) is warmed up with a 96 px upload (models loaded, CAM
modules imported); then one --side x --side black PNG (57 KB at 7700 px) is uploaded and the page runs to
its last CAM. Printed: the page's wall time, the process's peak RSS over the run (sampled every 5 ms) and
what it still holds afterwards, both over the warmed-up baseline. Goal: < 5 s and < 500 MB peak growth.
"""
import argparse
import gc
import io
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

GOAL_S, GOAL_MB = 5.0, 500


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    ap.add_argument("--side", type=int, default=7700)
    args = ap.parse_args()
    os.environ["CHECKPOINTS_DIR"] = args.checkpoints
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=600).run()
    at = at.switch_page("views/scan.py").run()
    at.file_uploader(key="scan_upload").upload("small.png", png(96), "image/png").run()
    if at.exception or not at.metric:
        print("the warm-up upload did not reach the models:", [e.value for e in at.exception] or "no run?")
        return 1
    data = png(args.side)
    gc.collect()
    base = peak = rss_mb()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.wait(0.005):
            peak = max(peak, rss_mb())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    at.file_uploader(key="scan_upload").clear().upload("huge.png", data, "image/png").run()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    gc.collect()
    held = rss_mb() - base
    if at.exception:
        print("the page failed:", [e.value for e in at.exception])
        return 1
    print(f"{args.side} x {args.side} PNG ({len(data) / 1e3:.0f} KB), {len(at.metric)} models, {len(at.image) - 1} CAMs; "
          f"caption: {at.image[0].captions[0]}; load average {os.getloadavg()[0]:.1f}")
    print(f"  page run     {seconds:6.2f} s   (goal < {GOAL_S:.0f} s: {'met' if seconds < GOAL_S else 'missed'})")
    print(f"  peak RSS   +{peak - base:6.0f} MB  (goal < {GOAL_MB} MB: {'met' if peak - base < GOAL_MB else 'missed'})")
    print(f"  held after +{held:6.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
