"""Ensembles over saved predictions: the combination rules, alignment checks, exact replay of the
stored probabilities, and a run where train_run fits classical members and both ensembles."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.io import store as ckpt
from core.families.base import Cases
from core.families.ensemble import EnsembleError, combine, fit_ensemble, load_ensemble
from core.registry import get_spec

CARD_KEYS = {"schema_version", "model", "display_name", "family", "classes", "members", "combine", "thresholds",
             "metrics", "metrics_at_thresholds", "params", "size_bytes", "weights_sha256", "latency", "training",
             "dataset", "versions", "created_at"}


def _cases(n_val: int = 60, n_test: int = 60, seed: int = 0) -> pd.DataFrame:
    """val/test rows in groups of three slices, about half of them hemorrhagic."""
    rng = np.random.default_rng(seed)
    n = n_val + n_test
    return pd.DataFrame({"split": ["val"] * n_val + ["test"] * n_test, "id": [f"c{i:03d}" for i in range(n)],
                         "path": [f"/data/c{i:03d}.png" for i in range(n)], "label": rng.integers(0, 2, n),
                         "group": [f"g{i // 3}" for i in range(n)]})


def _member(run: Path, name: str, cases: pd.DataFrame, probs: np.ndarray, p50: float = 2.0) -> None:
    """A completed (non-ensemble) model folder holding only what ensembles read."""
    (run / name).mkdir(parents=True, exist_ok=True)
    ckpt.write_csv(run / name / "predictions.csv", cases.assign(prob=probs)[ckpt.PREDICTION_COLUMNS + ["group"]])
    ckpt.write_json(run / name / "card.json", {
        "schema_version": ckpt.SCHEMA_VERSION, "model": name, "family": "cnn", "input_size": 64, "params": 1000,
        "size_bytes": 4000, "latency": {"device": "cpu", "batch1_ms_p50": p50, "batch1_ms_p95": 2 * p50,
                                        "throughput_img_s": 100.0},
        "dataset": {"source": "test", "counts": {"val": {"n": 60}, "test": {"n": 60}}}})


def _member_probs(run: Path, members, split: str = "test") -> dict[str, np.ndarray]:
    out = {}
    for m in members:
        frame = pd.read_csv(run / m / "predictions.csv", dtype={"id": str})
        out[m] = frame.loc[frame["split"] == split, "prob"].to_numpy()
    return out


@pytest.fixture
def noisy_run(tmp_path) -> Path:
    cases = _cases()
    rng = np.random.default_rng(1)
    for i, name in enumerate(("alpha", "beta", "gamma")):
        signal = cases["label"].to_numpy() * (0.2 + 0.1 * i)
        _member(tmp_path, name, cases, np.clip(0.4 + signal + rng.normal(0, 0.2, len(cases)), 0, 1), p50=1.0 + i)
    return tmp_path


def test_soft_voting_is_the_mean_of_the_members(noisy_run):
    card = fit_ensemble(get_spec("ensemble_soft"), noisy_run)
    assert card["members"] == ["alpha", "beta", "gamma"] and card["combine"]["space"] == "probability"
    assert CARD_KEYS <= set(card) and {"default", "youden", "sens95", "spec95"} <= set(card["thresholds"])
    preds = pd.read_csv(noisy_run / "ensemble_soft" / "predictions.csv", dtype={"id": str})
    assert list(preds.columns[:5]) == ckpt.PREDICTION_COLUMNS and "group" in preds
    for split in ("val", "test"):
        by_hand = np.mean(list(_member_probs(noisy_run, card["members"], split).values()), axis=0)
        np.testing.assert_allclose(preds.loc[preds["split"] == split, "prob"], by_hand, rtol=0, atol=1e-12)
    weights = load_ensemble(noisy_run / "ensemble_soft").weights
    np.testing.assert_array_equal(weights["weights"].numpy(), np.full(3, 1 / 3))
    np.testing.assert_array_equal(weights["bias"].numpy(), [0.0])
    assert card["latency"]["batch1_ms_p50"] == pytest.approx(1.0 + 2.0 + 3.0)
    assert card["params"] == 3 * 1000 + 4 and card["dataset"]["source"] == "test"
    assert list(pd.read_csv(noisy_run / "ensemble_soft" / "history.csv").columns) == ckpt.HISTORY_COLUMNS


def test_an_ensemble_never_joins_another_by_default(noisy_run):
    fit_ensemble(get_spec("ensemble_soft"), noisy_run)
    assert fit_ensemble(get_spec("ensemble_stack"), noisy_run)["members"] == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("name", ["ensemble_soft", "ensemble_stack"])
def test_combine_replays_the_stored_test_probabilities(noisy_run, name):
    fit_ensemble(get_spec(name), noisy_run)
    loaded = load_ensemble(noisy_run / name)
    preds = pd.read_csv(noisy_run / name / "predictions.csv", dtype={"id": str})
    stored = preds.loc[preds["split"] == "test", "prob"].to_numpy()
    member_probs = _member_probs(noisy_run, loaded.members)
    np.testing.assert_array_equal(combine(loaded.card, loaded.weights, member_probs), stored)
    one = {m: p[:1] for m, p in member_probs.items()}                      # one new scan at a time
    np.testing.assert_array_equal(loaded.predict(Cases(None, probs=one)), stored[:1])
    with pytest.raises(ckpt.CheckpointError, match="beta"):
        loaded.predict(Cases(None, probs={m: p for m, p in member_probs.items() if m != "beta"}))


def test_stacking_keeps_up_with_a_perfect_member(tmp_path):
    cases = _cases(n_val=90, n_test=90)
    y = cases["label"].to_numpy()
    rng = np.random.default_rng(2)
    _member(tmp_path, "oracle", cases, np.clip(0.15 + 0.7 * y + rng.normal(0, 0.05, len(y)), 0, 1))
    _member(tmp_path, "coin", cases, rng.uniform(0, 1, len(y)))
    card = fit_ensemble(get_spec("ensemble_stack"), tmp_path)
    test = (cases["split"] == "test").to_numpy()
    oracle_auc = roc_auc_score(y[test], _member_probs(tmp_path, ["oracle"])["oracle"])
    assert oracle_auc == 1.0
    assert card["metrics"]["test"]["roc_auc"] >= oracle_auc - 0.02
    assert card["combine"]["space"] == "logit"
    weights = card["weights_by_member"]
    assert weights["oracle"] > 5 * abs(weights["coin"])          # it learned whom to trust


def test_stacking_validation_probabilities_are_out_of_fold(noisy_run):
    """The val rows come from cross-validation: they differ from what the refitted model says."""
    fit_ensemble(get_spec("ensemble_stack"), noisy_run)
    loaded = load_ensemble(noisy_run / "ensemble_stack")
    preds = pd.read_csv(noisy_run / "ensemble_stack" / "predictions.csv", dtype={"id": str})
    refitted = loaded.predict(Cases(None, probs=_member_probs(noisy_run, loaded.members, "val")))
    assert not np.allclose(preds.loc[preds["split"] == "val", "prob"], refitted)


def test_members_scored_on_other_cases_are_refused(noisy_run):
    cases = _cases()
    other = cases.assign(id=cases["id"].where(cases.index != 5, "elsewhere"))
    _member(noisy_run, "delta", other, np.full(len(cases), 0.5))
    with pytest.raises(EnsembleError, match="not scored on the same"):
        fit_ensemble(get_spec("ensemble_soft"), noisy_run)
    _member(noisy_run, "delta", cases.iloc[:-1], np.full(len(cases) - 1, 0.5))
    with pytest.raises(EnsembleError, match="not scored on the same"):
        fit_ensemble(get_spec("ensemble_soft"), noisy_run, members=["alpha", "delta"])
    _member(noisy_run, "delta", cases.assign(label=1 - cases["label"]), np.full(len(cases), 0.5))
    with pytest.raises(EnsembleError, match="labels"):
        fit_ensemble(get_spec("ensemble_soft"), noisy_run, members=["alpha", "delta"])


def test_fewer_than_two_members_are_refused(noisy_run):
    with pytest.raises(EnsembleError, match="at least 2"):
        fit_ensemble(get_spec("ensemble_soft"), noisy_run, members=["alpha"])


def test_tampered_ensemble_weights_are_refused(noisy_run):
    fit_ensemble(get_spec("ensemble_stack"), noisy_run)
    path = noisy_run / "ensemble_stack" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        load_ensemble(noisy_run / "ensemble_stack")


def test_train_run_fits_classical_members_then_both_ensembles(tmp_path, tiny_phantoms):
    from core.data.splits import prepare
    from core.engine.config import TrainConfig
    from core.run import train_run

    cfg = TrainConfig(models=["knn", "mlp", "ensemble_soft", "ensemble_stack"], out=str(tmp_path / "run"),
                      image_size=32, seed=0)
    cards = train_run(cfg, tiny_phantoms, lambda size: prepare(tiny_phantoms, size, seed=0))
    assert ckpt.list_models(tmp_path / "run") == ["ensemble_soft", "ensemble_stack", "knn", "mlp"]
    for name in ("ensemble_soft", "ensemble_stack"):
        card = json.loads((tmp_path / "run" / name / "card.json").read_text())
        assert card == ckpt.to_jsonable(cards[name]) and card["members"] == ["knn", "mlp"]
        assert card["dataset"] == cards["knn"]["dataset"] and 0 <= card["metrics"]["test"]["roc_auc"] <= 1
    assert cards["knn"]["input_size"] == 32
