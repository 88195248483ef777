"""The registry CNNs: stock torchvision / timm models built from each one's registry blueprint, with one logit (or a
subtypes head's six); missing ImageNet weights are not fatal. No network is named here: the registry holds them."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import timm
import torch
import torchvision.models as tvm
from safetensors.torch import load_file
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual as V2Block
from torchvision.models.mobilenetv3 import InvertedResidual as V3Block

from core.registry import CNN_NAMES, REGISTRY, Blueprint, ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CNNBuild:
    builder: Callable[[bool], nn.Module]                 # builder(pretrained) -> 1000-class ImageNet model
    # Grad-CAM candidates of the built model in forward order, each a block's output; the last is the default.
    cam_candidates: Callable[[nn.Module], list[str]]
    weights_url: str                                     # ImageNet checkpoint; its file name is looked up in weights_dir
    scratch_init: Callable[[nn.Module], None] | None = None   # re-initialises a model trained from random init
    # Turns the stock ImageNet classifier into global average pooling + one Linear; None: the stock one already is.
    gap_head: Callable[[nn.Module], None] | None = None


HEADS = ("stock", "gap")   # a network's classifier: as published, or global average pooling + one Linear


def weights_files(name: str) -> tuple[str, ...]:
    """File names accepted in a `weights_dir`: the download's own name, or <name>.safetensors."""
    url = CNNS[name].weights_url
    return tuple(f for f in (Path(urlsplit(url).path).name, f"{name}.safetensors") if f)


