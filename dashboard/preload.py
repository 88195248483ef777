"""The models of the run on show, loaded in the background once the app has drawn its first page of it, so that the
Scan page's first upload finds them loaded, verified and past their first forward pass (the slowest). The pages that
show stored numbers never wait for it: this module imports no torch, and the thread imports dashboard/models.py
(torch, the families, Grad-CAM: seconds of imports) itself."""
from __future__ import annotations

import importlib
import threading

import streamlit as st

from dashboard.frame import Run


def _load_all(run: Run) -> None:
    # Imported here, on this thread: at the top of the module it would put torch on every page's import path.
    models = importlib.import_module("dashboard.models")
    loaded, _ = models.load_models(run)   # a model that fails is reported by the page that asks for it
    models.blank_probabilities(*run.key, models.slice_channels(run), loaded)
    try:
        models.image_domain_of(*run.key)
    except models.LOAD_ERRORS:
        pass   # the Scan page reports it
    models.explain_api()


@st.cache_resource(show_spinner=False, max_entries=4)
def _started(run_dir: str, stamp: float, _run: Run) -> threading.Thread:
    """Once per run state per process (the key; `_run` is not hashed): a thread loading its models.
    cache_resource's per-key lock makes a page that asks for a model meanwhile wait for that load, never repeat it."""
    thread = threading.Thread(target=_load_all, args=(_run,), name="hemolens-preload", daemon=True)
    thread.start()
    return thread


def preload(run: Run | None) -> threading.Thread | None:
    """The thread loading the verified models of `run` in the background, started unless it was (None: no run)."""
    return None if run is None else _started(*run.key, run)
