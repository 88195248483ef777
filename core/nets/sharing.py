"""One network object shared by threads (the dashboard's sessions): a lock per model, and CPU cores shared
out so concurrent calls do not oversubscribe torch's intra-op threads."""
from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager

import torch

_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_FREE = threading.Condition()
_free_cores = _CORES
# The most intra-op threads any caller has had: a share lowers torch's default for threads started meanwhile,
# which must not then pass for the configured count.
_threads = 0


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock of one network object (dropped with it): a CAM hooks its layers and toggles requires_grad,
    so no other forward of the same object may run meanwhile; other models are not held up."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def cpu_share():
    """Run this thread's torch ops on the cores no concurrent caller holds (at least one, waiting for it),
    never more than torch's own thread count: OpenMP gives every calling thread a team of that size."""
    global _free_cores, _threads
    with _FREE:
        _threads = max(_threads, torch.get_num_threads())
        _FREE.wait_for(lambda: _free_cores > 0)
        taken = min(_threads, _free_cores)
        _free_cores -= taken
    torch.set_num_threads(taken)  # this thread's team (and the default of threads not yet started)
    try:
        yield taken
    finally:
        torch.set_num_threads(_threads)
        with _FREE:
            _free_cores += taken
            _FREE.notify_all()


@contextmanager
def exclusive(model: torch.nn.Module):
    """The model to this thread alone, on its share of the cores (taken after the lock: no core sits idle
    held by a thread waiting for a model)."""
    with model_lock(model), cpu_share():
        yield
