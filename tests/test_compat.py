"""Run folders written before the layered core (main 36b5d2a) still load, predict and show in the dashboard."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from core.families import family_of_card
from core.inference import load_predictor, predict_all
from core.io import store
from core.io.framing import frame, framing_of
from core.io.imaging import load_scan
from core.data.decode import resize_square

from conftest import TINY_RUN_MODELS

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
# Top-level card keys and training keys as main 36b5d2a wrote them, per model of the suite's tiny run.
NETWORK = ["channels", "classes", "created_at", "dataset", "display_name", "family", "gmacs", "gmacs_native", "input_size", "latency", "mean", "metrics", "metrics_at_thresholds", "model", "native_input_size", "params", "reference", "resize_policy", "schema_version", "size_bytes", "std", "thresholds", "training", "versions", "weights_sha256", "window"]
NETWORK_TRAINING = ["args", "augment", "best_val_auc", "device", "epoch_size", "epochs", "epochs_planned", "pretrained", "recipe", "run_budget_s", "seconds", "seed", "time_budget_s", "world_size"]
OLD_CARDS = {"resnet18": (NETWORK, NETWORK_TRAINING), "cnn_gru": (NETWORK + ["architecture"], NETWORK_TRAINING),
             "knn": (["channels", "classes", "created_at", "dataset", "display_name", "family", "feature_importance", "feature_importance_method", "features", "hyperparameters", "input_size", "latency", "metrics", "metrics_at_thresholds", "model", "native_input_size", "params", "params_detail", "reference", "resize_policy", "schema_version", "size_bytes", "thresholds", "training", "versions", "weights_file", "weights_sha256", "window"],
                     ["args", "best_val_auc", "device", "epochs", "epochs_planned", "feature_seconds", "fit_seconds", "pretrained", "seconds", "seed", "world_size"]),
             "ensemble_soft": (["bias", "classes", "combine", "created_at", "dataset", "display_name", "family", "input_size", "latency", "member_families", "member_input_sizes", "members", "metrics", "metrics_at_thresholds", "model", "params", "params_detail", "reference", "schema_version", "size_bytes", "size_bytes_members", "thresholds", "training", "versions", "weights_by_member", "weights_sha256"],
                               ["args", "best_val_auc", "device", "epochs", "epochs_planned", "pretrained", "seconds", "seed", "world_size"])}


def _as_old_main_wrote_it(run: Path, tmp: Path) -> Path:
    """A copy of the run; the CNN's card loses its family key, as the earliest cards had none."""
    old = tmp / "checkpoints" / "old"
    shutil.copytree(run, old)
    card = json.loads((old / "resnet18" / store.CARD).read_text())
    del card["family"]
    (old / "resnet18" / store.CARD).write_text(json.dumps(card))
    return old


def test_cards_keep_every_field_the_earlier_layout_had(tiny_run):
    for model, (keys, training) in OLD_CARDS.items():
        card = store.load_card(tiny_run / model)
        assert set(keys) <= set(card), (model, set(keys) - set(card))
        assert set(training) <= set(card["training"]), (model, set(training) - set(card["training"]))


def test_an_earlier_run_folder_loads_predicts_and_shows(tiny_run, tmp_path, monkeypatch):
    old = _as_old_main_wrote_it(tiny_run, tmp_path)
    assert family_of_card(store.load_card(old / "resnet18")).key == "cnn"
    predictors = {m: load_predictor(old / m) for m in TINY_RUN_MODELS}
    test = pd.read_csv(old / "resnet18" / store.PREDICTIONS)
    test = test[test["split"] == "test"].head(4)
    framing = framing_of(json.loads((old / "run.json").read_text()))   # as the run saw its slices
    images = [frame(load_scan(p).image, framing)[0] for p in test["path"]]
    probs = predict_all(predictors, lambda size: np.stack([resize_square(im, size) for im in images]))
    np.testing.assert_allclose(probs["resnet18"], test["prob"].to_numpy(), atol=1e-4)
    assert set(probs) == set(TINY_RUN_MODELS) and all(np.isfinite(p).all() for p in probs.values())
    monkeypatch.setenv("CHECKPOINTS_DIR", str(old.parent))
    for page in ("leaderboard", "model_cards"):
        at = AppTest.from_file(APP, default_timeout=90).run().switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.sidebar.error
