"""Cached loaders over a run folder (keyed by the folder and its files' newest mtime; models by weights
sha256, once per process) and the small table helpers several pages share. Only verified models' files are read."""
from __future__ import annotations

import hashlib
import importlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st
from scipy import ndimage

from core.data.splits import read_manifest
from core.data.discover import DatasetError
from core.data.layouts import box_mask
from core.data.truth import bhx_files, bleed_mask, boxes_by_slice, sop_instance_uid
from core.families.base import Predictor
from core.inference import image_domain, load_predictor, unavailable_models
from core.io import store as ckpt
from core.io.framing import frame, framing_of
from core.io.imaging import Scan, ScanError, display_grey, load_scan, windows_of
from core.metrics import binary as M

if TYPE_CHECKING:
    from dashboard.frame import Run


@st.cache_data(show_spinner=False)
def cards(run_dir: str, stamp: float) -> dict[str, dict]:
    return {m: ckpt.load_card(Path(run_dir) / m) for m in ckpt.list_models(run_dir)}


@st.cache_data(show_spinner="Verifying models…")
def unavailable(run_dir: str, stamp: float) -> dict[str, str]:
    """The models that cannot be trusted, with why: every weights file hashed once per stamp, which covers them."""
    return unavailable_models(run_dir, cards(run_dir, stamp))


def verified(run_dir: str, stamp: float) -> list[str]:
    return [m for m in ckpt.list_models(run_dir) if m not in unavailable(run_dir, stamp)]


# Loading a verified model can still fail: CheckpointError and a card naming an architecture the registry does not
# know are ValueErrors, a card missing a key a KeyError, a file gone since verification an OSError.
LOAD_ERRORS = (ValueError, KeyError, OSError)


def _read_predictions(path: Path) -> pd.DataFrame:
    out = pd.read_csv(path, dtype={"id": str, "subtype": str})
    if "subtype" in out:
        out["subtype"] = out["subtype"].fillna("")
    return out


@st.cache_data(show_spinner=False)
def predictions(run_dir: str, stamp: float) -> pd.DataFrame:
    """Every verified model's val and test rows, with a model column."""
    return pd.concat([_read_predictions(Path(run_dir) / m / ckpt.PREDICTIONS).assign(model=m)
                      for m in verified(run_dir, stamp)], ignore_index=True)


def evaluation_stamp(run_dir: str, dataset: str | None) -> float:
    """What the caches of a stored evaluation key on: its predictions.csv's mtime (a folder deleted and written
    again under the same name is read again); 0 for the run's test split, which the run's stamp covers."""
    if dataset is None:
        return 0.0
    try:
        return (Path(run_dir) / ckpt.EVALUATIONS / dataset / ckpt.PREDICTIONS).stat().st_mtime
    except FileNotFoundError:
        return 0.0


@st.cache_data(show_spinner=False)
def evaluation_predictions(run_dir: str, name: str, stamp: float) -> pd.DataFrame:
    """A stored evaluation's predictions.csv (RUN/evaluations/NAME): model, split, id, path, label, prob, ... for
    every model it scored; `stamp` is evaluation_stamp."""
    return _read_predictions(Path(run_dir) / ckpt.EVALUATIONS / name / ckpt.PREDICTIONS)


@st.cache_data(show_spinner=False)
def evaluation_report(run_dir: str, name: str, stamp: float) -> dict:
    """A stored evaluation's report.json (dataset facts, n_cases, per-model metrics); {} when unreadable."""
    try:
        return ckpt.read_json(Path(run_dir) / ckpt.EVALUATIONS / name / "report.json")
    except ckpt.CheckpointError:
        return {}


def scored(run_dir: str, stamp: float, dataset: str | None = None) -> pd.DataFrame:
    """The rows the pages score, of verified models only: the run's test split (dataset None), or every row of the
    stored evaluation named `dataset`, whose thresholds are the cards' (chosen on validation, never re-tuned)."""
    if dataset is None:
        preds = predictions(run_dir, stamp)
        return preds[preds["split"] == "test"]
    rows = evaluation_predictions(run_dir, dataset, evaluation_stamp(run_dir, dataset))
    return rows[rows["model"].isin(verified(run_dir, stamp))]


@st.cache_data(show_spinner=False)
def histories(run_dir: str, stamp: float) -> pd.DataFrame:
    return pd.concat([pd.read_csv(Path(run_dir) / m / ckpt.HISTORY).assign(model=m)
                      for m in verified(run_dir, stamp)], ignore_index=True)


