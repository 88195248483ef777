"""What every dashboard page shares: the notice, run selection, cached loaders and table shaping.

Metric math lives in core.metrics; this module only reads run folders, caches, and arranges
core's numbers into tables. Models are cached per weights sha256 (st.cache_resource), so they
load once per process across sessions; tables and metrics are cached with st.cache_data and keyed
by the run folder plus a stamp of its files' mtimes, so a finished training run shows up at once.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.io import store as ckpt
from core.metrics import binary as M
from core.io.imaging import Scan, load_scan
from core.families import family_of_card
from core.families.base import Predictor
from core.inference import load_predictor
from core.registry import REGISTRY

REPO = Path(__file__).resolve().parents[1]
NOTICE = ("**Research and teaching tool, not for clinical use.** Predictions come from models "
          "trained on small or synthetic data and must never guide the care of a patient.")
TRAIN_COMMAND = "python train.py"
PRESETS = {"default": "0.5", "youden": "Youden (val)", "sens95": "Sensitivity ≥ 95% (val)",
           "spec95": "Specificity ≥ 95% (val)"}
# Leaderboard metrics, as core.metrics names them -> column labels users know.
METRICS = {"accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity",
           "precision": "PPV", "npv": "NPV", "f1": "F1", "roc_auc": "AUC"}
BOOTSTRAP = 300  # resamples for the F1 interval (no closed form): ~0.4 s a model on 750 cases, cached


# ---------------------------------------------------------------- where runs live

def checkpoints_root(argv: list[str] | None = None) -> Path:
    """`-- --checkpoints DIR`, else $CHECKPOINTS_DIR, else the repository's checkpoints/."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoints")
    given = parser.parse_known_args(sys.argv[1:] if argv is None else argv)[0].checkpoints
    return Path(given or os.environ.get("CHECKPOINTS_DIR") or REPO / "checkpoints")


@dataclass(frozen=True)
class Run:
    path: Path
    models: tuple[str, ...]
    stamp: float  # newest mtime among the files the caches read: a new card invalidates them

    @property
    def key(self) -> tuple[str, float]:
        return str(self.path), self.stamp

    @property
    def cards(self) -> dict[str, dict]:
        return cards(*self.key)

    def display(self, model: str) -> str:
        return self.cards[model].get("display_name", model)


def open_run(path: Path) -> Run:
    """A run's completed models in registry order: CNNs, sequence models, classical, ensembles."""
    order = {name: i for i, name in enumerate(REGISTRY)}
    models = tuple(sorted(ckpt.list_models(path), key=lambda m: (order.get(m, len(order)), m)))
    files = [path / ckpt.SPLIT, *(path / m / ckpt.CARD for m in models)]
    return Run(path, models, max(f.stat().st_mtime for f in files))


def sidebar() -> Run | None:
    """The notice, the run selector and the operating point; returns the selected run, if any."""
    st.sidebar.warning(NOTICE)
    root = checkpoints_root()
    runs = ckpt.list_runs(root)
    if not runs:
        st.sidebar.caption(f"No run in `{root}`.")
        return None
    path = st.sidebar.selectbox("Run", runs, format_func=lambda p: p.name, key="run")
    st.sidebar.selectbox("Operating point", list(PRESETS), format_func=PRESETS.get, key="preset",
                         help="Thresholds chosen on the validation split, stored in each model card.")
    st.sidebar.caption(f"Runs from `{root}`")
    try:
        run = open_run(path)
        cards(*run.key)  # read (and cache) every card now, so a damaged one is reported here, once
    except (ckpt.CheckpointError, OSError) as err:
        st.sidebar.error(f"Run {path.name} cannot be read: {err}")
        return None
    return run


def no_run_message() -> None:
    st.info(f"No training run with a finished model in `{checkpoints_root()}` yet. Train the demo "
            "(synthetic head CT phantoms, a few minutes on a laptop CPU) from the repository root:")
    st.code(TRAIN_COMMAND, language="bash")
    st.caption("Then reload this page. Other folders: `streamlit run dashboard/app.py -- --checkpoints DIR` "
               "or the CHECKPOINTS_DIR environment variable.")


def require_run() -> Run:
    """The selected run with at least one finished model, or the how-to-train message and a stop."""
    run = st.session_state.get("current_run")
    if run is None or not run.models:
        no_run_message()
        st.stop()
    return run


def preset() -> str:
    return st.session_state.get("preset", "default")


def threshold(card: dict, name: str | None = None) -> float:
    return float(card["thresholds"].get(name or preset(), 0.5))


# ---------------------------------------------------------------- cached tables

