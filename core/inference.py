"""Any saved model, whatever its family: loading (`load_predictor`; which can be trusted is
core.io.store.unavailable_models), P(hemorrhage) per case (`predict_all`; every output of a subtypes head:
`predict_outputs_all`; the slices of an uploaded series: `score_series`, `series_ranking`) and how unlike its training
data each case is (`fit_domain_check` at training time, `domain_scores_all`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from core.data.decode import resize_square
from core.data.features import FEATURE_NAMES
from core.data.splits import Prepared
from core.engine.cards import split_parts
from core.families import family_of_card
from core.families.base import Cases, Predictor
from core.io import store
from core.io.weights import load_weights, save_weights
from core.metrics.binary import scan_scores
from core.metrics.domain import MAX_FIT_CASES, PASS_RATE, DomainModel, fit_domain

RUN_DOMAIN = "domain.json"   # beside RUN/domain.safetensors: the run's image domain check (fit_image_domain)


def load_predictor(model_dir: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The model in model_dir, its files verified against the card's sha256 before use, with its domain check's
    statistics where the card records them (verified alike)."""
    predictor = family_of_card(store.load_card(model_dir)).load(model_dir, device)
    if facts := predictor.card.get("domain"):
        tensors = load_weights(Path(model_dir) / store.DOMAIN, facts.get("sha256"))
        predictor.domain = DomainModel.from_tensors({k: v.numpy() for k, v in tensors.items()})
    return predictor


def _cases_of(data: Prepared, split: str, seed: int) -> Cases:
    """A prepared split's cases for the domain checks (the training split a seeded sample of at most
    MAX_FIT_CASES), made once per run so that every model and the run's own check share their features; resized only
    for a model that reads another size."""
    key = ("domain_cases", split, seed)
    if key not in data.derived:
        rows = split_parts(data.manifest)[split]
        rows = np.random.default_rng(seed).permutation(rows)[:MAX_FIT_CASES] if split == "train" else rows
        images = data.images[rows]
        data.derived[key] = Cases(lambda size: images if size == data.image_size else np.stack(
            [resize_square(i, size) for i in images]), data.manifest.iloc[rows].reset_index(drop=True))
    return data.derived[key]


def _labels(cases: Cases) -> np.ndarray:
    return cases.manifest["label"].to_numpy()


def _stored(domain: DomainModel, path: Path, train: Cases, val: Cases, method: str) -> dict:
    """Write a domain check's statistics to `path` (safetensors); the facts a card or domain.json records of it."""
    digest = save_weights(path, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in domain.tensors().items()})
    return {"method": method, "fitted_on": {"split": "train", "n": int(len(train.manifest))},
            "calibrated_on": {"split": "val" if len(val.manifest) else "train", "n": int(len(domain.validation))},
            "pass_rate": PASS_RATE, "threshold": domain.threshold, "sha256": digest}


def fit_domain_check(model_dir: str | Path, data: Prepared, device: str | torch.device = "cpu",
                     seed: int = 0) -> dict:
    """Fit the saved model's domain check on its run's training split (a seeded sample of at most MAX_FIT_CASES),
    calibrated on the validation split; writes domain.safetensors and the card's "domain"; returns the card
    (unchanged for a model with no features of its own: an ensemble)."""
    predictor = load_predictor(model_dir, device)
    train, val = _cases_of(data, "train", seed), _cases_of(data, "val", seed)
    features = predictor.domain_features(train)
    if features is None:
        return predictor.card
    domain = fit_domain(features, _labels(train), predictor.domain_features(val))
    method = "Mahalanobis distance to the nearest class mean, shared Ledoit-Wolf covariance (Lee et al. 2018)"
    card = {**predictor.card, "domain": {**_stored(domain, Path(model_dir) / store.DOMAIN, train, val, method),
                                         "features": int(features.shape[1])}}
    store.write_json(Path(model_dir) / store.CARD, card)
    return card


