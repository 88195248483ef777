"""Soft-voting and stacking ensembles over a run's saved probabilities (stacking: out-of-fold on val)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

from core.engine.cards import fitted_once_history, model_card, scan_keys
from core.families.base import Cases, Family, FitError, Predictor
from core.io import store
from core.io.weights import load_weights, save_model
from core.registry import ENSEMBLE_NAMES, ModelSpec

EPS = 1e-6
STACK_FOLDS = 5
RULES = {"ensemble_soft": {"rule": "soft_voting", "space": "probability",
                           "formula": "p = bias + sum_i weights[i] * p_i"},
         "ensemble_stack": {"rule": "stacking", "space": "logit",
                            "formula": "p = sigmoid(bias + sum_i weights[i] * logit(clip(p_i, eps, 1 - eps)))"}}


class EnsembleError(FitError):
    """An ensemble that cannot be built or applied; one readable sentence."""


def default_members(run_dir: str | Path, exclude: str = "") -> list[str]:
    """Every completed model of the run that is not an ensemble."""
    return [m for m in store.list_models(run_dir)
            if m != exclude and store.load_card(Path(run_dir) / m).get("family") != "ensemble"]


def member_predictions(run_dir: str | Path, members: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(first member's rows, (n_rows, n_members) probs) aligned on (split, id); raises EnsembleError on mismatch."""
    key = ["split", "id"]
    frames = {}
    for m in members:
        frame = pd.read_csv(Path(run_dir) / m / store.PREDICTIONS, dtype={"id": str})
        frame = frame[frame["split"].isin(["val", "test"])].reset_index(drop=True)
        if frame.duplicated(key).any():
            raise EnsembleError(f"{m}'s predictions.csv lists some (split, id) twice; it cannot be aligned.")
        frames[m] = frame
    first, base = members[0], frames[members[0]]
    wanted = pd.MultiIndex.from_frame(base[key])
    probs = []
    for m in members:
        frame = frames[m].set_index(key)
        if len(frame) != len(base) or not frame.index.isin(wanted).all():
            raise EnsembleError(f"{m} and {first} were not scored on the same val/test cases "
                                f"({len(frame)} vs {len(base)} rows); ensemble members must share one split.")
        frame = frame.loc[wanted]
        if not np.array_equal(frame["label"].to_numpy(), base["label"].to_numpy()):
            raise EnsembleError(f"{m} and {first} disagree on the labels of the same cases.")
        probs.append(frame["prob"].to_numpy(dtype=np.float64))
    return base.drop(columns="prob"), np.stack(probs, axis=1)


def combine(card: dict, weights: dict[str, torch.Tensor], member_probs: dict[str, np.ndarray]) -> np.ndarray:
    """The ensemble's P(hemorrhage) from each member's probabilities for the same cases."""
    members = card["members"]
    missing = [m for m in members if m not in member_probs]
    if missing:
        raise EnsembleError(f"{card['model']} needs the probabilities of {', '.join(missing)} too.")
    p = np.stack([np.asarray(member_probs[m], dtype=np.float64).reshape(-1) for m in members], axis=1)
    w = weights["weights"].to(torch.float64).numpy()
    bias = float(weights["bias"].reshape(-1)[0])
    if w.shape != (len(members),):
        raise EnsembleError(f"{card['model']} has {w.size} weights for {len(members)} members.")
    space = card["combine"]["space"]
    # Row-wise sum, not matmul: reproduces stored probabilities bit for bit at any batch size.
    if space == "probability":
        return np.clip(np.sum(p * w, axis=1) + bias, 0.0, 1.0)
    if space == "logit":
        return expit(np.sum(logit(np.clip(p, card["combine"]["eps"], 1 - card["combine"]["eps"])) * w, axis=1) + bias)
    raise EnsembleError(f"{card['model']}: unknown combination space {space!r}.")


