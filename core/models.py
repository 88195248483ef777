"""The model registry: every architecture of the source studies, built the same way.

In the style of timm: one REGISTRY of ModelSpec entries and one `create_model(name)` that returns
a binary classifier (one logit = hemorrhage). Backbones are the stock torchvision / timm ImageNet
models; only the last Linear is swapped, so their ImageNet weights load unchanged.

ImageNet weights (`pretrained=True`) come through torchvision's `weights=` enums and timm's
`pretrained=True`; both download with torch.hub into $TORCH_HOME/hub/checkpoints (legacy_xception's
weights are a GitHub URL, not the Hugging Face hub, so HF_HUB_OFFLINE plays no part and this module
leaves the environment alone). Offline, the download fails at name resolution in well under a
second. With `weights_dir`, the same file is read from that folder instead (for machines without
network). Weights that cannot be had are not fatal: one line on stderr and a random initialisation;
`model.pretrained_loaded` says which happened.
"""
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
from torch.utils.flop_counter import FlopCounterMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    display_name: str
    family: str                                      # cnn | sequence | classical | ensemble
    input_size: int                                  # native input side in pixels
    builder: Callable[..., nn.Module] | None         # builder(pretrained) -> 1000-class ImageNet model (cnn);
                                                     # the binary sequence model (sequence); None otherwise
    cam_layers: Callable[[nn.Module], list[nn.Module]] | None   # Grad-CAM targets of the built model
    reference: str
    study: str                                       # source study that used it: "A", "B", "A,B", "" (variant)
    weights_url: str = ""                            # ImageNet checkpoint; its file name is looked up in weights_dir
    min_input_size: int = 32                         # smallest side its stride and kernels accept
    scratch_lr: float = 1e-3                         # AdamW rate from random init; nets without BatchNorm need less
    scratch_init: Callable[[nn.Module], None] | None = None   # re-initialises a model trained from random init

    @property
    def weights_files(self) -> tuple[str, ...]:
        """File names accepted in a `weights_dir`: the download's own name, or <name>.safetensors."""
        return tuple(f for f in (Path(urlsplit(self.weights_url).path).name, f"{self.name}.safetensors") if f)


