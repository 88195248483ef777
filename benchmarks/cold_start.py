"""Cold start: a fresh `streamlit run dashboard/app.py` until the Leaderboard's table is on screen.

    python benchmarks/cold_start.py [--checkpoints checkpoints] [--repeats 3] [--repo .]

Each repeat starts a new server process (so every st.cache is empty and every module is imported afresh),
opens it in Debian's Chromium driven by Playwright (never `playwright install`; launched before the clock
starts, as a reader's browser is already open) and waits for the first table of the default page, then its first
chart. Printed per repeat and as the median: seconds until the server answers its health check, until the table is
visible and until the first chart is.
--repo points at another checkout (e.g. the code before a change) to time it with this script.
Goal: <= 4 s on a 2-core CPU for the 16-model CPU demo run.
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
GOAL_S = 4.0
TABLE = "[data-testid=stDataFrame]"
CHART = "[data-testid=stPlotlyChart]"   # the Leaderboard's charts come after the table, the last thing it computes


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


def one_start(browser, repo: Path, checkpoints: Path) -> dict[str, float]:
    """Seconds from launching the server to its health answer, the Leaderboard's table and its first chart."""
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
        page.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return {"server healthy": healthy, "leaderboard table": table, "first chart": chart}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints", help="folder holding run folders")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose dashboard/app.py is started")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is absent: nothing timed.")
        return 0
    from playwright.sync_api import sync_playwright
    runs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"])
        for i in range(args.repeats):
            runs.append(one_start(browser, args.repo.resolve(), args.checkpoints.resolve()))
            print(f"start {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()), flush=True)
        browser.close()
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median of {len(runs)} on {os.cpu_count()} CPUs, {args.checkpoints}: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in median.items())
          + f" (goal: table <= {GOAL_S:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
