"""The model registry: every entry builds, runs, back-propagates, explains, and loads ImageNet weights."""
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.models as tvm
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from safetensors.torch import save_file
from torch import nn

from core.nets.build import (MIN_CAM_CELLS, NETWORK_NAMES, cam_layers, choose_cam_layers, create_model,
                             init_from_scratch, load_network)
from core.io import store as ckpt
from core.io.weights import save_model
from core.nets.cnn import CNNS, IMAGENET_MEAN, IMAGENET_STD, cnn_build, head_architecture
from core.nets.measure import count_gmacs, count_params
from core.presets import CPU_NETWORK_ORDER, CPU_RECIPES, cpu_network_order, demo_preset
from core.registry import CNN_NAMES, REGISTRY, SEQUENCE_NAMES, Blueprint, ModelSpec

# Published ballparks (conv/linear MACs of one image at native size); the counter must land within
# 30 %. vgg16_bn: the same convolutions as vgg16; mobilenet_v3_large: 219 M in its paper.
GMACS_REF = {"alexnet": 0.71, "vgg16": 15.5, "vgg16_bn": 15.5, "resnet18": 1.82, "resnet50": 4.1,
             "mobilenet_v2": 0.30, "mobilenet_v3_large": 0.22, "inception_v3": 5.7, "xception": 8.4}


def disc_image(size: int, cy: float = 0.4, cx: float = 0.6, radius: float = 0.15) -> torch.Tensor:
    """A bright disc on black, ImageNet-normalised: a 1x3xSxS input with something to localise."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    grey = (((yy - size * cy) ** 2 + (xx - size * cx) ** 2).sqrt() < size * radius).float()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((grey.expand(3, size, size) - mean) / std)[None]


def make_it_see_a_bleed(model: nn.Module, size: int) -> None:
    """Turns a random-weight model into one whose hemorrhage Grad-CAM has something to show.

    Fresh batch-norm running stats (mean 0, var 1) leave some untrained nets nearly blind in eval
    mode: inception_v3's logit agrees to 7 digits for noise and a disc. So the statistics are set
    from two disc images, as any training step would. And the Grad-CAM of a class the model sees
    nowhere is legitimately all zero (seen on some seeds for every architecture, plain alexnet
    included), so the head's sign is chosen to score the disc above a blank image: the disc is
    then hemorrhage evidence. Checked on 12 seeds (5 for the VGGs): no flat map remains."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None   # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.cat([disc_image(size), disc_image(size, 0.7, 0.3, 0.2)]))
        model.eval()
        if model(disc_image(size)).item() < model(torch.zeros(1, 3, size, size)).item():
            head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            head.weight.neg_()
            head.bias.neg_()


@pytest.fixture(scope="module", params=list(CNN_NAMES))
def built(request):
    """Each registry model built once (random weights, seed 0) and shared by the tests below."""
    spec = REGISTRY[request.param]
    torch.manual_seed(0)
    model = create_model(spec.name)
    make_it_see_a_bleed(model, spec.input_size)
    return spec, model


def test_registry_lists_the_nine_cnns():
    assert CNN_NAMES == ("alexnet", "vgg16", "vgg16_bn", "resnet18", "resnet50", "mobilenet_v2",
                         "mobilenet_v3_large", "inception_v3", "xception")
    assert {n for n, s in REGISTRY.items() if s.family == "cnn"} == set(CNN_NAMES)
    assert {n: REGISTRY[n].input_size for n in CNN_NAMES if REGISTRY[n].input_size != 224} == {
        "inception_v3": 299, "xception": 299}
    assert set(GMACS_REF) == set(CNN_NAMES)
    assert {s.family for s in REGISTRY.values()} == {"cnn", "sequence", "classical", "ensemble"}
    # Every network of the registry can be built, and nothing else is a network.
    assert set(CNNS) == set(CNN_NAMES) and set(NETWORK_NAMES) == {*CNN_NAMES, *SEQUENCE_NAMES}


