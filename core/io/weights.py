"""Tensors in a run folder: safetensors files written atomically with their sha256, read only once verified (weights,
domain statistics, `--resume` states). The rest of a model folder (cards, CSVs, listing, trust) is core.io.store's,
which does not import torch: pages that show stored numbers read it alone."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.io.atomic import atomic_path
from core.io.store import (WEIGHTS, CheckpointError, finish_model_folder, read_json, sha256_file, verify_file,
                           write_json)

RESUME_WEIGHTS, RESUME_META = "last.safetensors", "last.json"


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor]) -> str:
    """Atomically write a safetensors file; returns its sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
        digest = sha256_file(tmp)
    return digest


def load_weights(path: str | Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    path = verify_file(path, expected_sha256)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"Weights file {path} is not a readable safetensors file ({err}).") from None


def save_model(model_dir: str | Path, state_dict, card: dict, history: pd.DataFrame,
               predictions: pd.DataFrame) -> dict:
    """Write one model's folder; the card is written last, so a folder with a card is complete."""
    digest = save_weights(Path(model_dir) / WEIGHTS, state_dict)
    return finish_model_folder(model_dir, WEIGHTS, digest, card, history, predictions)


def save_resume_state(model_dir: str | Path, model_state: dict, optimizer_state: dict,
                      best_state: dict, meta: dict) -> None:
    """`--resume` state as safetensors ("opt.<param>.<name>" keys) + JSON param_groups, written last."""
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    for pid, slots in optimizer_state["state"].items():
        tensors.update({f"opt.{pid}.{name}": torch.as_tensor(value) for name, value in slots.items()})
    digest = save_weights(Path(model_dir) / RESUME_WEIGHTS, tensors)
    write_json(Path(model_dir) / RESUME_META, {**meta, "weights_sha256": digest,
                                               "param_groups": optimizer_state["param_groups"]})


def load_resume_state(model_dir: str | Path) -> tuple[dict, dict, dict, dict] | None:
    """(model_state, optimizer_state, best_state, meta) of the last completed epoch, or None."""
    if not (Path(model_dir) / RESUME_META).is_file():
        return None
    meta = read_json(Path(model_dir) / RESUME_META)
    tensors = load_weights(Path(model_dir) / RESUME_WEIGHTS, meta["weights_sha256"])
    part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    opt_state: dict[int, dict] = {}
    for key, value in part("opt.").items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    optimizer_state = {"state": opt_state, "param_groups": meta.pop("param_groups")}
    return part("model."), optimizer_state, part("best."), meta


def clear_resume_state(model_dir: str | Path) -> None:
    for name in (RESUME_META, RESUME_WEIGHTS):
        (Path(model_dir) / name).unlink(missing_ok=True)
