"""Run folders (checkpoints/README.md): safetensors + JSON card + CSVs; atomic, sha256-verified, no pickle."""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.io.atomic import atomic_path, atomic_write, remove_stale_temp_dirs, temp_dir

SCHEMA_VERSION = 1
WEIGHTS, CARD, HISTORY, PREDICTIONS, SPLIT = (
    "model.safetensors", "card.json", "history.csv", "predictions.csv", "split.csv")
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


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor]) -> str:
    """Atomically write a safetensors file; returns its sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
        digest = sha256_file(tmp)
    return digest


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


def load_weights(path: str | Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    path = verify_file(path, expected_sha256)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"Weights file {path} is not a readable safetensors file ({err}).") from None


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


def save_model(model_dir: str | Path, state_dict, card: dict, history: pd.DataFrame,
               predictions: pd.DataFrame) -> dict:
    """Write one model's folder; the card is written last, so a folder with a card is complete."""
    digest = save_weights(Path(model_dir) / WEIGHTS, state_dict)
    return finish_model_folder(model_dir, WEIGHTS, digest, card, history, predictions)


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


def save_resume_state(model_dir: str | Path, model_state: dict, optimizer_state: dict,
                      best_state: dict, meta: dict) -> None:
    """`--resume` state as safetensors ("opt.<param>.<name>" keys) + JSON param_groups, written last."""
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    for pid, slots in optimizer_state["state"].items():
        tensors.update({f"opt.{pid}.{name}": torch.as_tensor(value) for name, value in slots.items()})
    digest = save_weights(Path(model_dir) / "last.safetensors", tensors)
    write_json(Path(model_dir) / "last.json", {**meta, "weights_sha256": digest,
                                               "param_groups": optimizer_state["param_groups"]})


def load_resume_state(model_dir: str | Path) -> tuple[dict, dict, dict, dict] | None:
    """(model_state, optimizer_state, best_state, meta) of the last completed epoch, or None."""
    if not (Path(model_dir) / "last.json").is_file():
        return None
    meta = read_json(Path(model_dir) / "last.json")
    tensors = load_weights(Path(model_dir) / "last.safetensors", meta["weights_sha256"])
    part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    opt_state: dict[int, dict] = {}
    for key, value in part("opt.").items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    optimizer_state = {"state": opt_state, "param_groups": meta.pop("param_groups")}
    return part("model."), optimizer_state, part("best."), meta


def clear_resume_state(model_dir: str | Path) -> None:
    for name in ("last.json", "last.safetensors"):
        (Path(model_dir) / name).unlink(missing_ok=True)


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
