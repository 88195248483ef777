"""Cold start: a fresh `streamlit run dashboard/app.py` until the Leaderboard's table is on screen, then the first
upload on the Scan page until every model's probability is.

    python benchmarks/cold_start.py [--checkpoints checkpoints] [--repeats 3] [--repo .] [--think 10]

Each repeat starts a new server process (so every st.cache is empty and every module is imported afresh),
opens it in Debian's Chromium driven by Playwright (never `playwright install`; launched before the clock
starts, as a reader's browser is already open) and waits for the first table of the default page, then its first
chart. `--think` seconds later (a reader looking at the board) it opens the Scan page and uploads a 512 px phantom
PNG: the first upload is timed from handing over the file to the line saying how many models call hemorrhage, drawn
once every probability is. Printed per repeat and as the median: seconds until the server answers its health check,
until the table is visible and until the first chart is, and the first upload's seconds.
--repo points at another checkout (e.g. the code before a change) to time it with this script.
Goals on a 2-core CPU for the 16-model CPU demo run: the table <= 4 s, the first upload <= 3 s.
"""
import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.phantom.generate import generate_slice, render  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
GOAL_S, UPLOAD_GOAL_S = 4.0, 3.0
TABLE = "[data-testid=stDataFrame]"
CHART = "[data-testid=stPlotlyChart]"   # the Leaderboard's charts come after the table, the last thing it computes
UPLOADER = "[data-testid=stFileUploaderDropzoneInput]"   # the Scan page's first: the slice's
CALLED = "models call hemorrhage"   # the Scan page's line over the tiles, drawn once every model has scored


def upload_file(folder: Path) -> Path:
    """A 512 px phantom slice as a PNG, the size of a typical CT slice export."""
    phantom = generate_slice(np.random.default_rng(7), 512, "subdural", 0.3)
    buf = io.BytesIO()
    Image.fromarray(render(phantom.hu)).save(buf, format="PNG")
    (folder / "slice.png").write_bytes(buf.getvalue())
    return folder / "slice.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repo: Path, checkpoints: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "CHECKPOINTS_DIR": str(checkpoints), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_healthy(proc: subprocess.Popen, url: str, deadline: float) -> None:
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("streamlit did not start")
            time.sleep(0.05)


def first_upload(page, url: str, png: Path) -> float:
    """Seconds from handing the Scan page a slice to every model's probability on screen."""
    page.goto(f"{url}/scan")
    page.locator(UPLOADER).first.wait_for(state="attached", timeout=120_000)
    start = time.perf_counter()
    page.locator(UPLOADER).first.set_input_files(str(png))
    page.get_by_text(CALLED).first.wait_for(state="visible", timeout=300_000)
    return time.perf_counter() - start


def one_start(browser, repo: Path, checkpoints: Path, png: Path, think: float) -> dict[str, float]:
    """Seconds from launching the server to its health answer, the Leaderboard's table and its first chart; and the
    first upload's seconds, `think` seconds after the chart."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    proc = start_server(repo, checkpoints, port)
    try:
        wait_healthy(proc, url, time.time() + 120)
        healthy = time.perf_counter() - start
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(url)
        page.locator(TABLE).first.wait_for(state="visible", timeout=120_000)
        table = time.perf_counter() - start
        page.locator(CHART).first.wait_for(state="visible", timeout=120_000)
        chart = time.perf_counter() - start
        time.sleep(think)
        upload = first_upload(page, url, png)
        page.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return {"server healthy": healthy, "leaderboard table": table, "first chart": chart, "first upload": upload}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints", help="folder holding run folders")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose dashboard/app.py is started")
    ap.add_argument("--think", type=float, default=10.0, help="seconds between the first chart and the upload")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is absent: nothing timed.")
        return 0
    from playwright.sync_api import sync_playwright
    runs = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        png = upload_file(Path(tmp))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"])
        for i in range(args.repeats):
            runs.append(one_start(browser, args.repo.resolve(), args.checkpoints.resolve(), png, args.think))
            print(f"start {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()), flush=True)
        browser.close()
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median of {len(runs)} on {os.cpu_count()} CPUs, {args.checkpoints}: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in median.items())
          + f" (goals: table <= {GOAL_S:.0f} s, first upload <= {UPLOAD_GOAL_S:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