def he_fan_in_init(model: nn.Module) -> None:
    """He et al. (ICCV 2015) fan-in initialisation of every convolution and hidden linear layer; the
    one-logit head keeps small weights (N(0, 0.01)) so training starts near p = 0.5.

    torchvision initialises VGG for ImageNet with fan-out Kaiming convolutions and N(0, 0.01) linears:
    for a unit-variance input the 4096-wide penultimate activations come out at rms ~0.1 and the
    logit barely varies between images, and trained from scratch on the CPU demo VGG-16 sat at loss
    ln 2 (chance) for its whole budget. With fan-in init the signal keeps its scale through all 15
    layers (penultimate rms ~2) and the loss starts falling within a few epochs."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers[:-1]:
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    nn.init.normal_(layers[-1].weight, std=0.01)
    nn.init.zeros_(layers[-1].bias)


def _build_torchvision(arch: str, pretrained: bool) -> nn.Module:
    return tvm.get_model(arch, weights="DEFAULT" if pretrained else None)


def _build_inception_v3(pretrained: bool) -> nn.Module:
    # transform_input is fixed on (torchvision turns it on only when it loads weights): the model
    # must compute the same function whether built for training or rebuilt to load a checkpoint.
    # init_weights=False: PyTorch's default init, torchvision's announced future default (it warns
    # otherwise); with weights torchvision forces it anyway.
    model = tvm.inception_v3(weights="DEFAULT" if pretrained else None, transform_input=True, init_weights=False)
    # The auxiliary head is dropped after building: torchvision rejects aux_logits=False with weights.
    model.aux_logits, model.AuxLogits = False, None
    return model


def _build_timm(arch: str, pretrained: bool) -> nn.Module:
    return timm.create_model(arch, pretrained=pretrained)


def _torchvision(name, display_name, cam_layers, reference, study, **extra) -> ModelSpec:
    return ModelSpec(name, display_name, "cnn", 224, partial(_build_torchvision, name),
                     cam_layers, reference, study, tvm.get_model_weights(name).DEFAULT.url, **extra)


def zero_init_residual_bn(model: nn.Module) -> None:
    """Goyal et al. (2017), "zero-gamma": the last BatchNorm of every residual branch starts at 0, so
    each inverted-residual block starts as the identity and the signal reaches the head unchanged.

    From torchvision's init, MobileNetV2 and V3 trained on the CPU demo (64 px, ~200 steps) kept their
    training loss at ln 2 under augmentation (validation AUC 0.44-0.60); with zero-gamma the loss
    fell within 150 steps (MobileNetV3 validation AUC 0.82, MobileNetV2 0.72)."""
    from torchvision.models.mobilenetv2 import InvertedResidual as V2Block
    from torchvision.models.mobilenetv3 import InvertedResidual as V3Block
    for block in model.modules():
        if isinstance(block, (V2Block, V3Block)) and block.use_res_connect:
            last_bn = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]   # the projection's
            nn.init.zeros_(last_bn.weight)


_SPECS = [
    _torchvision("alexnet", "AlexNet", lambda m: [m.features[-1]],
                 "Krizhevsky et al., NeurIPS 2012", "A", min_input_size=64, scratch_lr=1e-4),
    _torchvision("vgg16", "VGG-16", lambda m: [m.features[-1]],
                 "Simonyan & Zisserman, ICLR 2015", "B", scratch_lr=1e-4, scratch_init=he_fan_in_init),
    # 3e-4: at 1e-3 Adam moves each weight of the 25088-wide first linear layer (no BatchNorm after
    # the convolutions' last pool) by the same step, and the loss jumped to 2.8-4.5 in epoch 1.
    _torchvision("vgg16_bn", "VGG-16 (BN)", lambda m: [m.features[-1]],
                 "Simonyan & Zisserman, ICLR 2015; Ioffe & Szegedy, ICML 2015", "", scratch_lr=3e-4),
    _torchvision("resnet18", "ResNet-18", lambda m: [m.layer4[-1]],
                 "He et al., CVPR 2016", ""),
    _torchvision("resnet50", "ResNet-50", lambda m: [m.layer4[-1]],
                 "He et al., CVPR 2016", "A,B"),
    _torchvision("mobilenet_v2", "MobileNetV2", lambda m: [m.features[-1]],
                 "Sandler et al., CVPR 2018", "A,B", scratch_init=zero_init_residual_bn),
    _torchvision("mobilenet_v3_large", "MobileNetV3-Large", lambda m: [m.features[-1]],
                 "Howard et al., ICCV 2019", "", scratch_init=zero_init_residual_bn),
    ModelSpec("inception_v3", "Inception-v3", "cnn", 299, _build_inception_v3, lambda m: [m.Mixed_7c],
              "Szegedy et al., CVPR 2016", "A", tvm.get_model_weights("inception_v3").DEFAULT.url,
              min_input_size=76),
    ModelSpec("xception", "Xception", "cnn", 299, partial(_build_timm, "legacy_xception"),
              lambda m: [m.act4], "Chollet, CVPR 2017", "A",
              timm.get_pretrained_cfg("legacy_xception").url),
]


def _build_sequence(kind: str, pretrained: bool = False, weights_dir=None, **architecture) -> nn.Module:
    from core.sequence import build_sequence_model   # imported late: core.sequence builds on this registry
    return build_sequence_model(kind, pretrained=pretrained, weights_dir=weights_dir, **architecture)


def _sequence_cam_layers(model: nn.Module) -> list[nn.Module]:
    return REGISTRY[model.backbone_name].cam_layers(model.encoder)


def _other(name, display_name, family, reference, study="") -> ModelSpec:
    """A model that is not an nn.Module: a scikit-learn pipeline on features of 128 px slices, or an
    ensemble of saved predictions (no input of its own)."""
    return ModelSpec(name, display_name, family, 128 if family == "classical" else 0, None, None, reference, study)


_SPECS += [
    ModelSpec("cnn_gru", "CNN + BiGRU", "sequence", 224, partial(_build_sequence, "gru"), _sequence_cam_layers,
              "Cho et al., EMNLP 2014; RSNA 2019 ICH winners (CNN per slice + bidirectional GRU)", "B"),
    ModelSpec("cnn_lstm", "CNN + BiLSTM", "sequence", 224, partial(_build_sequence, "lstm"), _sequence_cam_layers,
              "Hochreiter & Schmidhuber, 1997; RSNA 2019 ICH winners", "B"),
    _other("svm", "SVM (RBF)", "classical", "Cortes & Vapnik, 1995; hand-crafted features", "B"),
    _other("knn", "k-NN", "classical", "Cover & Hart, 1967; hand-crafted features", "B"),
    _other("random_forest", "Random forest", "classical", "Breiman, 2001; hand-crafted features", "B"),
    _other("gradient_boosting", "Gradient boosting", "classical", "Friedman, 2001; hand-crafted features", "B"),
    _other("mlp", "MLP (plain ANN)", "classical", "Rumelhart et al., 1986; hand-crafted features", "B"),
    _other("ensemble_soft", "Soft-voting ensemble", "ensemble", "Mean of the members' probabilities", "B"),
    _other("ensemble_stack", "Stacking ensemble", "ensemble",
           "Wolpert, 1992; logistic regression on the members' validation predictions", "B"),
]
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def names_of(family: str) -> tuple[str, ...]:
    return tuple(spec.name for spec in _SPECS if spec.family == family)


CNN_NAMES = names_of("cnn")
SEQUENCE_NAMES = names_of("sequence")
CLASSICAL_NAMES = names_of("classical")
ENSEMBLE_NAMES = names_of("ensemble")
TORCH_FAMILIES = ("cnn", "sequence")   # families whose weights are an nn.Module state dict


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def create_model(name: str, pretrained: bool = False, weights_dir: str | Path | None = None,
                 **architecture) -> nn.Module:
    """A binary classifier (one logit). `model.pretrained_loaded` is True only if ImageNet weights were loaded.

    `architecture`: a sequence model's choices (backbone, stack size), as stored in its card."""
    spec = get_spec(name)
    if spec.family == "sequence":
        return spec.builder(pretrained, weights_dir, **architecture)
    if spec.family not in TORCH_FAMILIES:
        raise ValueError(f"{name} is a {spec.family} model, not a neural network")
    model, why_not = _backbone(spec, pretrained, weights_dir)
    if why_not:
        print(f"hemolens: ImageNet weights for {name} {why_not}; training from scratch.", file=sys.stderr)
    _binary_head(model)
    model.pretrained_loaded = pretrained and not why_not
    return model