@st.cache_data(show_spinner=False)
def cards(run_dir: str, stamp: float) -> dict[str, dict]:
    return {m: ckpt.load_card(Path(run_dir) / m) for m in ckpt.list_models(run_dir)}


@st.cache_data(show_spinner=False)
def predictions(run_dir: str, stamp: float) -> pd.DataFrame:
    """Every model's val and test rows, with a model column."""
    frames = [pd.read_csv(Path(run_dir) / m / ckpt.PREDICTIONS, dtype={"id": str, "subtype": str}).assign(model=m)
              for m in ckpt.list_models(run_dir)]
    out = pd.concat(frames, ignore_index=True)
    if "subtype" in out:
        out["subtype"] = out["subtype"].fillna("")
    return out


@st.cache_data(show_spinner=False)
def histories(run_dir: str, stamp: float) -> pd.DataFrame:
    return pd.concat([pd.read_csv(Path(run_dir) / m / ckpt.HISTORY).assign(model=m)
                      for m in ckpt.list_models(run_dir)], ignore_index=True)


@st.cache_data(show_spinner=False)
def split_manifest(run_dir: str, stamp: float) -> pd.DataFrame:
    from core.data.splits import read_manifest
    return read_manifest(Path(run_dir) / ckpt.SPLIT)


@st.cache_data(show_spinner=False)
def run_json(run_dir: str, stamp: float, name: str) -> dict:
    """leakage.json or run.json of a run; {} when the run predates the file."""
    path = Path(run_dir) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def test_rows(run: Run, model: str) -> pd.DataFrame:
    preds = predictions(*run.key)
    return preds[(preds["model"] == model) & (preds["split"] == "test")].reset_index(drop=True)


def test_probs(run: Run) -> pd.DataFrame:
    """Test cases x models: one prob column per model, plus label (and subtype when known)."""
    preds = predictions(*run.key)
    test = preds[preds["split"] == "test"]
    wide = test.pivot_table(index="id", columns="model", values="prob", aggfunc="first")
    extra = [c for c in ("label", "subtype", "path", "bleed_area_mm2") if c in test]
    return test.drop_duplicates("id").set_index("id")[extra].join(wide[list(run.models)])


def decisions(run: Run, cases: pd.DataFrame) -> pd.DataFrame:
    """Cases x models: True where the model calls hemorrhage at its sidebar-preset threshold."""
    return pd.DataFrame({m: cases[m] >= threshold(run.cards[m]) for m in run.models}, index=cases.index)


def truth(cases: pd.DataFrame) -> pd.Series:
    """'hemorrhage, subdural' / 'normal' per case, for captions."""
    text = cases["label"].map({1: "hemorrhage", 0: "normal"})
    if "subtype" in cases:
        text = text.where(cases["subtype"].fillna("") == "", text + ", " + cases["subtype"].fillna(""))
    return text


@st.cache_data(show_spinner="Computing metrics and intervals…", max_entries=2048)
def test_metrics(run_dir: str, stamp: float, model: str, thr: float, bootstrap: int = 0) -> dict:
    preds = predictions(run_dir, stamp)
    rows = preds[(preds["model"] == model) & (preds["split"] == "test")]
    return M.binary_metrics(rows["label"].to_numpy(), rows["prob"].to_numpy(), thr, bootstrap=bootstrap)


def rounds_to(printed: float, computed: float) -> bool:
    """Whether a figure printed with k decimals is `computed` rounded to k decimals (0.9734 vs 989/1016)."""
    decimals = len(repr(float(printed)).split(".")[1])
    return abs(printed - computed) <= 0.5 * 10 ** -decimals + 1e-12


def confusion_check(tn: int, fp: int, fn: int, tp: int, printed: dict) -> pd.DataFrame:
    """Every metric a printed confusion matrix implies (core.metrics.binary.from_confusion), Wilson intervals
    for the proportions, and whether each figure the paper printed is the matrix's, rounded."""
    got = M.from_confusion(tn, fp, fn, tp)
    counts = {"accuracy": (tp + tn, tn + fp + fn + tp), "sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
              "precision": (tp, tp + fp), "npv": (tn, tn + fn)}
    return pd.DataFrame([{
        "metric": key, "from the matrix": value,
        "95% CI": ci_text(M.wilson_interval(*counts[key])) if key in counts else "",
        "as k / n": f"{counts[key][0]} / {counts[key][1]}" if key in counts else "",
        "printed in the paper": printed.get(key),
        "matches print": rounds_to(printed[key], value) if key in printed else None,
    } for key, value in got.items()])