def _stack_weights(x_val: np.ndarray, y_val: np.ndarray, groups: np.ndarray,
                   seed: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Out-of-fold validation probabilities, then the weights and bias refitted on all of val."""
    folds = min(STACK_FOLDS, int(np.bincount(y_val, minlength=2).min()), len(np.unique(groups)))
    if folds < 2:
        raise EnsembleError("Stacking needs at least 2 validation cases of each class, from 2 groups or more.")
    lr = LogisticRegression(C=1.0, max_iter=1000)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        out_of_fold = cross_val_predict(lr, x_val, y_val, groups=groups, cv=cv, method="predict_proba")[:, 1]
    except ValueError as err:   # a fold whose training part holds one class only
        raise EnsembleError(f"Stacking could not cross-validate on this validation split ({err}).") from None
    lr.fit(x_val, y_val)
    return out_of_fold, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), folds


def _latency(cards: dict[str, dict]) -> dict:
    """Members run one after another: latencies add up, throughputs combine harmonically."""
    lat = [c.get("latency") or {} for c in cards.values()]
    total = lambda key: float(sum(x.get(key, float("nan")) for x in lat))
    return {"device": ", ".join(sorted({str(x.get("device", "?")) for x in lat})),
            "batch1_ms_p50": total("batch1_ms_p50"), "batch1_ms_p95": total("batch1_ms_p95"),
            "throughput_img_s": 1.0 / sum(1.0 / x.get("throughput_img_s", float("nan")) for x in lat),
            "note": "sum of the members' latencies (members run one after another)"}


def _weights(name: str, rows: pd.DataFrame, p: np.ndarray, y: np.ndarray, val: np.ndarray, seed: int):
    """(weights, bias, out-of-fold val probabilities or None, how val probabilities were made)."""
    if name == "ensemble_soft":
        return (np.full(p.shape[1], 1.0 / p.shape[1]), 0.0, None,
                "the rule applied to the members' validation probabilities")
    groups = rows["group"].astype(str).to_numpy() if "group" in rows else rows["id"].to_numpy()
    out_of_fold, weights, bias, folds = _stack_weights(logit(np.clip(p[val], EPS, 1 - EPS)), y[val], groups[val], seed)
    return (weights, bias, out_of_fold, f"out-of-fold: cross_val_predict on val over {folds} stratified group folds "
                                        f"(seed {seed}); the weights are refitted on all of val")


def _members_of(name: str, run_dir: Path, members: list[str] | None) -> tuple[list[str], dict[str, dict]]:
    """The member models (default: every other completed, non-ensemble model) and their cards."""
    members = list(dict.fromkeys(members if members is not None else default_members(run_dir, exclude=name)))
    if len(members) < 2:
        raise EnsembleError(f"{name} needs at least 2 completed member models in {run_dir}; found "
                            f"{', '.join(members) or 'none'}.")
    cards = {m: store.load_card(run_dir / m) for m in members}
    nested = [m for m, c in cards.items() if c.get("family") == "ensemble"]
    if nested:
        raise EnsembleError(f"{name} cannot take another ensemble ({', '.join(nested)}) as a member.")
    return members, cards


def fit_ensemble(spec: ModelSpec, run_dir: str | Path, members: list[str] | None = None,
                 seed: int | None = None) -> dict:
    """Combine `members`' saved predictions and write the ensemble's folder; returns its card."""
    started = time.perf_counter()
    name = spec.name
    if name not in ENSEMBLE_NAMES:
        raise EnsembleError(f"{name} is a {spec.family} model, not an ensemble.")
    run_dir = Path(run_dir)
    members, cards = _members_of(name, run_dir, members)
    if seed is None:
        seed = int(store.run_facts(run_dir).get("seed", 0))
    rows, p = member_predictions(run_dir, members)
    split, y = rows["split"].to_numpy(), rows["label"].to_numpy().astype(int)
    val, test = split == "val", split == "test"
    weights, bias, out_of_fold, how = _weights(name, rows, p, y, val, seed)
    card = {"model": name, "members": members, "combine": {**RULES[name], "eps": EPS, "validation_probs": how}}
    state = {"weights": torch.tensor(weights, dtype=torch.float64), "bias": torch.tensor([bias], dtype=torch.float64)}
    probs = combine(card, state, {m: p[:, i] for i, m in enumerate(members)})
    fitted = {}
    if out_of_fold is not None:   # the refitted stack on its own (validation) data, as the training columns
        fitted = {"train_loss": log_loss(y[val], probs[val], labels=[0, 1]),
                  "train_acc": float(np.mean((probs[val] >= 0.5) == y[val]))}
        probs[val] = out_of_fold
    seconds = time.perf_counter() - started
    history = fitted_once_history({"val": y[val]}, {"val": probs[val]}, seconds, **fitted)
    member_params = {m: c.get("params") for m, c in cards.items()}
    training = {"epochs": 1, "epochs_planned": 1, "seconds": seconds, "device": "cpu", "pretrained": False,
                "seed": seed, "world_size": 1, "best_val_auc": history["val_auc"][0], "args": {"members": members}}
    card = model_card(
        spec, {"val": y[val], "test": y[test]}, {"val": probs[val], "test": probs[test]}, training,
        cards[members[0]].get("dataset"), scan_keys(rows, test), **card, input_size=None,
        member_input_sizes={m: c.get("input_size") for m, c in cards.items()},
        member_families={m: c.get("family") for m, c in cards.items()},
        weights_by_member=dict(zip(members, weights.tolist())), bias=bias,
        # What running the ensemble takes: every member plus the combiner's n weights and bias.
        params=int(sum(v or 0 for v in member_params.values())) + len(members) + 1,
        params_detail={"combiner": len(members) + 1, "members": member_params},
        size_bytes_members=int(sum(c.get("size_bytes") or 0 for c in cards.values())), latency=_latency(cards))
    print(f"{name}: val_auc {history['val_auc'][0]:.3f} over {', '.join(members)}", flush=True)
    return save_model(run_dir / name, state, card, history, rows.assign(prob=probs))


class LoadedEnsemble(Predictor):
    """An ensemble's card and weights: it scores a case from its members' probabilities."""

    def __init__(self, card: dict, weights: dict[str, torch.Tensor]):
        super().__init__(card, ENSEMBLE)
        self.weights = weights
        self.members = tuple(card["members"])

    def predict(self, cases: Cases) -> np.ndarray:
        missing = [m for m in self.members if m not in cases.probs]
        if missing:
            raise store.CheckpointError(f"ensemble {self.name} needs its members {', '.join(missing)}, "
                                        "which are not in this run.")
        return combine(self.card, self.weights, cases.probs)


def load_ensemble(model_dir: str | Path) -> LoadedEnsemble:
    """An ensemble's card and weights; the weights' sha256 is verified against the card first."""
    card = store.load_card(model_dir)
    if card.get("family") != "ensemble" or card.get("model") not in RULES:
        raise store.CheckpointError(f"{model_dir} holds {card.get('model')!r}, not an ensemble.")
    if not card.get("weights_sha256"):
        raise store.CheckpointError(f"{model_dir}/card.json has no sha256 for its weights; refusing to load them.")
    return LoadedEnsemble(card, load_weights(Path(model_dir) / store.WEIGHTS, card["weights_sha256"]))


class EnsembleFamily(Family):
    key = "ensemble"
    needs_images = False

    def fit(self, spec: ModelSpec, data, cfg, run_dir: Path, device=None) -> dict:
        return fit_ensemble(spec, run_dir)

    def load(self, model_dir: str | Path, device="cpu") -> LoadedEnsemble:
        return load_ensemble(model_dir)

    def describe_input(self, card: dict) -> str:
        rule = card.get("combine", {})
        return (f"- Members: {', '.join(card.get('members', []))}; {rule.get('rule', '?')} in "
                f"{rule.get('space', '?')} space")


ENSEMBLE = EnsembleFamily()
