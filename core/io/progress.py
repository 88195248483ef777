"""A run's live state for readers outside its trainer: RUN/progress.json, rewritten whole (atomically) by rank 0
as models start and epochs end, and RUN/.train.lock, held by the one process training into RUN while it lives."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from core.io.store import CheckpointError, read_json, write_json

PROGRESS, LOCK = "progress.json", ".train.lock"


class RunBusy(RuntimeError):
    """Another live process is training into the run folder; one readable sentence."""


@contextlib.contextmanager
def trainer_lock(run_dir: str | Path):
    """Hold RUN/.train.lock (with our pid in it) for the block; the OS releases it if the process dies."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / LOCK, "a+") as f:
        for _ in range(3):   # a reader's trainer_alive probe holds the lock for microseconds
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.1)
        else:
            f.seek(0)
            raise RunBusy(f"another training process (pid {f.read().strip() or '?'}) is writing {run_dir}")
        f.truncate(0)
        print(os.getpid(), file=f, flush=True)
        yield


def trainer_alive(run_dir: str | Path) -> bool:
    """Whether a process holds the run's trainer lock: a progress.json saying "running" without one is a killed run."""
    try:
        with open(Path(run_dir) / LOCK) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)   # released as f closes
    except OSError as err:   # BlockingIOError: held; FileNotFoundError: never trained here
        return isinstance(err, BlockingIOError)
    return False


def live_progress(run_dir: str | Path) -> dict | None:
    """progress.json of a run whose trainer is alive ({} before its first write); None when no trainer is."""
    if not trainer_alive(run_dir):
        return None
    with contextlib.suppress(CheckpointError):
        return read_json(Path(run_dir) / PROGRESS)
    return {}


def summary(state: dict) -> str:
    """Where a live run stands, in one line (the launcher's and the dashboard's)."""
    if not state:
        return "preparing the data"
    line = state["current"] or "between models"
    if state["epochs_planned"]:
        line += f", epoch {state['epoch']}/{state['epochs_planned']}"
    elapsed = time.time() - state["started_at"]
    line += f"; {len(state['done'])} of {len(state['models'])} models done; {elapsed:.0f} s elapsed"
    budget = state["run_budget_s"]
    return line + (f", ~{max(0.0, budget - elapsed):.0f} s left of the run budget" if budget else "")


class RunProgress:
    """Rank 0's account of a run in progress.json; with run_dir None (other DDP ranks) it writes nothing."""

    def __init__(self, run_dir: Path | None, models: list[str], done: list[str], run_budget_s: float | None,
                 started_at: float):
        self.path = run_dir and Path(run_dir) / PROGRESS
        self.state = {"pid": os.getpid(), "started_at": started_at, "status": "running", "models": list(models),
                      "done": list(done), "run_budget_s": run_budget_s}
        self.start(None)

    def write(self, **changes) -> None:
        now = time.time()
        self.state.update(changes, updated_at=now, elapsed_s=now - self.state["started_at"])
        if self.path:
            write_json(self.path, self.state)

    def start(self, name: str | None, epochs_planned: int | None = None) -> None:
        self.write(current=name, epoch=0, epochs_planned=epochs_planned, history=[])

    def epoch(self, history: list[dict], epochs_planned: int) -> None:
        """TrainConfig.on_epoch: the current network's history so far and the epochs it now plans."""
        self.write(epoch=history[-1]["epoch"], epochs_planned=epochs_planned, history=history)

    def finished(self, name: str, card: dict) -> None:
        self.write(done=self.state["done"] + ([name] if card else []), current=None)

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, error_type, *_) -> None:
        self.write(status="failed" if error_type else "finished")   # a failed run keeps the model it failed on
