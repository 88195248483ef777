"""Run folders (checkpoints/README.md): JSON cards, CSVs, listing, and which models can be trusted (sha256); atomic, no
pickle. Tensors (weights, resume states) are core.io.weights'; this module imports no torch."""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from core.io.atomic import atomic_write, remove_stale_temp_dirs, temp_dir
from core.registry import REGISTRY

SCHEMA_VERSION = 1
WEIGHTS, CARD, HISTORY, PREDICTIONS, SPLIT = (
    "model.safetensors", "card.json", "history.csv", "predictions.csv", "split.csv")
# The model file each family's `load` reads beside card.json, by the registry's family key: the family names it, never
# the card, which could name a pickle (core.families' Family.weights_file; tests/test_architecture.py holds them equal).
MODEL_FILES = {"cnn": WEIGHTS, "sequence": WEIGHTS, "classical": "model.skops", "ensemble": WEIGHTS}
DOMAIN = "domain.safetensors"   # the model's training-data statistics for its domain check (card "domain")
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds",
                   "img_per_s", "data_wait_s", "compute_s"]
PREDICTION_COLUMNS = ["split", "id", "path", "label", "prob"]
# RUN/evaluations/NAME: `python -m core.evaluate` without --out; complete once it holds these (core.report writes
# leaderboard.csv and report.md beside them).
EVALUATIONS, EVALUATION_FILES = "evaluations", ("report.json", "predictions.csv")


class CheckpointError(ValueError):
    """A run folder or model that cannot be trusted or read; one readable sentence."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_jsonable(value):
    """Cards hold plain JSON: numpy scalars become Python numbers, tuples lists, NaN null."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def file_problem(path: str | Path, expected_sha256: str | None) -> str:
    """What is wrong with a model file, in a few words; '' when it exists and, given a digest, matches it."""
    path = Path(path)
    if not path.is_file():
        return f"weights file {path.name} is missing"
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        return "weights do not match the card's sha256: tampered, truncated or replaced"
    return ""


def verify_file(path: str | Path, expected_sha256: str | None) -> Path:
    """The path of a model file that exists and, given a digest, matches it; else CheckpointError."""
    if problem := file_problem(path, expected_sha256):
        raise CheckpointError(f"{Path(path).parent}: {problem}; refusing to load it.")
    return Path(path)


def folder_problem(model_dir: str | Path, weights_name: str, expected_sha256: str | None) -> str:
    """Why a completed model folder cannot be trusted, in a few words ('' when it can): the weights file exists and
    matches the card's sha256, and the CSVs the pages read exist. It hashes; it loads nothing."""
    model_dir = Path(model_dir)
    problems = [file_problem(model_dir / weights_name, expected_sha256),
                "" if expected_sha256 else "the card records no sha256 for its weights",
                *(f"{name} is missing" for name in (HISTORY, PREDICTIONS) if not (model_dir / name).is_file())]
    return next((p for p in problems if p), "")


def model_problem(model_dir: str | Path, card: dict) -> str:
    """Why a saved model cannot be trusted, in a few words ('' when it can), before anything is loaded: the cheap
    checks `load` repeats (the model file its family reads, the weights' sha256 against the card, the CSVs)."""
    spec = REGISTRY.get(card.get("model"))
    if spec is None:
        return f"the registry has no model {card.get('model')!r}"
    return folder_problem(model_dir, MODEL_FILES[spec.family], card.get("weights_sha256"))


def lost_members(members: Mapping[str, Sequence[str]], available: Collection[str]) -> dict[str, str]:
    """The models among `members` (model -> the models it needs) that need one not `available`, with why: an
    ensemble's weights were fitted to its members' probabilities, so without one it means nothing."""
    return {model: f"member {lost[0]} is unavailable" for model, needs in members.items()
            if (lost := [m for m in needs if m not in available])}


def unavailable_models(run_dir: str | Path, cards: dict[str, dict]) -> dict[str, str]:
    """The models of a run (name -> card) that cannot be trusted, with why; the others are verified. It hashes and
    imports no network: the pages that show stored numbers verify a run without torch."""
    out = {m: why for m, card in cards.items() if (why := model_problem(Path(run_dir) / m, card))}
    needs = {m: card.get("members", ()) for m, card in cards.items() if m not in out}
    return {**out, **lost_members(needs, set(cards) - set(out))}


