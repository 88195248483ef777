"""`make demo`: open the dashboard as soon as the demo run has a model, training the rest in the background.

    python demo.py

A complete demo run (its last model, ensemble_stack, has a card, and its evaluation on other-scanner phantoms,
which train.py stores last, is there) is served at once. Otherwise, unless a trainer is already writing
checkpoints/demo, `train.py --resume` starts detached (its own session, so closing the app or Ctrl-C leaves it
training; log in checkpoints/demo/train.log), and the app starts once the first model's card is written (the
classical models take about a minute). Run it again after a kill: the trainer resumes, model by model.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from core.io import store
from core.io.progress import PROGRESS, summary, trainer_alive
from core.phantom.scanner import OTHER

REPO = Path(__file__).resolve().parent
RUN = Path("checkpoints/demo")
LOG = RUN / "train.log"
TRAIN = [sys.executable, "train.py", "--resume"]
STREAMLIT = [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.address", "127.0.0.1"]
REPORT_EVERY_S = 10


def start_trainer() -> subprocess.Popen:
    RUN.mkdir(parents=True, exist_ok=True)
    with open(LOG, "ab") as log:
        return subprocess.Popen(TRAIN, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    return lines[-1].strip() if lines else "no output"


def wait_for_first_model(alive) -> None:
    """Until the run has a model card, a line every REPORT_EVERY_S on what the trainer does; SystemExit(2)
    with one line if it stops first."""
    reported = 0.0
    while not store.list_models(RUN):
        if not alive():
            print(f"hemolens: the demo trainer stopped before its first model ({last_line(LOG)}); "
                  f"see {LOG}", file=sys.stderr)
            raise SystemExit(2)
        if time.monotonic() - reported >= REPORT_EVERY_S:
            try:
                state = store.read_json(RUN / PROGRESS)
            except store.CheckpointError:   # not written yet: the trainer is generating the phantoms
                state = {}
            print(f"training the demo: {summary(state)} (log: {LOG}); the app opens after the first model",
                  flush=True)
            reported = time.monotonic()
        time.sleep(1)


def complete() -> bool:
    return (RUN / "ensemble_stack" / store.CARD).is_file() and OTHER.set_name in store.list_evaluations(RUN)


def main() -> None:
    os.chdir(REPO)
    if not complete():
        if trainer_alive(RUN):
            print(f"a trainer is already writing {RUN}; serving what it has written so far", flush=True)
            alive = lambda: trainer_alive(RUN)
        else:
            trainer = start_trainer()
            print(f"training the demo in the background (pid {trainer.pid}, log: {LOG})", flush=True)
            alive = lambda: trainer.poll() is None   # no lock probe: it could race the trainer taking the lock
        wait_for_first_model(alive)
    os.execv(sys.executable, STREAMLIT)


if __name__ == "__main__":
    main()
