"""Hand-crafted features and the classical baselines: contract-complete folders, exact reloads, and
a loader that refuses tampered files and untrusted types without running them."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.pipeline import Pipeline

from core.io import store as ckpt
from core.families.classical import (MODEL_FILE, fit_classical, load_classical, make_pipeline, permutation_importances)
from core.data.features import FEATURE_NAMES, extract_features, slice_features
from core.registry import CLASSICAL_NAMES, get_spec
from core.phantom.generate import write_dataset
from core.data.splits import prepare
from core.engine.config import TrainConfig

CARD_KEYS = {"schema_version", "model", "display_name", "family", "reference", "classes", "input_size", "window",
             "thresholds", "metrics", "metrics_at_thresholds", "params", "size_bytes", "weights_sha256", "latency",
             "training", "dataset", "versions", "created_at", "features", "feature_importance"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("classical") / "data"
    write_dataset(root, 120, size=64, seed=0)
    return prepare(root, 64, seed=0)


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory) -> Path:
    """Every classical model fitted once on the 120-slice set."""
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = TrainConfig(models=list(CLASSICAL_NAMES), out=str(out), seed=0)
    for name in CLASSICAL_NAMES:
        fit_classical(get_spec(name), prepared, cfg, out)
    return out


def test_features_shape_names_and_determinism(prepared):
    images = prepared.images[:12]
    x = extract_features(images)
    assert x.shape == (12, len(FEATURE_NAMES)) and x.dtype == np.float32 and np.isfinite(x).all()
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) and 100 <= len(FEATURE_NAMES) <= 500
    np.testing.assert_array_equal(x, extract_features(images))
    np.testing.assert_array_equal(x[3], slice_features(images[3]))          # a row depends on its slice alone
    hist = x[:, [n.startswith("hist_bin") for n in FEATURE_NAMES]]
    np.testing.assert_allclose(hist.sum(axis=1), 1.0, rtol=1e-5)             # normalised over the head
    # The same slice at 128 px gives as many columns (the HOG works on a fixed downscale).
    assert extract_features(np.stack([np.kron(images[0], np.ones((2, 2), np.uint8))])).shape == (1, x.shape[1])


def test_features_ignore_air():
    """Growing the black border (more field of view) changes no feature but the HOG."""
    rng = np.random.default_rng(0)
    head = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    inside = (yy - 32) ** 2 + (xx - 32) ** 2 < 28 ** 2
    head[inside] = rng.integers(60, 255, inside.sum())
    head[20:30, 30:40] = 200                                                  # a bright "bleed"
    not_hog = np.array([not n.startswith("hog_") for n in FEATURE_NAMES])
    a, b = slice_features(head), slice_features(np.pad(head, 32))
    np.testing.assert_allclose(a[not_hog], b[not_hog], atol=1e-6)
    assert slice_features(np.zeros((64, 64), np.uint8)).shape == (len(FEATURE_NAMES),)   # an empty slice is legal


def test_features_tell_bleeds_from_normal_slices(tmp_path):
    """Independent heads (stacks of one), clearly visible bleeds: a forest on the features alone
    ranks the held-out slices far better than chance."""
    write_dataset(tmp_path / "data", 160, size=64, seed=1, stack_size=1, difficulty=(0.0, 0.3))
    data = prepare(tmp_path / "data", 64, seed=0)
    x, y = extract_features(data.images), data.manifest["label"].to_numpy()
    train = data.manifest["split"].to_numpy() == "train"
    probs = make_pipeline("random_forest", seed=0).fit(x[train], y[train]).predict_proba(x[~train])[:, 1]
    assert roc_auc_score(y[~train], probs) > 0.75


def test_batched_permutation_importance_equals_sklearn():
    from sklearn.inspection import permutation_importance
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 2] + rng.normal(scale=0.5, size=160) > 0).astype(int)
    pipe = make_pipeline("random_forest", seed=0).fit(x[:100], y[:100])
    ref = permutation_importance(pipe, x[100:], y[100:], scoring="roc_auc", n_repeats=4, random_state=3)
    mean, std = permutation_importances(pipe, x[100:], y[100:], seed=3, n_repeats=4, max_rows=500)
    np.testing.assert_allclose(mean, ref.importances_mean, atol=1e-12)
    np.testing.assert_allclose(std, ref.importances_std, atol=1e-12)
    assert np.argmax(mean) == 0


@pytest.mark.parametrize("name", CLASSICAL_NAMES)
def test_every_classical_model_writes_a_complete_folder(run, prepared, name):
    folder = run / name
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "history.csv", MODEL_FILE, "predictions.csv"]
    card = json.loads((folder / "card.json").read_text())
    assert CARD_KEYS <= set(card) and card["family"] == "classical" and card["model"] == name
    assert card["weights_sha256"] == ckpt.sha256_file(folder / MODEL_FILE)
    assert card["size_bytes"] == (folder / MODEL_FILE).stat().st_size and card["params"] > 0
    assert {"default", "youden", "sens95", "spec95"} <= set(card["thresholds"])
    assert set(card["metrics_at_thresholds"]) == set(card["thresholds"])
    assert 0 <= card["metrics"]["test"]["roc_auc"] <= 1 and card["input_size"] == 64
    assert card["latency"]["device"] == "cpu" and card["latency"]["batch1_ms_p50"] > 0
    assert card["training"]["epochs"] == 1 and card["training"]["seed"] == 0 and card["versions"]["skops"]
    assert card["features"]["names"] == list(FEATURE_NAMES)
    importance = card["feature_importance"]
    assert 0 < len(importance) <= 20 and set(importance[0]) == {"feature", "mean", "std"}
    assert importance[0]["feature"] in FEATURE_NAMES
    assert [r["mean"] for r in importance] == sorted((r["mean"] for r in importance), reverse=True)
    counts = card["dataset"]["counts"]
    assert counts["test"]["n"] == int((prepared.manifest["split"] == "test").sum())

    history = pd.read_csv(folder / "history.csv")
    assert list(history.columns) == ckpt.HISTORY_COLUMNS and history["epoch"].tolist() == [1]
    preds = pd.read_csv(folder / "predictions.csv", dtype={"id": str})
    assert list(preds.columns[:5]) == ckpt.PREDICTION_COLUMNS and set(preds.columns) >= {"group", "subtype"}
    assert sorted(set(preds["split"])) == ["test", "val"]
    assert len(preds) == counts["val"]["n"] + counts["test"]["n"] and preds["prob"].between(0, 1).all()
    assert not list(run.rglob("*.partial"))


@pytest.mark.parametrize("name", CLASSICAL_NAMES)
def test_load_classical_reproduces_stored_test_probabilities(run, prepared, name):
    model = load_classical(run / name)
    preds = pd.read_csv(run / name / "predictions.csv", dtype={"id": str})
    test = preds[preds["split"] == "test"]
    row = {i: k for k, i in enumerate(prepared.manifest["id"])}
    images = prepared.images[[row[i] for i in test["id"]]]
    np.testing.assert_array_equal(model.predict_images(images), test["prob"].to_numpy())
    # A slice of another size is padded and resized like the training set was: same shape out.
    assert model.predict_images([np.kron(images[0], np.ones((3, 2), np.uint8))]).shape == (1,)


def test_models_of_a_run_share_features_and_knn_importances_match_its_ball_tree(run, prepared):
    # The run fixture fitted all five on one Prepared set: its features were extracted once.
    features, seconds = prepared.derived["features"]
    cards = {n: ckpt.load_card(run / n) for n in CLASSICAL_NAMES}
    assert len({c["training"]["feature_seconds"] for c in cards.values()}) == 1 and seconds > 0
    split = prepared.manifest["split"].to_numpy()
    np.testing.assert_array_equal(features["val"], extract_features(prepared.images[split == "val"]))
    # kNN's importances came from a brute-force copy; the saved ball-tree pipeline gives the same numbers.
    knn = load_classical(run / "knn")
    assert knn.pipeline["clf"].algorithm == "ball_tree"
    labels = prepared.manifest["label"].to_numpy()[split == "val"]
    mean, std = permutation_importances(knn.pipeline, features["val"], labels, seed=0)
    for row in cards["knn"]["feature_importance"]:
        i = FEATURE_NAMES.index(row["feature"])
        assert row["mean"] == pytest.approx(mean[i], abs=1e-9) and row["std"] == pytest.approx(std[i], abs=1e-9)


def test_tampered_model_file_is_refused(run, tmp_path):
    folder = shutil.copytree(run / "svm", tmp_path / "svm")
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        load_classical(folder)


class Payload:
    """Stands in for a malicious object: restoring it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).write_text("code ran")
        self.__dict__.update(state)


