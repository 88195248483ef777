"""What the pages that read images and run models need (Scan, Errors, Data): each verified model loaded once per
process (keyed by its weights sha256), their CAMs, uploads, and a run's slices framed with their bleed masks. It imports
torch (core.families, core.data.decode), so the pages that show stored numbers never import it: they read
dashboard/loaders.py alone, and dashboard/preload.py loads the models here in the background."""
from __future__ import annotations

import hashlib
import importlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from scipy import ndimage

from core.data.discover import DatasetError
from core.data.layouts import box_mask
from core.data.splits import read_manifest
from core.data.truth import bhx_files, bleed_mask, boxes_by_slice, sop_instance_uid
from core.families.base import Predictor
from core.inference import image_domain, load_predictor, predict_outputs_all
from core.io import store as ckpt
from core.io.framing import frame, framing_of
from core.io.imaging import WINDOW_SETS, Scan, ScanError, display_grey, load_scan, windows_of
from dashboard.frame import Run
from dashboard.loaders import run_json

# Loading a verified model can still fail: CheckpointError and a card naming an architecture the registry does not
# know are ValueErrors, a card missing a key a KeyError, a file gone since verification an OSError.
LOAD_ERRORS = (ValueError, KeyError, OSError)


@st.cache_data(show_spinner=False)
def split_manifest(run_dir: str, stamp: float) -> pd.DataFrame:
    return read_manifest(Path(run_dir) / ckpt.SPLIT)


# No spinner of its own: dashboard/preload.py calls it from a thread that draws nothing.
@st.cache_resource(show_spinner=False, max_entries=32)
def loaded_model(weights_sha256: str, model_dir: str) -> Predictor:
    """Each model once per process: the key is its weights hash (verified again on load). A page asking for a model
    the background is loading waits for that load instead of starting another."""
    return load_predictor(model_dir)


def model_for(run: Run, model: str) -> Predictor:
    with st.spinner("Loading model…"):   # drawn only when it takes over half a second: a model not loaded yet
        return loaded_model(run.cards[model]["weights_sha256"], str(run.path / model))


def load_models(run: Run) -> tuple[dict[str, Predictor], dict[str, str]]:
    """The verified models that load (each once per process), and those that do not, with why; an ensemble needs
    every member."""
    loaded, failed = {}, {}
    for model in run.models:
        try:
            loaded[model] = loaded_model(run.cards[model]["weights_sha256"], str(run.path / model))
        except LOAD_ERRORS as err:
            failed[model] = str(err)
    failed.update(lost := ckpt.lost_members({m: p.members for m, p in loaded.items()}, loaded))
    return {m: p for m, p in loaded.items() if m not in lost}, failed


def slice_channels(run: Run) -> tuple[int, ...]:
    """The channel axis of the run's slices as decoded: none through one window, one per window of a set."""
    windows = WINDOW_SETS[run_windows(run)]
    return () if len(windows) == 1 else (len(windows),)


@st.cache_resource(show_spinner=False, max_entries=8)
def blank_probabilities(run_dir: str, stamp: float, channels: tuple[int, ...],
                        _loaded: dict[str, Predictor]) -> dict[str, float]:
    """P(hemorrhage) each loaded model of a run state gives a blank slice, once per process (dashboard/preload.py
    computes it, which also runs every model's first forward pass, the slowest, before the first upload)."""
    blank = lambda size: np.zeros((1, size, size, *channels), np.uint8)
    return {m: float(o[0, 0]) for m, o in predict_outputs_all(_loaded, blank).items()}


# An upload's long side after decoding. The widest image the page draws is a third of a wide layout (under
# 500 CSS px, so 1000 device pixels on a 2x screen); CT slices (512 px) and common exports pass untouched.
DISPLAY_MAX_SIDE = 1024
# CAMs are kept at the model's input size (at most 299 px: 350 KB each), so this holds hundreds of maps.
CAM_CACHE_BYTES = 64 << 20


def upload_side(run: Run) -> int:
    """The long side uploads are decoded to: the display's, or a verified model's input size should one be
    larger (never above 4x the display's: a card is text anyone can edit)."""
    sizes = (int(run.cards[m].get("input_size") or 0) for m in run.models)
    return min(4 * DISPLAY_MAX_SIDE, max([DISPLAY_MAX_SIDE, *sizes]))


def read_scan(data: bytes, window: str | None = None, frame: int = 0,
              max_side: int | None = DISPLAY_MAX_SIDE) -> Scan:
    """An uploaded file's bytes as a Scan, area-averaged while decoding to a long side of at most max_side;
    the content decides the format, never a MIME type or file name. Raises core.io.imaging.ScanError with
    one sentence for the user."""
    return load_scan(bytes(data), window=window, frame=frame, max_side=max_side)


def explain_api():
    """core.explain, imported only where CAMs are drawn: it pulls in pytorch-grad-cam and OpenCV."""
    return importlib.import_module("core.explain.cam")


