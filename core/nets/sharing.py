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
_waiting = 0   # callers queued for a core
# Threads started during a share inherit its lowered count, so only the main thread (where scripts and tests
# set torch's count) says what the configured count is; read here before any share can have lowered it.
_configured = torch.get_num_threads()
_held = threading.local()


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
    never more than the configured count: OpenMP gives every calling thread a team of its own."""
    global _free_cores, _configured, _waiting
    if getattr(_held, "cores", 0):  # nested: this thread holds its cores already
        yield _held.cores
        return
    with _FREE:
        if threading.current_thread() is threading.main_thread():
            _configured = torch.get_num_threads()
        _waiting += 1
        _FREE.wait_for(lambda: _free_cores > 0)
        _waiting -= 1
        # With others queued, one core each: two one-thread calls finish more work than one two-thread call.
        taken = _held.cores = 1 if _waiting else min(_configured, _free_cores)
        _free_cores -= taken
    torch.set_num_threads(taken)  # this thread's team (and the default of threads started meanwhile)
    try:
        yield taken
    finally:
        torch.set_num_threads(_configured)
        _held.cores = 0
        with _FREE:
            _free_cores += taken
            _FREE.notify_all()


@contextmanager
def exclusive(model: torch.nn.Module):
    """The model to this thread alone, on its share of the cores (taken after the lock: no core sits idle
    held by a thread waiting for a model)."""
    with model_lock(model), cpu_share():
        yield
