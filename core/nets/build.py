"""Every registry network by name: built, initialised from scratch or loaded verified; and its Grad-CAM layers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.io import store
from core.nets.cnn import CNNS, create_cnn
from core.nets.sequence import KINDS, SequenceClassifier, build_sequence_model
from core.registry import get_spec

NETWORK_NAMES = (*CNNS, *KINDS)


def create_model(name: str, pretrained: bool = False, weights_dir: str | Path | None = None,
                 **architecture) -> nn.Module:
    """A one-logit classifier; `model.pretrained_loaded` says whether ImageNet weights loaded."""
    spec = get_spec(name)
    if name in KINDS:
        model = build_sequence_model(KINDS[name], pretrained=pretrained, weights_dir=weights_dir, **architecture)
    elif name in CNNS:
        model = create_cnn(name, pretrained, weights_dir)
    else:
        raise ValueError(f"{name} is a {spec.family} model, not a neural network")
    model.registry_name = name
    return model


def init_from_scratch(model: nn.Module) -> None:
    """The registry's re-initialisation for training from random init, where the network has one."""
    build = CNNS.get(model.registry_name)
    if build and build.scratch_init:
        build.scratch_init(model)


def cam_layers(model: nn.Module) -> list[nn.Module]:
    """Grad-CAM target layers of a network built by create_model (a sequence model: its encoder's)."""
    if isinstance(model, SequenceClassifier):
        return CNNS[model.backbone_name].cam_layers(model.encoder)
    return CNNS[model.registry_name].cam_layers(model)


@dataclass
class LoadedModel:
    model: nn.Module
    card: dict

    @property
    def thresholds(self) -> dict:
        return self.card["thresholds"]


def load_network(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """An eval-ready network with its card; the weights' sha256 is checked before a tensor is read."""
    card = store.load_card(model_dir)
    state = store.load_weights(Path(model_dir) / store.WEIGHTS, card.get("weights_sha256"))
    model = create_model(card["model"], **card.get("architecture", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise store.CheckpointError(f"{model_dir}: weights do not fit model {card['model']} "
                                    f"({str(err).splitlines()[0]}).") from None
    return LoadedModel(model.to(device).eval(), card)