@st.cache_data(show_spinner=False)
def delong_matrix(run_dir: str, stamp: float, models: tuple[str, ...]) -> pd.DataFrame:
    """Pairwise DeLong p-values for equal test AUC (models scored on the same test cases)."""
    probs = test_probs(open_run(Path(run_dir)))
    y = probs["label"].to_numpy()
    return pd.DataFrame([[M.delong_test(y, probs[a].to_numpy(), probs[b].to_numpy()) for b in models]
                         for a in models], index=list(models), columns=list(models))


def ci_text(ci) -> str:
    """"0.712–0.918", or "" where the interval is undefined (NaN in memory, null in a card)."""
    if ci is None or ci[0] is None or ci[0] != ci[0]:
        return ""
    return f"{ci[0]:.3f}–{ci[1]:.3f}"


def leaderboard(run: Run) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per model at the sidebar's operating point, and the metrics dicts behind it."""
    rows, mets = [], {}
    for model in run.models:
        card = run.cards[model]
        met = mets[model] = test_metrics(*run.key, model, threshold(card), BOOTSTRAP)
        row = {"Model": run.display(model), "Family": family_of_card(card).key, "Source": "this run",
               "Threshold": met["threshold"]}
        for key, label in METRICS.items():
            row[label], row[f"{label} 95% CI"] = met[key], ci_text(met.get(f"{key}_ci"))
        row.update({"Latency p50 (ms)": card["latency"]["batch1_ms_p50"], "Params (M)": card["params"] / 1e6,
                    "Size (MB)": card["size_bytes"] / 1e6, "Training (s)": card["training"]["seconds"],
                    "Test n": met["n"]})
        rows.append(row)
    return pd.DataFrame(rows), mets


def published_board() -> pd.DataFrame:
    """core.published rows, labelled, with the leaderboard's column names."""
    from core.metrics.published import PUBLISHED, published_rows

    pub = published_rows()
    out = pd.DataFrame({
        "Model": [f"{m} (study {s}, {'published' if f == 'published' else 'recomputed'})"
                  for s, m, f in zip(pub["study"], pub["model"], pub["figures"])],
        "Source": ["published" if f == "published" else "published matrix, recomputed here" for f in pub["figures"]]})
    for key, label in METRICS.items():
        if key in pub:
            out[label] = pub[key].to_numpy()
    out["Recall (as printed)"] = pub.get("recall")  # study A does not say which class its recall is
    out["Latency p50 (ms)"] = pub.get("inference_ms")
    out["Test n"] = [PUBLISHED[s]["test_set"]["n"] for s in pub["study"]]
    return out


# ---------------------------------------------------------------- scans and models

@st.cache_resource(show_spinner="Loading model…", max_entries=32)
def loaded_model(weights_sha256: str, model_dir: str) -> Predictor:
    """Each model once per process: the key is its weights hash (verified again on load)."""
    return load_predictor(model_dir)


def model_for(run: Run, model: str) -> Predictor:
    return loaded_model(run.cards[model]["weights_sha256"], str(run.path / model))


def with_cam(run: Run) -> list[str]:
    """The run's models that Grad-CAM can explain (CNNs and sequence models)."""
    return [m for m in run.models if family_of_card(run.cards[m]).explained_by_cam]


def read_scan(data: bytes, window: str | None = None, frame: int = 0) -> Scan:
    """An uploaded file's bytes as a Scan; the content decides the format, never a MIME type or
    file name. Raises core.io.imaging.ScanError with one sentence for the user."""
    return load_scan(bytes(data), window=window, frame=frame)


def predict_all(run: Run, image: np.ndarray, series: list[np.ndarray] | None = None,
                centre: int = 0) -> tuple[pd.DataFrame, float]:
    """Every model's probability and decision at its threshold for one uint8 (H, W) slice, and seconds.

    With `series` (ordered slices, `image` = series[centre]) a sequence model reads the slices around
    the centre; alone, a slice is a stack of itself. An ensemble combines its members."""
    from core.data.decode import resize_square
    from core.inference import predict_all as predict

    slices = series if series else [image]
    manifest = pd.DataFrame({"series": "upload", "slice_index": range(len(slices))}) if series else None
    loaded = {model: model_for(run, model) for model in run.models}  # cached: not part of the timing
    start = time.perf_counter()
    probs = predict(loaded, lambda size: np.stack([resize_square(s, size) for s in slices]), manifest)
    rows = []
    for model, prob in probs.items():
        thr, p = threshold(run.cards[model]), float(prob[centre])
        rows.append({"model": model, "Model": run.display(model), "cam": family_of_card(run.cards[model]).explained_by_cam,
                     "probability": p, "threshold": thr, "hemorrhage": p >= thr})
    return pd.DataFrame(rows), time.perf_counter() - start