def test_importing_the_registry_imports_no_torch():
    """Pages that show stored numbers read the registry: it must stay plain data."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, core.registry; print(sorted({m.split('.')[0] for m in "
                             "sys.modules} & {'torch', 'torchvision', 'timm', 'numpy'}))"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_every_registry_cnn_has_a_builder_and_a_place_in_the_cpu_demo():
    assert set(CNNS) == set(CPU_NETWORK_ORDER) == set(CPU_RECIPES) == set(CNN_NAMES)
    assert len(CPU_NETWORK_ORDER) == len(CNN_NAMES)
    assert [m for m in demo_preset("cpu").models if m in CNN_NAMES] == list(CPU_NETWORK_ORDER)
    assert CPU_NETWORK_ORDER[0] == "vgg16" and CPU_NETWORK_ORDER[-1] == "alexnet"   # slowest epochs first


def test_a_cnn_registered_as_data_is_built_and_one_lacking_a_blueprint_or_a_place_is_refused():
    new = ModelSpec("shufflenet", "ShuffleNetV2", "cnn", 224, "", "",
                    blueprint=Blueprint("shufflenet_v2_x0_5", cam_match=r"stage\d|conv5"))
    build = cnn_build(new)
    model = build.builder(False)
    assert build.cam_candidates(model) == ["stage2", "stage3", "stage4", "conv5"]
    assert build.weights_url.endswith(".pth") and build.scratch_init is None and build.gap_head is None
    with pytest.raises(ValueError, match="shufflenet has no blueprint"):
        cnn_build(replace(new, blueprint=None))
    with pytest.raises(ValueError, match="unknown cam kind 'Relu', library 'keras', scratch_init 'lsuv'"):
        cnn_build(replace(new, blueprint=Blueprint("x", library="keras", cam_kinds=("Relu",), scratch_init="lsuv")))
    cnns = [REGISTRY[name] for name in CNN_NAMES]
    with pytest.raises(ValueError, match="places 1 to 10, one each; they have shufflenet 0, vgg16 1"):
        cpu_network_order([*cnns, new])
    assert cpu_network_order([*cnns, replace(new, cpu_place=10)]) == (*CPU_NETWORK_ORDER, "shufflenet")


def test_forward_gives_one_finite_logit(built):
    spec, model = built
    with torch.inference_mode():
        logit = model(disc_image(spec.input_size))
    assert logit.shape == (1, 1)
    assert torch.isfinite(logit).all()
    assert model.pretrained_loaded is False
    assert count_params(model) > 1_000_000


def test_gradient_reaches_the_input(built):
    spec, model = built
    x = disc_image(spec.input_size).requires_grad_()
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_gradcam_on_the_spec_layers(built):
    spec, model = built
    size = spec.input_size
    with GradCAM(model=model, target_layers=cam_layers(model)) as cam:
        heat = cam(input_tensor=disc_image(size), targets=[BinaryClassifierOutputTarget(1)])
    assert heat.shape == (1, size, size)
    assert np.isfinite(heat).all()
    assert heat.max() > heat.min()


@pytest.mark.parametrize("size", [64, 128, None])
def test_cam_layer_is_the_deepest_with_enough_cells_at_the_trained_size(built, size):
    """At the demo's sizes the deepest layer (2x2 or 4x4 cells) gives way to one whose map can localize."""
    spec, model = built
    size = max(size or spec.input_size, spec.min_input_size)
    sides = {}
    candidates = CNNS[spec.name].cam_candidates(model)
    hooks = [model.get_submodule(c).register_forward_hook(lambda m, a, out, c=c: sides.__setitem__(c, out.shape[-1]))
             for c in candidates]
    with torch.no_grad():
        model(disc_image(size))
    for h in hooks:
        h.remove()
    chosen = choose_cam_layers(model, size)
    try:
        layer = chosen["layers"][0]
        assert chosen["cells"] == sides[layer] >= MIN_CAM_CELLS or chosen["cells"] == max(sides.values())
        assert all(sides[c] < MIN_CAM_CELLS for c in candidates[candidates.index(layer) + 1:])
        assert cam_layers(model) == [model.get_submodule(layer)] and not model.training
    finally:
        del model.cam_layer_names   # the module-scoped model keeps its registry default for the tests below


def test_gmacs_match_published_figures(built):
    spec, model = built
    model.train()
    gmacs = count_gmacs(model, spec.input_size)
    assert model.training, "count_gmacs must restore the training mode"
    model.eval()   # the module-scoped model is shared with the tests below, which expect eval mode
    assert gmacs == pytest.approx(GMACS_REF[spec.name], rel=0.3)


