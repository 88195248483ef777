"""The model registry as plain data (a leaf: imports nothing of core, nor torch): each model registered once, a CNN
with how core.nets builds it and how the CPU demo (core.presets) trains it; fitted in core.families."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Blueprint:
    """How core.nets.cnn builds a CNN, as data: the library's ImageNet model, its Grad-CAM candidates, its quirks."""
    arch: str                               # the library's name for it
    library: str = "torchvision"            # or "timm"
    options: tuple[tuple[str, object], ...] = ()   # (keyword, value) for the library's builder
    # Grad-CAM candidates, each a block's output, shallow to deep (the last is the default): the children of the
    # module at `cam_in` ("": the model) whose names match `cam_match` in full and that are one of `cam_kinds`
    # (torch.nn class names; none: any).
    cam_in: str = ""
    cam_match: str = ".*"
    cam_kinds: tuple[str, ...] = ()
    scratch_init: str = ""                  # a key of core.nets.cnn.SCRATCH_INITS: its re-init for random starts
    gap_head: bool = False                  # head "gap" may replace its classifier by global average pool + Linear
    # Built with an auxiliary classifier (torchvision refuses aux_logits=False with weights), dropped after building.
    drop_aux: bool = False


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
    blueprint: Blueprint | None = None   # a CNN's: how core.nets builds it
    # A CNN's place in the CPU demo, 1 first: slowest epochs first, so that the light networks at the end absorb what
    # the heavy ones overran; and its own settings there, TrainConfig fields (docs/NOTES.md, "Per-network CPU recipes").
    cpu_place: int = 0
    cpu_recipe: dict = field(default_factory=dict)


def _cnn(name, display_name, reference, study, input_size=224, **extra) -> ModelSpec:
    return ModelSpec(name, display_name, "cnn", input_size, reference, study, **extra)


_ACTIVATIONS = {"cam_in": "features", "cam_kinds": ("ReLU", "MaxPool2d")}   # AlexNet / VGG: after each ReLU and pool
_BLOCKS = {"cam_in": "features"}                                           # MobileNets: every block
_STAGES = {"cam_match": r"layer\d"}                                         # ResNets
_SPECS = (
    _cnn("alexnet", "AlexNet", "Krizhevsky et al., NeurIPS 2012", "A", min_input_size=64, scratch_lr=1e-4,
         blueprint=Blueprint("alexnet", **_ACTIVATIONS, gap_head=True),
         cpu_place=9, cpu_recipe={"head": "gap", "image_size": 128, "epochs": 16, "lr": 3e-4}),
    _cnn("vgg16", "VGG-16", "Simonyan & Zisserman, ICLR 2015", "B", scratch_lr=1e-4,
         blueprint=Blueprint("vgg16", **_ACTIVATIONS, scratch_init="he_fan_in", gap_head=True),
         cpu_place=1, cpu_recipe={"head": "gap", "image_size": 64, "time_budget_s": 95, "warmup_epochs": 0.25}),
    # 3e-4: at 1e-3 the loss jumped in epoch 1 (docs/NOTES.md, "VGG learning rates").
    _cnn("vgg16_bn", "VGG-16 (BN)", "Simonyan & Zisserman, ICLR 2015; Ioffe & Szegedy, ICML 2015", "",
         scratch_lr=3e-4, blueprint=Blueprint("vgg16_bn", **_ACTIVATIONS, gap_head=True),
         cpu_place=2, cpu_recipe={"head": "gap", "image_size": 64, "time_budget_s": 70, "warmup_epochs": 0.25}),
    _cnn("resnet18", "ResNet-18", "He et al., CVPR 2016", "", blueprint=Blueprint("resnet18", **_STAGES),
         cpu_place=6, cpu_recipe={"time_budget_s": 30}),
    _cnn("resnet50", "ResNet-50", "He et al., CVPR 2016", "A,B", blueprint=Blueprint("resnet50", **_STAGES),
         cpu_place=3, cpu_recipe={"time_budget_s": 80, "lr": 3e-3}),
    _cnn("mobilenet_v2", "MobileNetV2", "Sandler et al., CVPR 2018", "A,B",
         blueprint=Blueprint("mobilenet_v2", **_BLOCKS, scratch_init="zero_residual_bn"),
         cpu_place=7, cpu_recipe={"epochs": 16, "lr": 2e-3}),
    _cnn("mobilenet_v3_large", "MobileNetV3-Large", "Howard et al., ICCV 2019", "",
         blueprint=Blueprint("mobilenet_v3_large", **_BLOCKS, scratch_init="zero_residual_bn"),
         cpu_place=8, cpu_recipe={"epochs": 16, "lr": 3e-3}),
    # transform_input fixed on: the same function whether built to train or to load a checkpoint. CAM candidates:
    # the stem's last convolutions too, finer maps a layer chosen on masks can take (docs/NOTES.md).
    _cnn("inception_v3", "Inception-v3", "Szegedy et al., CVPR 2016", "A", input_size=299, min_input_size=76,
         blueprint=Blueprint("inception_v3", options=(("transform_input", True), ("init_weights", False)),
                             cam_match=r"(Conv2d_2b|Conv2d_3b|Conv2d_4a|Mixed).*", drop_aux=True),
         cpu_place=5, cpu_recipe={"lr": 2e-3}),
    _cnn("xception", "Xception", "Chollet, CVPR 2017", "A", input_size=299,
         blueprint=Blueprint("legacy_xception", library="timm", cam_match=r"block\d+|act3|act4"),
         cpu_place=4, cpu_recipe={"lr": 3e-3}),
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
# CNNs that recipes pick by name, named here where each CNN is registered: a sequence model's per-slice network unless
# told otherwise, and the painted recipe's pair, the two measured on external sets (core.presets, docs/NOTES.md).
DEFAULT_BACKBONE = "resnet18"
PAINTED_NETWORKS = ("resnet18", "mobilenet_v2")
if unknown := sorted({DEFAULT_BACKBONE, *PAINTED_NETWORKS} - set(CNN_NAMES)):
    raise ValueError(f"recipes name networks the registry has no CNN for: {', '.join(unknown)}")


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]
