"""Cached readers of a run folder's stored numbers (keyed by the folder and its files' newest mtime): cards, which
models can be trusted, predictions, histories, stored evaluations, and the small table helpers several pages share.
Only verified models' files are read. No torch: the pages that show stored numbers import this module alone; the
models, their maps and the slices they read are dashboard/models.py's."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from core.io import store as ckpt
from core.metrics import binary as M


@st.cache_data(show_spinner=False)
def cards(run_dir: str, stamp: float) -> dict[str, dict]:
    return {m: ckpt.load_card(Path(run_dir) / m) for m in ckpt.list_models(run_dir)}


@st.cache_data(show_spinner="Verifying models…")
def unavailable(run_dir: str, stamp: float) -> dict[str, str]:
    """The models that cannot be trusted, with why: every weights file hashed once per stamp, which covers them."""
    return ckpt.unavailable_models(run_dir, cards(run_dir, stamp))


def verified(run_dir: str, stamp: float) -> list[str]:
    return [m for m in ckpt.list_models(run_dir) if m not in unavailable(run_dir, stamp)]


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