def test_unknown_name_lists_the_available_models():
    with pytest.raises(ValueError, match="unknown model 'resnet999'") as err:
        create_model("resnet999")
    assert all(name in str(err.value) for name in CNN_NAMES)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty torch.hub cache, on any machine."""
    def no_dns(*args, **kwargs):
        lookups.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return lookups


@pytest.mark.parametrize("name", ["resnet18", "xception"])   # torchvision weights= and timm pretrained=True
def test_pretrained_without_network_falls_back_fast(name, offline, capsys):
    model = create_model(name, pretrained=True)
    # It gave up at the first failed name lookup: no retry loop, nothing downloaded.
    assert len(offline) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"hemolens: ImageNet weights for {name} are unreachable (no network?")
    assert lines[0].endswith("training from scratch.")
    assert model.pretrained_loaded is False
    with torch.inference_mode():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1)


def test_empty_weights_dir_falls_back(tmp_path, capsys):
    model = create_model("resnet18", pretrained=True, weights_dir=tmp_path)
    err = capsys.readouterr().err.strip()
    assert err == (f"hemolens: ImageNet weights for resnet18 are not in {tmp_path} "
                   "(expected resnet18-f37072fd.pth or resnet18.safetensors); training from scratch.")
    assert model.pretrained_loaded is False


def fake_imagenet_resnet18(path) -> dict:
    """A freshly initialised 1000-class resnet18 saved where real ImageNet weights would be."""
    torch.manual_seed(123)
    state = tvm.resnet18().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path) if path.suffix == ".safetensors" else torch.save(state, path)
    return state


def assert_backbone_equal(model: nn.Module, state: dict) -> None:
    ours = model.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert len(backbone) == len(ours) - 2   # everything but the new one-logit fc
    assert all(torch.equal(ours[k], state[k]) for k in backbone)
    assert ours["fc.weight"].shape == (1, 512)


@pytest.mark.parametrize("file_name", ["resnet18-f37072fd.pth", "resnet18.safetensors"])
def test_weights_dir_file_is_loaded(file_name, tmp_path, capsys):
    state = fake_imagenet_resnet18(tmp_path / file_name)
    model = create_model("resnet18", pretrained=True, weights_dir=tmp_path)
    assert model.pretrained_loaded is True
    assert capsys.readouterr().err == ""
    assert_backbone_equal(model, state)


def test_cached_download_goes_through_torchvision_weights(offline, tmp_path, capsys):
    """pretrained=True without weights_dir is torchvision's `weights=` path; it reads torch.hub's cache."""
    state = fake_imagenet_resnet18(tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = create_model("resnet18", pretrained=True)
    assert model.pretrained_loaded is True
    assert capsys.readouterr().err == ""
    assert_backbone_equal(model, state)


def test_weights_file_for_another_architecture_is_an_error(tmp_path):
    torch.save(tvm.mobilenet_v2().state_dict(), tmp_path / "resnet18-f37072fd.pth")
    with pytest.raises(ValueError, match="resnet18-f37072fd.pth"):
        create_model("resnet18", pretrained=True, weights_dir=tmp_path)


def test_inception_computes_the_same_function_however_it_was_built(offline, tmp_path):
    """torchvision turns transform_input on only when it loads weights; a checkpoint trained from
    them must give the same outputs when rebuilt with create_model(name) and loaded."""
    file = tmp_path / "torch_home" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    file.parent.mkdir(parents=True)
    torch.manual_seed(5)   # the file as torchvision ships it: with the auxiliary head
    torch.save(tvm.inception_v3(aux_logits=True, init_weights=False).state_dict(), file)
    downloaded = create_model("inception_v3", pretrained=True).eval()
    local = create_model("inception_v3", pretrained=True, weights_dir=file.parent).eval()
    local.load_state_dict(downloaded.state_dict())   # same head too, to compare outputs
    rebuilt = create_model("inception_v3").eval()
    rebuilt.load_state_dict(downloaded.state_dict())
    assert downloaded.pretrained_loaded and local.pretrained_loaded and not rebuilt.pretrained_loaded
    x = disc_image(299)
    with torch.inference_mode():
        outs = [m(x) for m in (downloaded, local, rebuilt)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_checkpoint_round_trip_gives_identical_outputs(built, tmp_path):
    """save_model -> load through the run-folder format (sha256 verified) reproduces the logits exactly."""
    spec, model = built
    card = {"model": spec.name, "display_name": spec.display_name, "family": spec.family,
            "input_size": spec.input_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "thresholds": {"default": 0.5}}
    history = pd.DataFrame(columns=ckpt.HISTORY_COLUMNS)
    predictions = pd.DataFrame(columns=ckpt.PREDICTION_COLUMNS)
    save_model(tmp_path / spec.name, model.state_dict(), card, history, predictions)
    loaded = load_network(tmp_path / spec.name)
    x = disc_image(spec.input_size)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))
    assert not loaded.model.training and loaded.card["weights_sha256"] == ckpt.sha256_file(
        tmp_path / spec.name / ckpt.WEIGHTS)


def test_min_input_size_is_the_smallest_accepted(built):
    spec, model = built
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, spec.min_input_size, spec.min_input_size)).shape == (1, 1)
        if spec.min_input_size > 32:
            with pytest.raises(RuntimeError):
                model(torch.zeros(1, 3, spec.min_input_size - 2, spec.min_input_size - 2))


def _penultimate_rms(model: nn.Module, x: torch.Tensor) -> float:
    """RMS of what VGG's one-logit head reads (the second 4096-wide layer, after ReLU)."""
    with torch.no_grad():
        h = model.classifier[:-1](torch.flatten(model.avgpool(model.features(x)), 1))
    return float(h.pow(2).mean().sqrt())