@st.cache_data(show_spinner=False)
def split_manifest(run_dir: str, stamp: float) -> pd.DataFrame:
    return read_manifest(Path(run_dir) / ckpt.SPLIT)


@st.cache_data(show_spinner=False)
def run_json(run_dir: str, stamp: float, name: str) -> dict:
    """leakage.json or run.json of a run; {} when the run predates the file."""
    path = Path(run_dir) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def test_probs(run_dir: str, stamp: float, models: tuple[str, ...], dataset: str | None = None) -> pd.DataFrame:
    """Cases x models of the test split or a stored evaluation (see `scored`): one prob column per model, plus
    label (and subtype, path, bleed area when known)."""
    rows = scored(run_dir, stamp, dataset)
    wide = rows.pivot_table(index="id", columns="model", values="prob", aggfunc="first")
    extra = [c for c in ("label", "subtype", "path", "bleed_area_mm2") if c in rows]
    return rows.drop_duplicates("id").set_index("id")[extra].join(wide[list(models)])


def truth(cases: pd.DataFrame) -> pd.Series:
    """'hemorrhage, subdural' / 'normal' per case, for captions."""
    text = cases["label"].map({1: "hemorrhage", 0: "normal"})
    if "subtype" in cases:
        text = text.where(cases["subtype"].fillna("") == "", text + ", " + cases["subtype"].fillna(""))
    return text


def consensus(calls: pd.Series) -> str:
    return f"{int(calls.sum())} of {len(calls)} models call hemorrhage"


def test_metrics(run_dir: str, stamp: float, model: str, thr: float, bootstrap: int = 0,
                 dataset: str | None = None) -> dict:
    """One model's metrics at one threshold on the test split or a stored evaluation (see `scored`)."""
    return _metrics(run_dir, stamp, model, thr, bootstrap, dataset, evaluation_stamp(run_dir, dataset))


def _model_rows(run_dir: str, stamp: float, model: str, dataset: str | None) -> pd.DataFrame:
    rows = scored(run_dir, stamp, dataset)
    return rows[rows["model"] == model]


@st.cache_data(show_spinner="Computing metrics and intervals…", max_entries=2048)
def _metrics(run_dir: str, stamp: float, model: str, thr: float, bootstrap: int, dataset: str | None,
             dataset_stamp: float) -> dict:
    rows = _model_rows(run_dir, stamp, model, dataset)
    return M.binary_metrics(rows["label"].to_numpy(), rows["prob"].to_numpy(), thr, bootstrap=bootstrap)


def scan_metrics(run_dir: str, stamp: float, model: str, thr: float, dataset: str | None = None) -> dict | None:
    """One model's scan-level metrics (core.metrics.binary.scan_metrics, the point named "chosen") on the test split
    or a stored evaluation; None where its rows name no scan (series) or too few of a class."""
    return _scan_metrics(run_dir, stamp, model, thr, dataset, evaluation_stamp(run_dir, dataset))


@st.cache_data(show_spinner=False, max_entries=2048)
def _scan_metrics(run_dir: str, stamp: float, model: str, thr: float, dataset: str | None,
                  dataset_stamp: float) -> dict | None:
    rows = _model_rows(run_dir, stamp, model, dataset)
    return M.scan_metrics(rows.get("series"), rows["label"].to_numpy(), rows["prob"].to_numpy(), {"chosen": thr})


def delong_matrix(run_dir: str, stamp: float, models: tuple[str, ...], dataset: str | None = None) -> pd.DataFrame:
    """Pairwise DeLong p-values for equal AUC (models scored on the same cases of the test split or an evaluation)."""
    return _delong_matrix(run_dir, stamp, models, dataset, evaluation_stamp(run_dir, dataset))


@st.cache_data(show_spinner=False)
def _delong_matrix(run_dir: str, stamp: float, models: tuple[str, ...], dataset: str | None,
                   dataset_stamp: float) -> pd.DataFrame:
    probs = test_probs(run_dir, stamp, models, dataset)
    y = probs["label"].to_numpy()
    return pd.DataFrame([[M.delong_test(y, probs[a].to_numpy(), probs[b].to_numpy()) for b in models]
                         for a in models], index=list(models), columns=list(models))


@st.cache_resource(show_spinner="Loading model…", max_entries=32)
def loaded_model(weights_sha256: str, model_dir: str) -> Predictor:
    """Each model once per process: the key is its weights hash (verified again on load)."""
    return load_predictor(model_dir)


def model_for(run: Run, model: str) -> Predictor:
    return loaded_model(run.cards[model]["weights_sha256"], str(run.path / model))


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
