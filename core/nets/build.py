"""Every registry network by name: built, initialised from scratch or loaded verified; and its Grad-CAM layers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.io import store
from core.io.weights import load_weights
from core.nets.cnn import CNNS, create_cnn
from core.nets.sequence import KINDS, SequenceClassifier, build_sequence_model
from core.registry import ModelSpec, get_spec

NETWORK_NAMES = (*CNNS, *KINDS)
MIN_CAM_CELLS = 7   # the classic Grad-CAM map (a ResNet's layer4 at 224 px); at 2x2 cells every map is a blob


def create_model(model: ModelSpec | str, pretrained: bool = False, weights_dir: str | Path | None = None,
                 num_outputs: int = 1, **architecture) -> nn.Module:
    """A registry network (its spec, or its name) with `num_outputs` logits, output 0 the hemorrhage one (1, or 6
    for a subtypes head: core.subtypes.OUTPUTS); `model.pretrained_loaded` says whether ImageNet weights loaded."""
    spec = get_spec(model) if isinstance(model, str) else model
    if spec.name in KINDS:
        network = build_sequence_model(KINDS[spec.name], pretrained=pretrained, weights_dir=weights_dir,
                                       num_outputs=num_outputs, **architecture)
    elif spec.name in CNNS:
        network = create_cnn(spec.name, pretrained, weights_dir, num_outputs, **architecture)
    else:
        raise ValueError(f"{spec.name} is a {spec.family} model, not a neural network")
    network.registry_name = spec.name
    return network


def init_from_scratch(model: nn.Module) -> None:
    """The registry's re-initialisation for training from random init, where the network has one."""
    build = CNNS.get(model.registry_name)
    if build and build.scratch_init:
        build.scratch_init(model)


def _cnn_part(model: nn.Module) -> tuple[nn.Module, str]:
    """The convolutional network whose layers Grad-CAM reads (a sequence model's encoder), and its registry name."""
    if isinstance(model, SequenceClassifier):
        return model.encoder, model.backbone_name
    return model, model.registry_name


@torch.no_grad()
def cam_sides(model: nn.Module, input_size: int) -> dict[str, int]:
    """Each CAM candidate layer (the registry's, shallow to deep) -> its map's side in cells at input_size."""
    cnn, name = _cnn_part(model)
    candidates, sides = CNNS[name].cam_candidates(cnn), {}
    hooks = [cnn.get_submodule(c).register_forward_hook(lambda m, a, out, c=c: sides.__setitem__(c, out.shape[-1]))
             for c in candidates]
    was_training = cnn.training
    param = next(cnn.parameters())
    try:
        cnn.eval()(torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        cnn.train(was_training)
    return {c: int(sides[c]) for c in candidates}


def choose_cam_layers(model: nn.Module, input_size: int, min_cells: int = MIN_CAM_CELLS) -> dict:
    """The deepest candidate whose map has >= min_cells a side at input_size (else the widest map):
    a coarser map cannot point at a bleed smaller than its cells. Sets it on the model; card-ready."""
    sides = cam_sides(model, input_size)
    fine = [c for c in sides if sides[c] >= min_cells]
    chosen = fine[-1] if fine else max(sides, key=sides.get)
    model.cam_layer_names = [chosen]
    return {"layers": [chosen], "cells": sides[chosen], "input_size": input_size}


def feature_layer(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the network that reads one slice, its deepest CAM candidate layer): where a model's own features for its
    domain check (core.metrics.domain) are read, the last convolutional features before the classifier."""
    cnn, name = _cnn_part(model)
    return cnn, cnn.get_submodule(CNNS[name].cam_candidates(cnn)[-1])


def cam_layers(model: nn.Module) -> list[nn.Module]:
    """Grad-CAM target layers: those chosen for the trained size (card "cam"), else the registry's deepest."""
    cnn, name = _cnn_part(model)
    names = getattr(model, "cam_layer_names", None) or CNNS[name].cam_candidates(cnn)[-1:]
    return [cnn.get_submodule(n) for n in names]


@dataclass
class LoadedModel:
    model: nn.Module
    card: dict

    @property
    def thresholds(self) -> dict:
        return self.card["thresholds"]


def output_names(card: dict) -> list[str]:
    """What each logit of a card's network is (card "outputs"); cards written before subtypes heads: ["any"]."""
    return list(card.get("outputs", ["any"]))


def load_network(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """An eval-ready network with its card; the weights' sha256 is checked before a tensor is read."""
    card = store.load_card(model_dir)
    state = load_weights(Path(model_dir) / store.WEIGHTS, card.get("weights_sha256"))
    model = create_model(card["model"], num_outputs=len(output_names(card)), **card.get("architecture", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise store.CheckpointError(f"{model_dir}: weights do not fit model {card['model']} "
                                    f"({str(err).splitlines()[0]}).") from None
    model.cam_layer_names = card.get("cam", {}).get("layers")
    return LoadedModel(model.to(device).eval(), card)