def test_vgg16_from_scratch_init_keeps_the_signal_scale():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)   # unit-variance input
    model = create_model("vgg16").eval()
    shrunk = _penultimate_rms(model, x)    # torchvision's ImageNet init
    init_from_scratch(model)
    kept = _penultimate_rms(model, x)
    assert shrunk < 0.3 and 0.5 < kept < 5, (shrunk, kept)
    head = model.classifier[-1]
    assert abs(float(head.weight.detach().std()) - 0.01) < 0.003 and not head.bias.detach().any()
    first = model.features[0]   # fan-in 3 x 3 x 3 = 27
    assert abs(float(first.weight.detach().std()) - (2 / 27) ** 0.5) < 0.05
    assert {n for n in CNN_NAMES if CNNS[n].scratch_init} == {"vgg16", "mobilenet_v2", "mobilenet_v3_large"}


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large"])
def test_mobilenet_scratch_init_starts_every_residual_block_as_the_identity(name):
    from torchvision.models.mobilenetv2 import InvertedResidual as V2Block
    from torchvision.models.mobilenetv3 import InvertedResidual as V3Block
    torch.manual_seed(0)
    model = create_model(name).eval()
    init_from_scratch(model)
    blocks = [m for m in model.modules() if isinstance(m, (V2Block, V3Block))]
    residual = [b for b in blocks if b.use_res_connect]
    assert len(residual) >= 5 and len(residual) < len(blocks)   # strided / widening blocks have no shortcut
    for block in blocks:
        channels = block.block[0][0].in_channels if isinstance(block, V3Block) else block.conv[0][0].in_channels
        x = torch.randn(2, channels, 8, 8)
        with torch.no_grad():
            y = block(x)
        assert torch.equal(y, x) == block.use_res_connect   # only the shortcut blocks start as the identity


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "vgg16_bn"])
def test_gap_head_pools_the_last_convolutions_into_one_linear_and_loads_back(name, tmp_path):
    """head "gap": the convolutions and one Linear, one logit at any size the trunk takes, recorded in the card so
    that load_network rebuilds the same function."""
    torch.manual_seed(0)
    architecture = head_architecture(name, "gap")
    model = create_model(name, **architecture).eval()
    channels = [m for m in model.features if isinstance(m, nn.Conv2d)][-1].out_channels
    assert architecture == {"head": "gap"} and isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (channels, 1)
    assert count_params(model) == count_params(model.features) + channels + 1   # no fully connected layer left
    x = torch.cat([disc_image(64), disc_image(64, 0.7, 0.3)])
    card = {"model": name, "input_size": 64, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "thresholds": {"default": 0.5}, "architecture": architecture}
    save_model(tmp_path / name, model.state_dict(), card, pd.DataFrame(columns=ckpt.HISTORY_COLUMNS),
                    pd.DataFrame(columns=ckpt.PREDICTION_COLUMNS))
    with torch.inference_mode():
        assert model(x).shape == (2, 1) and torch.equal(model(x), load_network(tmp_path / name).model(x))


def test_gap_head_is_recorded_only_where_it_changes_the_network():
    assert [n for n in CNN_NAMES if head_architecture(n, "gap")] == ["alexnet", "vgg16", "vgg16_bn"]
    assert not any(head_architecture(n, "stock") for n in CNN_NAMES)
    with pytest.raises(ValueError, match="not one of stock, gap"):
        head_architecture("vgg16", "mlp")