def he_fan_in_init(model: nn.Module) -> None:
    """He fan-in init; head N(0, 0.01) so training starts near p = 0.5 (docs/NOTES.md, "VGG from scratch")."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers[:-1]:
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    nn.init.normal_(layers[-1].weight, std=0.01)
    nn.init.zeros_(layers[-1].bias)


def zero_init_residual_bn(model: nn.Module) -> None:
    """Zero-gamma (Goyal et al. 2017) on residual branches (docs/NOTES.md, "MobileNets from scratch")."""
    for block in model.modules():
        if isinstance(block, (V2Block, V3Block)) and block.use_res_connect:
            last_bn = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]   # the projection's
            nn.init.zeros_(last_bn.weight)


def pooled_features_head(model: nn.Module) -> None:
    """AlexNet / VGG: features -> global average pool -> Linear, in place of the 6x6/7x7 pool and the 4096-wide
    MLP (~120 M weights of VGG-16's 138 M), as the Keras studies' include_top=False + pooling + Dense."""
    channels = [m for m in model.features if isinstance(m, nn.Conv2d)][-1].out_channels
    model.avgpool, model.classifier = nn.AdaptiveAvgPool2d(1), nn.Linear(channels, 1000)


SCRATCH_INITS = {"he_fan_in": he_fan_in_init, "zero_residual_bn": zero_init_residual_bn}   # Blueprint.scratch_init


def _torchvision(blueprint: Blueprint, pretrained: bool) -> nn.Module:
    model = tvm.get_model(blueprint.arch, weights="DEFAULT" if pretrained else None, **dict(blueprint.options))
    if blueprint.drop_aux:
        model.aux_logits, model.AuxLogits = False, None
    return model


def _timm(blueprint: Blueprint, pretrained: bool) -> nn.Module:
    return timm.create_model(blueprint.arch, pretrained=pretrained, **dict(blueprint.options))


# Blueprint.library -> (builder(blueprint, pretrained), the URL of its ImageNet weights).
LIBRARIES = {"torchvision": (_torchvision, lambda arch: tvm.get_model_weights(arch).DEFAULT.url),
             "timm": (_timm, lambda arch: timm.get_pretrained_cfg(arch).url)}


def cam_candidates(blueprint: Blueprint) -> Callable[[nn.Module], list[str]]:
    """The blueprint's Grad-CAM candidates of a built model: children of `cam_in` by name and kind."""
    kinds = tuple(getattr(nn, kind) for kind in blueprint.cam_kinds) or (nn.Module,)
    prefix = f"{blueprint.cam_in}." if blueprint.cam_in else ""
    return lambda model: [prefix + name for name, child in model.get_submodule(blueprint.cam_in).named_children()
                          if re.fullmatch(blueprint.cam_match, name) and isinstance(child, kinds)]


def cnn_build(spec: ModelSpec) -> CNNBuild:
    """A registry CNN's blueprint made into its builder, CAM candidates, weights URL and quirks."""
    blueprint = spec.blueprint
    if blueprint is None:
        raise ValueError(f"the registry's CNN {spec.name} has no blueprint: core.nets cannot build it")
    unknown = [f"cam kind {kind!r}" for kind in blueprint.cam_kinds if not hasattr(nn, kind)]
    if blueprint.library not in LIBRARIES:
        unknown.append(f"library {blueprint.library!r}")
    if blueprint.scratch_init and blueprint.scratch_init not in SCRATCH_INITS:
        unknown.append(f"scratch_init {blueprint.scratch_init!r}")
    if unknown:
        raise ValueError(f"the registry's {spec.name} names an unknown {', '.join(unknown)}")
    builder, weights_url = LIBRARIES[blueprint.library]
    return CNNBuild(partial(builder, blueprint), cam_candidates(blueprint), weights_url(blueprint.arch),
                    SCRATCH_INITS.get(blueprint.scratch_init), pooled_features_head if blueprint.gap_head else None)


CNNS: dict[str, CNNBuild] = {name: cnn_build(REGISTRY[name]) for name in CNN_NAMES}   # every registry CNN


def head_architecture(name: str, head: str) -> dict:
    """What a card's "architecture" records of the head asked for: {} where it is the network's stock one."""
    if head not in HEADS:
        raise ValueError(f"head {head!r} is not one of {', '.join(HEADS)}")
    return {"head": head} if head != "stock" and CNNS[name].gap_head else {}


def create_cnn(name: str, pretrained: bool = False, weights_dir: str | Path | None = None,
               num_outputs: int = 1, head: str = "stock") -> nn.Module:
    """A registry CNN with `num_outputs` logits (1: hemorrhage). `model.pretrained_loaded` is True only if ImageNet
    weights were loaded (the convolutions' only, with head "gap")."""
    if name not in CNNS:
        raise ValueError(f"{name!r} is not a registry CNN; choose from {', '.join(CNNS)}")
    model, why_not = _backbone(name, pretrained, weights_dir)
    if why_not:
        print(f"hemolens: ImageNet weights for {name} {why_not}; training from scratch.", file=sys.stderr)
    if head_architecture(name, head):
        CNNS[name].gap_head(model)
    output_head(model, num_outputs)
    model.pretrained_loaded = pretrained and not why_not
    return model


def _backbone(name: str, pretrained: bool, weights_dir: str | Path | None) -> tuple[nn.Module, str]:
    """The 1000-class model, and why asked-for weights could not be had ("" if loaded or not asked for)."""
    builder = CNNS[name].builder
    if not pretrained:
        return builder(False), ""
    if weights_dir is None:
        try:
            return builder(True), ""
        except OSError as err:   # URLError (no network, HTTP error) or a cache folder that cannot be written
            return builder(False), f"are unreachable (no network? {str(err).splitlines()[0]})"
    found = [Path(weights_dir) / f for f in weights_files(name) if (Path(weights_dir) / f).is_file()]
    if not found:
        return builder(False), f"are not in {weights_dir} (expected {' or '.join(weights_files(name))})"
    model = builder(False)
    _load_weights_file(model, found[0])
    return model, ""


def _load_weights_file(model: nn.Module, path: Path) -> None:
    """Loads a local ImageNet checkpoint; a file that does not fit the architecture is the user's error."""
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                              weights_only=True)
    try:
        # strict=False for a dropped auxiliary head's weights only (Blueprint.drop_aux); every model parameter must
        # be present.
        missing = model.load_state_dict(state, strict=False).missing_keys
    except RuntimeError as err:   # shape mismatch
        raise ValueError(f"{path} does not fit {type(model).__name__}: {str(err).splitlines()[-1].strip()}") from None
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} weights of {type(model).__name__}, e.g. {missing[0]}")


def last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute, layer) of the last Linear registered: the classifier head."""
    path, layer = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = path.rpartition(".")
    return model.get_submodule(parent), attr, layer


def output_head(model: nn.Module, num_outputs: int = 1) -> None:
    """Replaces the 1000-way classifier by `num_outputs` logits, in place."""
    if hasattr(model, "reset_classifier"):   # timm keeps num_classes and pooling in step itself
        model.reset_classifier(num_outputs)
        return
    parent, attr, old = last_linear(model)
    setattr(parent, attr, nn.Linear(old.in_features, num_outputs))
