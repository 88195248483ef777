"""Classical baselines (study B): scaler + scikit-learn classifier on features, saved as skops; never unpickled."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import skops
import skops.io as sio
from scipy.stats import rankdata
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_sample_weight

from core.data.decode import resize_square
from core.data.features import FEATURE_CONFIG, FEATURE_NAMES, extract_features
from core.data.splits import Prepared
from core.engine.cards import dataset_facts, fitted_once_history, model_card, predictions_frame, scan_keys, split_parts
from core.engine.config import TrainConfig, is_main
from core.families.base import Cases, Family, Predictor
from core.io import store
from core.io.atomic import atomic_path
from core.io.imaging import display_grey
from core.registry import CLASSICAL_NAMES, ModelSpec

MODEL_FILE = "model.skops"
# Types beyond skops' trusted defaults that the fitted pipelines hold; anything else fails to load.
TRUSTED_TYPES = ("sklearn.calibration._CalibratedClassifier",
                 "sklearn.calibration._SigmoidCalibration",
                 "sklearn.neighbors._ball_tree.BallTree",
                 "sklearn.metrics._dist_metrics.EuclideanDistance64",
                 "sklearn.tree._tree.Tree",
                 "sklearn.neural_network._stochastic_optimizers.AdamOptimizer")
IMPORTANCE_TOP, IMPORTANCE_REPEATS = 20, 5
KNN_NEIGHBOURS, PLATT_FOLDS = 15, 5


def make_pipeline(name: str, seed: int = 0) -> Pipeline:
    """StandardScaler + the named classifier, seeded; raises ValueError for an unknown name."""
    classifiers = {
        "svm": lambda: CalibratedClassifierCV(
            SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced", random_state=seed),
            method="sigmoid", cv=PLATT_FOLDS, ensemble=False),
        # Ball tree, not brute force (docs/NOTES.md, "Classical models").
        "knn": lambda: KNeighborsClassifier(n_neighbors=KNN_NEIGHBOURS, weights="distance", algorithm="ball_tree"),
        "random_forest": lambda: RandomForestClassifier(n_estimators=200, class_weight="balanced",
                                                        random_state=seed),
        # Friedman's boosting, not the histogram variant (docs/NOTES.md, "Classical models").
        "gradient_boosting": lambda: GradientBoostingClassifier(n_estimators=200, learning_rate=0.1, max_depth=3,
                                                                random_state=seed),
        "mlp": lambda: MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, early_stopping=True,
                                     n_iter_no_change=20, max_iter=500, random_state=seed),
    }
    if name not in classifiers:
        raise ValueError(f"unknown classical model {name!r}; available: {', '.join(CLASSICAL_NAMES)}")
    return Pipeline([("scale", StandardScaler()), ("clf", classifiers[name]())])


def count_fitted_params(pipeline: Pipeline) -> tuple[int, dict]:
    """(count, detail) of the numbers the fitted pipeline keeps for prediction."""
    scaler, clf = pipeline["scale"], pipeline["clf"]
    n = scaler.mean_.size + scaler.scale_.size
    detail: dict = {"scaler": int(n)}
    if isinstance(clf, CalibratedClassifierCV):
        svm = clf.calibrated_classifiers_[0].estimator
        n += sum(a.size for a in (svm.support_vectors_, svm.dual_coef_, svm.intercept_)) + 2   # + Platt a, b
        detail["support_vectors"] = int(svm.n_support_.sum())
    elif isinstance(clf, KNeighborsClassifier):
        n += clf._fit_X.size + clf._y.size
        detail["stored_samples"] = int(clf.n_samples_fit_)
    elif isinstance(clf, RandomForestClassifier):
        nodes = sum(tree.tree_.node_count for tree in clf.estimators_)
        n += nodes
        detail.update(trees=len(clf.estimators_), nodes=int(nodes))
    elif isinstance(clf, GradientBoostingClassifier):
        nodes = sum(tree.tree_.node_count for tree in clf.estimators_.ravel())
        n += nodes + 1   # + the initial log-odds
        detail.update(trees=int(clf.n_estimators_), nodes=int(nodes))
    elif isinstance(clf, MLPClassifier):
        n += sum(w.size for w in clf.coefs_) + sum(b.size for b in clf.intercepts_)
        detail["layers"] = [int(w.shape[0]) for w in clf.coefs_] + [int(clf.coefs_[-1].shape[1])]
    return int(n), detail


def _positive_probs(pipeline: Pipeline, features: np.ndarray) -> np.ndarray:
    """P(class 1) as float64, so predictions.csv reads back exactly what the pipeline computed."""
    return pipeline.predict_proba(features)[:, list(pipeline.classes_).index(1)].astype(np.float64)


def _to_input_size(images, size: int) -> np.ndarray:
    """(N, S, S) uint8 brain windows (of window sets too) at the model's input size, resized as in training;
    raises ValueError for anything but uint8 windowed slices."""
    out = []
    for image in images:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"expected 2-D uint8 brain-window slices, got {image.dtype} of shape {image.shape}")
        image = display_grey(image)
        out.append(image if image.shape == (size, size) else resize_square(image, size))
    return np.stack(out) if out else np.zeros((0, size, size), np.uint8)


def measure_pipeline_latency(pipeline: Pipeline, images: np.ndarray, warmup: int = 3, repeats: int = 20,
                             batch: int = 32) -> dict:
    """Batch-1 p50/p95 in ms and images/s at `batch`, features + predict_proba, on the CPU."""
    one, many = images[:1], np.resize(images, (batch, *images.shape[1:]))   # tiles a small set
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        _positive_probs(pipeline, extract_features(one))
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    _positive_probs(pipeline, extract_features(many))
    return {"device": "cpu", "input_size": int(images.shape[1]),
            "batch1_ms_p50": float(np.percentile(times, 50)), "batch1_ms_p95": float(np.percentile(times, 95)),
            "throughput_img_s": float(batch / (time.perf_counter() - start)), "batch": batch}


def permutation_importances(pipeline: Pipeline, features: np.ndarray, labels: np.ndarray, seed: int,
                            n_repeats: int = IMPORTANCE_REPEATS,
                            max_rows: int = 1 << 15) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) AUC drop per shuffled column, as sklearn permutation_importance (docs/NOTES.md, "Classical models")."""
    n, n_cols = features.shape
    seed_for_columns = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    shuffler, shuffling, order, orders = np.random.RandomState(seed_for_columns), np.arange(n), np.arange(n), []
    for _ in range(n_repeats):
        shuffler.shuffle(shuffling)
        order = order[shuffling]
        orders.append(order)
    baseline = roc_auc_score(labels, _positive_probs(pipeline, features))
    scores = np.empty((n_cols, n_repeats))
    per_call = max(1, max_rows // (n * n_repeats))                # columns per predict call
    for start in range(0, n_cols, per_call):
        cols = range(start, min(n_cols, start + per_call))
        blocks = np.repeat(features[None], len(cols) * n_repeats, axis=0)   # (block, n, F)
        for b, (col, order) in enumerate((c, o) for c in cols for o in orders):
            blocks[b, :, col] = features[order, col]
        probs = _positive_probs(pipeline, blocks.reshape(-1, n_cols)).reshape(len(cols), n_repeats, n)
        scores[list(cols)] = _rank_auc(labels, probs)
    drops = baseline - scores
    return drops.mean(axis=1), drops.std(axis=1)


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of every row of scores (..., n) at once (Mann-Whitney with midranks, as roc_auc_score)."""
    positive = labels.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(scores, axis=-1)
    return (ranks[..., positive].sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def top_importances(pipeline: Pipeline, features: np.ndarray, labels: np.ndarray, seed: int) -> list[dict]:
    """Top IMPORTANCE_TOP permutation importances as {feature, mean, std}; [] when a class is missing."""
    if len(np.unique(labels)) < 2:
        return []
    mean, std = permutation_importances(pipeline, features, labels, seed)
    order = np.argsort(-mean, kind="stable")[:IMPORTANCE_TOP]
    return [{"feature": FEATURE_NAMES[i], "mean": float(mean[i]), "std": float(std[i])} for i in order]


def split_features(data: Prepared, part: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """(features per split, seconds), computed once per prepared set and shared by the classical models."""
    if "features" not in data.derived:
        started = time.perf_counter()
        features = {s: extract_features(data.images[idx]) for s, idx in part.items()}
        data.derived["features"] = (features, time.perf_counter() - started)
    return data.derived["features"]


def importance_scorer(pipeline: Pipeline, train_features: np.ndarray, train_labels: np.ndarray) -> Pipeline:
    """The fitted pipeline, or for kNN a brute-force copy (docs/NOTES.md, "Classical models")."""
    if not isinstance(pipeline["clf"], KNeighborsClassifier):
        return pipeline
    return clone(pipeline).set_params(clf__algorithm="brute").fit(train_features, train_labels)


def _fitted_pipeline(name: str, features: np.ndarray, labels: np.ndarray, seed: int) -> Pipeline:
    """The registry's pipeline fitted on training features, sized to a small training set."""
    pipeline = make_pipeline(name, seed)
    if name == "knn":   # a tiny training set has fewer neighbours than the default
        pipeline.set_params(clf__n_neighbors=min(KNN_NEIGHBOURS, len(labels)))
    if name == "svm":   # and a small class fewer cases than Platt's folds
        pipeline.set_params(clf__cv=max(2, min(PLATT_FOLDS, int(np.bincount(labels, minlength=2).min()))))
    fit_params = ({"clf__sample_weight": compute_sample_weight("balanced", labels)}
                  if name == "gradient_boosting" else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # early stopping may end before tolerance
        pipeline.fit(features, labels, **fit_params)
    return pipeline


def fit_classical(spec: ModelSpec, data: Prepared, cfg: TrainConfig, run_dir: Path) -> dict:
    """Fit one classical model on train and write its folder; returns its card ({} off rank 0)."""
    if not is_main():
        return {}
    name, man = spec.name, data.manifest
    model_dir = Path(run_dir) / name
    part = split_parts(man)
    y = {s: man["label"].to_numpy().astype(int)[part[s]] for s in part}
    features, feature_seconds = split_features(data, part)
    fit_start = time.perf_counter()
    pipeline = _fitted_pipeline(name, features["train"], y["train"], cfg.seed)
    fit_seconds = time.perf_counter() - fit_start
    probs = {s: _positive_probs(pipeline, features[s]) for s in part}
    seconds = feature_seconds + fit_seconds
    history = fitted_once_history(y, probs, seconds, img_per_s=len(part["train"]) / seconds,
                                  data_wait_s=feature_seconds, compute_s=fit_seconds)
    print(f"{name}: val_auc {history['val_auc'][0]:.3f} (features {feature_seconds:.1f}s, fit {fit_seconds:.1f}s)",
          flush=True)
    params, params_detail = count_fitted_params(pipeline)
    training = {"epochs": 1, "epochs_planned": 1, "seconds": seconds, "feature_seconds": feature_seconds,
                "fit_seconds": fit_seconds, "device": "cpu", "pretrained": False, "seed": cfg.seed, "world_size": 1,
                "best_val_auc": history["val_auc"][0], "args": cfg.recorded_args()}
    card = model_card(
        spec, y, probs, training, dataset_facts(cfg, man, part), scan_keys(man, part["test"]),
        input_size=data.image_size, native_input_size=spec.input_size, window="brain", channels="grey",
        windows=data.windows, resize_policy=data.resize_policy, framing=data.framing, weights_file=MODEL_FILE,
        params=params, params_detail=params_detail,
        hyperparameters={k: v for k, v in pipeline["clf"].get_params().items()
                         if v is None or isinstance(v, (bool, int, float, str, tuple, list))},
        features={"count": len(FEATURE_NAMES), "names": FEATURE_NAMES, "config": FEATURE_CONFIG},
        feature_importance=top_importances(importance_scorer(pipeline, features["train"], y["train"]),
                                           features["val"], y["val"], cfg.seed),
        feature_importance_method={"method": "permutation", "scoring": "roc_auc", "split": "val",
                                   "n_repeats": IMPORTANCE_REPEATS, "seed": cfg.seed},
        latency=measure_pipeline_latency(pipeline, data.images[part["test"]]))
    card["versions"]["skops"] = skops.__version__
    with atomic_path(model_dir / MODEL_FILE) as tmp:
        sio.dump(pipeline, tmp)
        digest = store.sha256_file(tmp)
    return store.finish_model_folder(model_dir, MODEL_FILE, digest, card, history, predictions_frame(man, part, probs))


class LoadedClassical(Predictor):
    """A fitted pipeline with its card."""

    def __init__(self, card: dict, pipeline: Pipeline):
        super().__init__(card, CLASSICAL)
        self.pipeline = pipeline

    def features(self, images) -> np.ndarray:
        """Feature rows of (N, H, W) uint8 slices (or a list of 2-D slices of any size)."""
        return extract_features(_to_input_size(images, self.card["input_size"]))

    def predict_images(self, images) -> np.ndarray:
        """P(hemorrhage) for each slice, resized to the card's input size as in training."""
        return _positive_probs(self.pipeline, self.features(images))

    def predict(self, cases: Cases) -> np.ndarray:
        return _positive_probs(self.pipeline, cases.features_at(self.input_size))

    def domain_features(self, cases: Cases) -> np.ndarray:
        return cases.features_at(self.input_size)


def load_classical(model_dir: str | Path) -> LoadedClassical:
    """A fitted pipeline with its card; raises CheckpointError on a sha256 mismatch or untrusted types."""
    model_dir = Path(model_dir)
    card = store.load_card(model_dir)
    if card.get("family") != "classical" or card.get("model") not in CLASSICAL_NAMES:
        raise store.CheckpointError(f"{model_dir} holds {card.get('model')!r}, not a classical model.")
    if not card.get("weights_sha256"):
        raise store.CheckpointError(f"{model_dir}/card.json has no sha256 for its model file; refusing to load it.")
    path = store.verify_file(model_dir / MODEL_FILE, card["weights_sha256"])
    if list(card.get("features", {}).get("names", [])) != list(FEATURE_NAMES):
        raise store.CheckpointError(f"{model_dir} was trained on other features than this version computes; "
                                   "retrain it.")
    try:
        # Reads the schema only (no import, no construction) to name what is not allowed.
        refused = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
        if refused:
            raise store.CheckpointError(f"{path} holds types outside the allow-list ({', '.join(refused)}); "
                                       "refusing to load it.")
        pipeline = sio.load(path, trusted=list(TRUSTED_TYPES))
    except store.CheckpointError:
        raise
    except Exception as err:   # a corrupt zip or schema: skops raises many kinds of error
        raise store.CheckpointError(f"{path} is not a readable skops file ({type(err).__name__}).") from None
    if not isinstance(pipeline, Pipeline) or not hasattr(pipeline, "predict_proba"):
        raise store.CheckpointError(f"{path} does not hold a scikit-learn pipeline.")
    expected = type(make_pipeline(card["model"])["clf"])
    if not isinstance(pipeline[-1], expected):
        raise store.CheckpointError(f"{path} holds a {type(pipeline[-1]).__name__}, not the {expected.__name__} "
                                   f"its card names.")
    return LoadedClassical(card, pipeline)


class ClassicalFamily(Family):
    key = "classical"
    weights_file = MODEL_FILE

    def fit(self, spec: ModelSpec, data: Prepared, cfg: TrainConfig, run_dir: Path, device=None) -> dict:
        return fit_classical(spec, data, cfg, run_dir)

    def load(self, model_dir: str | Path, device="cpu") -> LoadedClassical:
        return load_classical(model_dir)

    def describe_input(self, card: dict) -> str:
        features = card.get("features", {})
        return (f"- Input: {card['input_size']} px slices, {len(features.get('names', []))} hand-crafted features "
                "(brain-window histogram, GLCM, LBP, HOG); explained by permutation importance, not CAMs")


CLASSICAL = ClassicalFamily()