def write_json(path: str | Path, data: dict) -> None:
    atomic_write(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def run_facts(run_dir: str | Path) -> dict:
    """A run's run.json (data root, seed, framing, sizes), or {} for a folder written before it existed."""
    path = Path(run_dir) / "run.json"
    return read_json(path) if path.is_file() else {}


def data_roots(facts: dict) -> list[Path]:
    """The dataset folders a run read (run.json's `data_roots`; one `data_root` in runs written before pooling)."""
    roots = facts.get("data_roots", [facts["data_root"]] if "data_root" in facts else [])
    return [Path(r) for r in roots]


def training_data_text(facts: dict) -> str:
    """What a run was trained on, for captions: synthetic phantoms, normal slices with painted bleeds, or the
    folders' slices (whether those are real, run.json does not know)."""
    if facts.get("synthetic"):
        return "synthetic phantoms"
    if painted := facts.get("painted_from"):
        return "the normal slices of " + ", ".join(Path(p).name for p in painted) + " with painted bleeds"
    names = ", ".join(r.name for r in data_roots(facts))
    return f"the slices of {names}" if names else "an unrecorded dataset (a run written before run.json)"


def read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err.__class__.__name__}).") from None


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write(path, frame.to_csv(index=False))


def finish_model_folder(model_dir: str | Path, weights_name: str, digest: str, card: dict,
                        history: pd.DataFrame, predictions: pd.DataFrame) -> dict:
    """History, predictions, then the card, beside a model file already written with sha256 `digest`."""
    model_dir = Path(model_dir)
    write_csv(model_dir / HISTORY, history)
    write_csv(model_dir / PREDICTIONS, predictions[PREDICTION_COLUMNS + [c for c in predictions.columns
                                                                          if c not in PREDICTION_COLUMNS]])
    card = {**card, "schema_version": SCHEMA_VERSION, "weights_sha256": digest,
            "size_bytes": (model_dir / weights_name).stat().st_size}
    write_json(model_dir / CARD, card)
    return card


def load_card(model_dir: str | Path) -> dict:
    card = read_json(Path(model_dir) / CARD)
    if card.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{model_dir}: card schema {card.get('schema_version')!r} is not "
                              f"the supported {SCHEMA_VERSION}.")
    return card


def list_runs(root: str | Path = "checkpoints") -> list[Path]:
    """Run folders under root (those with a split manifest), newest first."""
    root = Path(root)
    runs = [p.parent for p in root.glob(f"*/{SPLIT}")] if root.is_dir() else []
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def list_models(run_dir: str | Path) -> list[str]:
    """Completed models of a run (a model counts once its card is written)."""
    return sorted(p.parent.name for p in Path(run_dir).glob(f"*/{CARD}"))


def list_evaluations(run_dir: str | Path) -> list[str]:
    """Names of the evaluations stored with a run: folders under RUN/evaluations holding report.json and
    predictions.csv, sorted. A hidden folder (one being written, or left by a killed evaluation) is never one."""
    root = Path(run_dir) / EVALUATIONS
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    return sorted(p.name for p in found if all((p / name).is_file() for name in EVALUATION_FILES))


def evaluation_name(source: str | Path) -> str:
    """A safe folder name from a dataset folder's name: letters, digits, '.', '_' and '-' (at most 64)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).resolve().name).strip(".-_")[:64].rstrip(".-_")
    return name or "dataset"


def store_evaluation(run_dir: str | Path, source: str | Path, write: Callable[[Path], object]) -> Path:
    """RUN/evaluations/NAME (NAME from `source`, or NAME-2, NAME-3 ... when taken), written by `write(folder)` into
    a temporary folder renamed into place: a killed evaluation never leaves a folder a reader would list."""
    root = Path(run_dir) / EVALUATIONS
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(root)   # every hidden folder here is a temp_dir of an evaluation
    base = evaluation_name(source)
    tmp = temp_dir(root, base)
    try:
        write(tmp)
        for n in range(1, 10_000):
            target = root / (base if n == 1 else f"{base}-{n}")
            if target.exists():
                continue
            try:
                tmp.rename(target)   # refused when another evaluation has just taken the name: try the next
                return target
            except OSError:
                if not target.exists():
                    raise
        raise CheckpointError(f"{root} holds too many evaluations named {base}.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