def fit_image_domain(run_dir: str | Path, data: Prepared, seed: int = 0) -> dict:
    """The run's own domain check, whatever its models: the same statistics on the hand-crafted image features
    (core.data.features: intensities, texture, shape) of its training split, at its first image size, shared with
    its classical models (Cases.features_at). Writes RUN/domain.safetensors and RUN/domain.json; returns the facts."""
    train, val = _cases_of(data, "train", seed), _cases_of(data, "val", seed)
    domain = fit_domain(train.features_at(data.image_size), _labels(train), val.features_at(data.image_size))
    method = ("Mahalanobis distance to the nearest class mean, shared Ledoit-Wolf covariance, on "
              f"{len(FEATURE_NAMES)} hand-crafted image features")
    facts = {**_stored(domain, Path(run_dir) / store.DOMAIN, train, val, method), "image_size": data.image_size}
    store.write_json(Path(run_dir) / RUN_DOMAIN, facts)
    return facts


def image_domain(run_dir: str | Path) -> tuple[DomainModel, dict] | None:
    """The run's image domain check and its facts (verified), or None for a run written before it existed."""
    path = Path(run_dir) / RUN_DOMAIN
    if not path.is_file():
        return None
    facts = store.read_json(path)
    tensors = load_weights(Path(run_dir) / store.DOMAIN, facts.get("sha256"))
    return DomainModel.from_tensors({k: v.numpy() for k, v in tensors.items()}), facts


def image_domain_scores(check: tuple[DomainModel, dict], images_at: Callable[[int], np.ndarray]) -> np.ndarray:
    """Each framed slice's score under the run's image domain check (larger: less like its training slices)."""
    domain, facts = check
    return domain.scores(Cases(images_at).features_at(facts["image_size"]))


def domain_scores_all(predictors: dict[str, Predictor], images_at: Callable[[int], np.ndarray],
                      manifest: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Each case's domain score under every predictor that has a domain check (larger: less like its training
    data; above predictor.domain.threshold: out of its domain)."""
    cases = Cases(images_at, manifest)
    return {name: p.domain.scores(p.domain_features(cases)) for name, p in predictors.items() if p.domain}


def predict_outputs_all(predictors: dict[str, Predictor], images_at: Callable[[int], np.ndarray],
                        manifest: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """(N, len(p.outputs)) probabilities per case per predictor, column 0 P(hemorrhage) (ensembles after members);
    images_at(size) -> (N, S, S[, C]) uint8."""
    cases, outputs = Cases(images_at, manifest), {}
    for name, p in sorted(predictors.items(), key=lambda item: bool(item[1].members)):
        outputs[name] = p.predict_outputs(cases)
        cases.probs[name] = outputs[name][:, 0]
    return {name: outputs[name] for name in predictors}


def predict_all(predictors: dict[str, Predictor], images_at: Callable[[int], np.ndarray],
                manifest: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """P(hemorrhage) per case per predictor (ensembles after members); images_at(size) -> (N, S, S[, C]) uint8."""
    return {name: p[:, 0] for name, p in predict_outputs_all(predictors, images_at, manifest).items()}


UPLOAD = "upload"   # the series key of an uploaded series' slices, in which a sequence model reads neighbours


def slice_images(slices: Sequence[np.ndarray]) -> Callable[[int], np.ndarray]:
    """images_at(size) for slices of any size ((H, W[, C]) uint8): each resized to size x size, stacked."""
    return lambda size: np.stack([resize_square(s, size) for s in slices])


def score_series(predictors: dict[str, Predictor], slices: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Every predictor's outputs, (n, outputs) with column 0 P(hemorrhage), for one slice (n = 1) or for the slices of
    one series in slice order: a sequence model reads each with its neighbours, every other model each alone."""
    manifest = pd.DataFrame({"series": UPLOAD, "slice_index": range(len(slices))}) if len(slices) > 1 else None
    return predict_outputs_all(predictors, slice_images(slices), manifest)


def series_ranking(probs: Mapping[str, np.ndarray], top: int = 3) -> pd.DataFrame:
    """Per model (the index), a series' scan score as the scan-level metrics compute it (`scan_score`:
    core.metrics.binary.scan_scores, its most suspicious slice) and its `top` slices' indices, most suspicious first."""
    rows = {}
    for model, p in probs.items():
        p = np.asarray(p, float)
        # An upload's truth is unknown: only the score is read, so its labels are placeholders.
        score = scan_scores(np.full(len(p), UPLOAD), np.zeros(len(p), int), p)[1][0]
        rows[model] = {"scan_score": float(score), "top": np.argsort(-p, kind="stable")[:top].tolist()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["scan_score", "top"])
