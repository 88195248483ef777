"""The model registry as plain data (a leaf: imports nothing of core); built in core.nets, fitted in core.families."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    display_name: str
    family: str                 # a key of core.families.FAMILIES
    input_size: int             # native input side in pixels (0: no input of its own)
    reference: str
    study: str                  # source study that used it: "A", "B", "A,B", "" (variant)
    min_input_size: int = 32    # smallest side its stride and kernels accept
    scratch_lr: float = 1e-3    # AdamW rate from random init; nets without BatchNorm need less


def _cnn(name, display_name, reference, study, input_size=224, **extra) -> ModelSpec:
    return ModelSpec(name, display_name, "cnn", input_size, reference, study, **extra)


_SPECS = (
    _cnn("alexnet", "AlexNet", "Krizhevsky et al., NeurIPS 2012", "A", min_input_size=64, scratch_lr=1e-4),
    _cnn("vgg16", "VGG-16", "Simonyan & Zisserman, ICLR 2015", "B", scratch_lr=1e-4),
    # 3e-4: at 1e-3 the loss jumped in epoch 1 (docs/NOTES.md, "VGG learning rates").
    _cnn("vgg16_bn", "VGG-16 (BN)", "Simonyan & Zisserman, ICLR 2015; Ioffe & Szegedy, ICML 2015", "",
         scratch_lr=3e-4),
    _cnn("resnet18", "ResNet-18", "He et al., CVPR 2016", ""),
    _cnn("resnet50", "ResNet-50", "He et al., CVPR 2016", "A,B"),
    _cnn("mobilenet_v2", "MobileNetV2", "Sandler et al., CVPR 2018", "A,B"),
    _cnn("mobilenet_v3_large", "MobileNetV3-Large", "Howard et al., ICCV 2019", ""),
    _cnn("inception_v3", "Inception-v3", "Szegedy et al., CVPR 2016", "A", input_size=299, min_input_size=76),
    _cnn("xception", "Xception", "Chollet, CVPR 2017", "A", input_size=299),
    ModelSpec("cnn_gru", "CNN + BiGRU", "sequence", 224,
              "Cho et al., EMNLP 2014; RSNA 2019 ICH winners (CNN per slice + bidirectional GRU)", "B"),
    ModelSpec("cnn_lstm", "CNN + BiLSTM", "sequence", 224, "Hochreiter & Schmidhuber, 1997; RSNA 2019 ICH winners",
              "B"),
    # Classical models read 128 px slices; ensembles combine saved predictions (no input of their own).
    ModelSpec("svm", "SVM (RBF)", "classical", 128, "Cortes & Vapnik, 1995; hand-crafted features", "B"),
    ModelSpec("knn", "k-NN", "classical", 128, "Cover & Hart, 1967; hand-crafted features", "B"),
    ModelSpec("random_forest", "Random forest", "classical", 128, "Breiman, 2001; hand-crafted features", "B"),
    ModelSpec("gradient_boosting", "Gradient boosting", "classical", 128, "Friedman, 2001; hand-crafted features",
              "B"),
    ModelSpec("mlp", "MLP (plain ANN)", "classical", 128, "Rumelhart et al., 1986; hand-crafted features", "B"),
    ModelSpec("ensemble_soft", "Soft-voting ensemble", "ensemble", 0, "Mean of the members' probabilities", "B"),
    ModelSpec("ensemble_stack", "Stacking ensemble", "ensemble", 0,
              "Wolpert, 1992; logistic regression on the members' validation predictions", "B"),
)
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def names_of(family: str) -> tuple[str, ...]:
    return tuple(spec.name for spec in _SPECS if spec.family == family)


CNN_NAMES = names_of("cnn")
SEQUENCE_NAMES = names_of("sequence")
CLASSICAL_NAMES = names_of("classical")
ENSEMBLE_NAMES = names_of("ensemble")


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]