class ByteLRU:
    """Least recently used entries within a byte budget, shared by every session's thread."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self._items: OrderedDict = OrderedDict()   # key -> (value, bytes)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key, value, nbytes: int) -> None:
        with self._lock:
            if key in self._items:
                self.used -= self._items.pop(key)[1]
            self._items[key] = (value, nbytes)
            self.used += nbytes
            while self.used > self.budget:
                self.used -= self._items.popitem(last=False)[1][1]


@st.cache_resource(show_spinner=False)
def cam_store() -> ByteLRU:
    """The map at the model's input size per model, method and image, CAM_CACHE_BYTES in all."""
    return ByteLRU(CAM_CACHE_BYTES)


def cam(weights_sha256: str, model_dir: str, image: np.ndarray, method: str) -> tuple[np.ndarray, float | None]:
    """(cam in [0, 1] at the image's size, seconds it took: None when it came from the cache) of the hemorrhage
    class for one model."""
    key = (weights_sha256, method, image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
    hit = cam_store().get(key)
    if hit is not None:
        return explain_api().to_original(hit, image.shape), None
    with st.spinner("Computing CAMs…"):
        result = explain_api().explain_image(loaded_model(weights_sha256, model_dir), image, method=method, target=1)
    cam_store().put(key, result.square, result.square.nbytes)
    return result.cam, result.seconds


def cam_for(run: Run, model: str, image: np.ndarray, method: str) -> tuple[np.ndarray, float | None]:
    return cam(run.cards[model]["weights_sha256"], str(run.path / model), image, method)


def outline(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """RGB copy of a grey uint8 image (a window set's brain window) with the mask border drawn in the truth colour
    of core.explain.cam.overlay (MASK_COLOUR, green)."""
    rgb = np.repeat(display_grey(image)[..., None], 3, axis=2)
    if mask is not None and mask.any():
        rgb[mask & ~ndimage.binary_erosion(mask)] = explain_api().MASK_COLOUR
    return rgb


def peak_note(heat: np.ndarray, mask: np.ndarray | None) -> str:
    """A map's caption ending: whether its peak hit the true bleed (core.explain.cam.peak_on_bleed); "" without one."""
    hit = explain_api().peak_on_bleed(heat, mask)
    return "" if hit is None else " · ✓ peak on the bleed" if hit else " · ✗ peak off the bleed"


def run_framing(run: Run) -> str:
    """How the run's models saw every slice (core.io.framing): uploads and examples are framed the same way."""
    return framing_of(run_json(*run.key, "run.json"))


def run_windows(run: Run) -> str:
    """The HU windows the run's models read (core.io.imaging.WINDOW_SETS): uploads and examples are decoded alike."""
    return windows_of(run_json(*run.key, "run.json"))


def framed(image: np.ndarray, mask: np.ndarray | None, framing: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A slice and its bleed mask (or None) framed together."""
    out = frame(image, framing, *([] if mask is None else [mask]))
    return out[0], (None if mask is None else out[1])


# Kept once per process, not copied per call as cache_data would: CQ500's BHX CSVs hold tens of thousands of boxes.
@st.cache_resource(show_spinner=False, max_entries=8)
def bhx_boxes(folder: str) -> dict[str, pd.DataFrame]:
    """SOPInstanceUID -> that slice's boxes, from the BHX CSVs kept in `folder`; {} where one is not a BHX CSV."""
    try:
        return boxes_by_slice(bhx_files(folder))
    except DatasetError:
        return {}


def slice_truth(path: str, shape: tuple[int, int]) -> np.ndarray | None:
    """A slice's bleed mask: its stored mask (core.data.truth.bleed_mask), else its BHX boxes where a folder above it
    keeps BHX CSVs (as CQ500's top folder does); None without either."""
    mask = bleed_mask(path, shape)
    folder = None if mask is not None else next((p for p in Path(path).parents if bhx_files(p)), None)
    boxes = bhx_boxes(str(folder)) if folder else {}
    uid = sop_instance_uid(path) if boxes else None
    return box_mask(boxes[uid], shape) if uid in boxes else mask


@st.cache_data(show_spinner=False, max_entries=256)
def case_image(path: str, framing: str = "none",
               windows: str = "brain") -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(image, bleed mask or None, error sentence) for a file (or volume slice) named in split.csv, windowed and
    framed as the run's models saw it; the mask is slice_truth's, None where it outlines nothing (a normal slice)."""
    try:
        image = load_scan(path, windows).image
    except ScanError as err:
        return None, None, f"{Path(path).name}: {err}"
    image, mask = framed(image, slice_truth(path, image.shape[:2]), framing)
    return image, (mask if mask is not None and mask.any() else None), ""


@st.cache_resource(show_spinner=False, max_entries=8)
def image_domain_of(run_dir: str, stamp: float):
    """The run's image domain check (core.inference.image_domain), verified once per run state; None: none stored."""
    return image_domain(run_dir)
