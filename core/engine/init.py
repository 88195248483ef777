"""`train.py --init-from RUN`: each network starts from the verified weights of the same network in an earlier run."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from core.engine.config import TrainConfig
from core.io import store
from core.io.imaging import windows_of
from core.nets.build import NETWORK_NAMES, load_network, output_names
from core.nets.cnn import head_architecture
from core.nets.sequence import DEFAULT_HIDDEN, KINDS


class StartingWeights(NamedTuple):
    state: dict[str, torch.Tensor]
    source: dict   # the card's training.init_from: the run and the sha256 of the weights read


def refuse(run_dir: str | Path, reason: str) -> SystemExit:
    """The one line train.py prints for a bad --init-from (exit 2)."""
    return SystemExit(f"hemolens: --init-from {run_dir}: {reason}")


def planned_architecture(name: str, cfg: TrainConfig) -> dict:
    """The `architecture` core.families will give fit_network for `name`, known before any data is read."""
    if name in KINDS:
        return {"backbone": cfg.sequence_backbone, "stack_size": cfg.stack_size, "hidden": DEFAULT_HIDDEN}
    return head_architecture(name, cfg.head)


def described(architecture: dict) -> str:
    """A card's architecture in words: "head gap", "backbone resnet18, stack_size 5, hidden 128", or "stock"."""
    return ", ".join(f"{key} {value}" for key, value in architecture.items()) or "stock"


def network_mismatch(card: dict, name: str, cfg: TrainConfig, architecture: dict) -> str:
    """Why a card's network is not the one this run builds for `name`, in a few words; '' when it is."""
    if card.get("model") != name:
        return f"its card is of model {card.get('model')}"
    if output_names(card) != cfg.outputs:
        return (f"trained with outputs {', '.join(output_names(card))}, this run's networks have "
                f"{', '.join(cfg.outputs)} (--subtypes must match)")
    if card.get("architecture", {}) != architecture:
        return (f"built as {described(card.get('architecture', {}))}, this run builds {described(architecture)} "
                "(--head, --sequence-backbone and --stack-size must match)")
    if windows_of(card) != cfg.windows:
        return f"trained on --windows {windows_of(card)}, this run reads --windows {cfg.windows}"
    return ""


def starting_weights(run_dir: str | Path, name: str, cfg: TrainConfig, architecture: dict) -> StartingWeights:
    """`name`'s weights in run_dir, verified against its card (sha256) and this run's network; else refuse(...).
    load_network's strict load into the card's network, checked equal to ours, is the key and shape check."""
    model_dir = Path(run_dir) / name
    if not Path(run_dir).is_dir():
        raise refuse(run_dir, "no such run folder")
    if not model_dir.is_dir():
        held = ", ".join(store.list_models(run_dir)) or "none"
        raise refuse(run_dir, f"the run holds no model {name} (it holds {held})")
    try:
        card = store.load_card(model_dir)
        problem = (store.folder_problem(model_dir, store.WEIGHTS, card.get("weights_sha256"))
                   or network_mismatch(card, name, cfg, architecture))
        if problem:
            raise refuse(run_dir, f"{name}: {problem}")
        state = load_network(model_dir).model.state_dict()
    except store.CheckpointError as err:
        raise refuse(run_dir, str(err)) from None
    return StartingWeights(state, {"run": str(Path(run_dir).resolve()), "weights_sha256": card["weights_sha256"]})


def check_init_from(cfg: TrainConfig) -> None:
    """Before anything is trained or written: every asked network can start from cfg.init_from (refuse(...) if not)."""
    if cfg.init_from is None:
        return
    if Path(cfg.init_from).resolve() == Path(cfg.out).resolve():
        raise refuse(cfg.init_from, "it is the --out folder, whose weights training would replace")
    networks = [name for name in cfg.models if name in NETWORK_NAMES]
    if not networks:
        raise refuse(cfg.init_from, "none of the asked models is a network")
    for name in networks:
        own = replace(cfg, **cfg.per_model.get(name, {}))   # as core.run trains it (e.g. the CPU demo's heads)
        starting_weights(cfg.init_from, name, own, planned_architecture(name, own))