def _plant(folder: Path, obj) -> None:
    """Replace the model file by `obj` and rewrite the card's sha256, so the hash check passes."""
    sio.dump(obj, folder / MODEL_FILE)
    card = json.loads((folder / "card.json").read_text())
    card["weights_sha256"] = ckpt.sha256_file(folder / MODEL_FILE)
    (folder / "card.json").write_text(json.dumps(card))


def test_untrusted_class_is_refused_without_running(run, tmp_path):
    folder = shutil.copytree(run / "mlp", tmp_path / "mlp")
    marker = tmp_path / "pwned.txt"
    _plant(folder, Pipeline([("scale", StandardScaler()), ("clf", Payload(str(marker)))]))
    with pytest.raises(ckpt.CheckpointError, match="allow-list.*Payload"):
        load_classical(folder)
    assert not marker.exists()
    # The payload is live: loading it as trusted would have run it.
    sio.load(folder / MODEL_FILE, trusted=sio.get_untrusted_types(file=folder / MODEL_FILE))
    assert marker.read_text() == "code ran"


def test_untrusted_function_is_refused(run, tmp_path):
    folder = shutil.copytree(run / "knn", tmp_path / "knn")
    _plant(folder, Pipeline([("scale", FunctionTransformer(os.system)), ("clf", make_pipeline("knn")[-1])]))
    with pytest.raises(ckpt.CheckpointError, match="allow-list.*system"):
        load_classical(folder)


def test_not_a_skops_file_is_refused(run, tmp_path):
    folder = shutil.copytree(run / "knn", tmp_path / "knn")
    (folder / MODEL_FILE).write_bytes(b"not a zip archive")
    card = json.loads((folder / "card.json").read_text())
    card["weights_sha256"] = ckpt.sha256_file(folder / MODEL_FILE)
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ckpt.CheckpointError, match="not a readable skops file"):
        load_classical(folder)