def consensus(calls: pd.Series) -> str:
    return f"{int(calls.sum())} of {len(calls)} models call hemorrhage"


def explain_api():
    """core.explain, imported only where CAMs are drawn: it pulls in pytorch-grad-cam and OpenCV."""
    return importlib.import_module("core.explain.cam")


@st.cache_data(show_spinner="Computing CAMs…", max_entries=512)
def cam(weights_sha256: str, model_dir: str, image: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    """(cam in [0, 1] at the image's size, seconds) of the hemorrhage class for one model."""
    result = explain_api().explain_image(loaded_model(weights_sha256, model_dir), image, method=method,
                                         target=1)
    return result.cam, result.seconds


def cam_for(run: Run, model: str, image: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    return cam(run.cards[model]["weights_sha256"], str(run.path / model), image, method)


def outline(image: np.ndarray, mask: np.ndarray | None, colour=(0, 255, 0)) -> np.ndarray:
    """RGB copy of a grey uint8 image with the mask border drawn in colour (green, as in core.explain.cam.overlay)."""
    from scipy import ndimage

    rgb = np.repeat(image[..., None], 3, axis=2)
    if mask is not None and mask.any():
        rgb[mask & ~ndimage.binary_erosion(mask)] = colour
    return rgb


@st.cache_data(show_spinner=False, max_entries=256)
def case_image(path: str) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(display image, phantom mask or None, error sentence) for a file named in split.csv."""
    from core.io.imaging import ScanError
    try:
        image = load_scan(path).image
    except ScanError as err:
        return None, None, f"{Path(path).name}: {err}"
    mask_path = Path(path).parents[1] / "masks" / Path(path).name  # phantom sets keep masks beside classes
    mask = None
    if mask_path.is_file():
        mask = load_scan(mask_path).image > 127
        mask = mask if mask.shape == image.shape else None
    return image, mask, ""


# ---------------------------------------------------------------- model cards

def card_markdown(card: dict) -> str:
    """A model card as readable Markdown (the JSON download carries everything)."""
    t, lat, tr, ds = card["thresholds"], card.get("latency", {}), card.get("training", {}), card.get("dataset", {})
    lines = [f"# {card.get('display_name', card['model'])} (`{card['model']}`)", "",
             "Research and teaching tool, not for clinical use.", "",
             f"- Family: {family_of_card(card).key}; reference: {card.get('reference', '')}",
             family_of_card(card).describe_input(card),
             f"- Parameters: {card['params']:,}"
             + (f"; GMACs at input size: {card['gmacs']:.3f}" if card.get("gmacs") is not None else "")
             + f"; weights: {card['size_bytes'] / 1e6:.2f} MB, sha256 `{card['weights_sha256']}`",
             f"- Latency ({lat.get('device', '?')}, batch 1): p50 {lat.get('batch1_ms_p50', float('nan')):.1f} ms, "
             f"p95 {lat.get('batch1_ms_p95', float('nan')):.1f} ms; throughput "
             f"{lat.get('throughput_img_s', float('nan')):.0f} img/s",
             f"- Training: {tr.get('epochs')} epochs in {tr.get('seconds', float('nan')):.0f} s on {tr.get('device')}, "
             f"pretrained {tr.get('pretrained')}, seed {tr.get('seed')}",
             f"- Data: {ds.get('source', '?')}; " + ", ".join(
                 f"{s} {c['n']} ({c['hemorrhage']} hemorrhage)" for s, c in ds.get("counts", {}).items()),
             f"- Created: {card.get('created_at', '?')}", "",
             "## Operating points (chosen on validation)", "", "| point | threshold |", "|---|---|",
             *[f"| {PRESETS.get(k, k)} | {v:.4f} |" for k, v in t.items()], "",
             "## Metrics at threshold 0.5 (95% intervals)", "",
             "| metric | validation | test |", "|---|---|---|"]
    for key, label in {**METRICS, "balanced_accuracy": "Balanced accuracy", "mcc": "MCC", "pr_auc": "PR AUC",
                       "brier": "Brier", "ece": "ECE"}.items():
        cells = []
        for split in ("val", "test"):
            met = card["metrics"][split]
            value = met.get(key)
            ci = ci_text(met.get(f"{key}_ci"))
            cells.append("n/a" if value is None else f"{value:.3f}" + (f" ({ci})" if ci else ""))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"
