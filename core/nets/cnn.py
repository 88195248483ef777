"""The registry CNNs: stock torchvision / timm models with one logit (or a subtypes head's six); missing ImageNet
weights are not fatal."""
from __future__ import annotations

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


def _build_torchvision(arch: str, pretrained: bool) -> nn.Module:
    return tvm.get_model(arch, weights="DEFAULT" if pretrained else None)


def _build_inception_v3(pretrained: bool) -> nn.Module:
    # transform_input fixed on: same function whether built to train or to load a checkpoint.
    model = tvm.inception_v3(weights="DEFAULT" if pretrained else None, transform_input=True, init_weights=False)
    # The auxiliary head is dropped after building: torchvision rejects aux_logits=False with weights.
    model.aux_logits, model.AuxLogits = False, None
    return model


def _torchvision(arch: str, cam_candidates, scratch_init=None, gap_head=None) -> CNNBuild:
    return CNNBuild(partial(_build_torchvision, arch), cam_candidates, tvm.get_model_weights(arch).DEFAULT.url,
                    scratch_init, gap_head)


def _features(kinds: tuple[type, ...] = (nn.Module,)):
    """CAM candidates among the children of `model.features` of the given kinds."""
    return lambda model: [f"features.{n}" for n, m in model.features.named_children() if isinstance(m, kinds)]


_activations = _features((nn.ReLU, nn.MaxPool2d))   # AlexNet / VGG: after each ReLU and pool
_blocks = _features()                               # MobileNets: every block
_resnet = lambda model: ["layer1", "layer2", "layer3", "layer4"]
CNNS: dict[str, CNNBuild] = {
    "alexnet": _torchvision("alexnet", _activations, gap_head=pooled_features_head),
    "vgg16": _torchvision("vgg16", _activations, he_fan_in_init, pooled_features_head),
    "vgg16_bn": _torchvision("vgg16_bn", _activations, gap_head=pooled_features_head),
    "resnet18": _torchvision("resnet18", _resnet),
    "resnet50": _torchvision("resnet50", _resnet),
    "mobilenet_v2": _torchvision("mobilenet_v2", _blocks, zero_init_residual_bn),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large", _blocks, zero_init_residual_bn),
    # The stem's last convolutions too: finer maps a layer chosen on masks can take (docs/NOTES.md).
    "inception_v3": CNNBuild(_build_inception_v3, lambda m: [n for n, _ in m.named_children()
                                                             if n.startswith(("Conv2d_2b", "Conv2d_3b", "Conv2d_4a",
                                                                              "Mixed"))],
                             tvm.get_model_weights("inception_v3").DEFAULT.url),
    "xception": CNNBuild(partial(timm.create_model, "legacy_xception"),
                         lambda m: [*(f"block{i}" for i in range(1, 13)), "act3", "act4"],
                         timm.get_pretrained_cfg("legacy_xception").url),
}


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
        # strict=False for inception_v3's unused aux head only; every model parameter must be present.
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