def _backbone(spec: ModelSpec, pretrained: bool, weights_dir: str | Path | None) -> tuple[nn.Module, str]:
    """The 1000-class model, and why asked-for weights could not be had ("" if loaded or not asked for)."""
    if not pretrained:
        return spec.builder(False), ""
    if weights_dir is None:
        try:
            return spec.builder(True), ""
        except OSError as err:   # URLError (no network, HTTP error) or a cache folder that cannot be written
            return spec.builder(False), f"are unreachable (no network? {str(err).splitlines()[0]})"
    found = [Path(weights_dir) / f for f in spec.weights_files if (Path(weights_dir) / f).is_file()]
    if not found:
        return spec.builder(False), f"are not in {weights_dir} (expected {' or '.join(spec.weights_files)})"
    model = spec.builder(False)
    _load_weights_file(model, found[0])
    return model, ""


def _load_weights_file(model: nn.Module, path: Path) -> None:
    """Loads a local ImageNet checkpoint; a file that does not fit the architecture is the user's error."""
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                              weights_only=True)
    try:
        # strict=False only for extra keys: torchvision's inception_v3 file carries the auxiliary
        # head that we build without. Every parameter of the model must be in the file.
        missing = model.load_state_dict(state, strict=False).missing_keys
    except RuntimeError as err:   # shape mismatch
        raise ValueError(f"{path} does not fit {type(model).__name__}: {str(err).splitlines()[-1].strip()}") from None
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} weights of {type(model).__name__}, e.g. {missing[0]}")


def _binary_head(model: nn.Module) -> None:
    """Replaces the 1000-way classifier by one logit, in place."""
    if hasattr(model, "reset_classifier"):   # timm keeps num_classes and pooling in step itself
        model.reset_classifier(1)
        return
    # In every torchvision classifier here the head is the last Linear registered: resnet/inception
    # `fc`, the last Linear of vgg/alexnet/mobilenet `classifier`.
    path, old = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, nn.Linear(old.in_features, 1))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: int) -> float:
    """Multiply-accumulates (G) of one 1x3xSxS forward, counted on a real run (conv, linear, matmul)."""
    param = next(model.parameters())
    x = torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()   # batch-norm statistics untouched, and batch 1 is legal everywhere
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
