"""core.explain: every CNN x every CAM method, alignment with the original image, overlays, scores,
memory, and a trained model whose Grad-CAM finds phantom bleeds better than chance."""
import gc
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

import train
from core.data.decode import channels_first, to_model_input
from core.data.splits import prepare
from core.data.truth import stored_masks
from core.engine import fit
from core.engine.cards import split_parts
from core.io import store as ckpt
from core.io.framing import framing_of
from core.nets.build import LoadedModel, cam_layers, cam_sides, choose_cam_layers, load_network
from core.nets.cnn import CNNS, CNNBuild
from core.explain.__main__ import main, run_difficulty
from core.explain.cam import (METHOD_NAMES, METHODS, MASK_COLOUR, Explanation, cam_batch, explain_image,
                              faithfulness, localization_scores, overlay, peak_on_bleed, phantom_cases,
                              phantom_images, score_localization)
from core.nets.build import create_model
from core.nets.cnn import IMAGENET_MEAN, IMAGENET_STD
from core.registry import CNN_NAMES
from core.phantom.generate import render, write_dataset

# Small inputs keep the matrix fast, but every target layer must still get a 2x2 map: a 1x1 map
# upsamples to a flat one, which is all zeros for either target. alexnet is 1x1 at 64 px and
# inception_v3 1x1 at 96 px (2x2 at 128); xception and the rest are 2x2 at 64 px.
TEST_SIZE = {"alexnet": 96, "inception_v3": 128}
# ScoreCAM runs one forward per activation channel (2048 for these, and each forward is heavy):
# minutes on 2 CPU cores, so the matrix runs it on the light models only (one image each).
SCORECAM_SKIP = {"vgg16", "vgg16_bn", "resnet50", "inception_v3", "xception"}
GRADIENT_METHODS = {"gradcam", "hirescam", "gradcam++", "xgradcam", "layercam"}
TARGET_FREE = {"eigencam", "random"}   # EigenCAM projects activations only; the baseline is noise


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The 2 cores are shared: while others compute, 2 intra-op threads ran a resnet18 CAM ~10x
    slower than 1 thread here (oversubscribed OpenMP)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.fixture(scope="module", params=CNN_NAMES)
def random_model(request):
    """Each registry CNN once, random weights (seed 0), with two random inputs at its test size.

    Fresh batch-norm statistics (mean 0, var 1) leave some untrained nets with activations of no
    use (mobilenet_v3's GradCAM++ was zero for both targets): the statistics are set from the
    inputs, as one training step would."""
    name = request.param
    size = TEST_SIZE.get(name, 64)
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    model = create_model(name)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None   # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        model.train()(x)
    return name, model.eval(), x


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_model_and_method(random_model, method):
    name, model, x = random_model
    if method == "scorecam":
        if name in SCORECAM_SKIP:
            pytest.skip("ScoreCAM on a 2048-channel layer is too slow for the unit matrix")
        x = x[:1]
    with torch.inference_mode():   # as the dashboard calls it
        hemorrhage = cam_batch(model, name, x, method, target=1)
        normal = cam_batch(model, name, x, method, target=0)
    assert hemorrhage.shape == (len(x), *x.shape[-2:]) and hemorrhage.dtype == np.float32
    assert np.isfinite(hemorrhage).all() and hemorrhage.min() >= 0 and hemorrhage.max() <= 1
    # A gradient map may be all zeros for one target (ReLU of a map that is negative everywhere).
    if method in GRADIENT_METHODS:
        assert np.abs(hemorrhage - normal).max() > 0.1
    elif method in TARGET_FREE:
        assert np.array_equal(hemorrhage, normal) and hemorrhage.max() == 1
    # ScoreCAM: on random weights every channel scores about the same, so the maps may coincide.
    assert not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_matches_the_library_and_batches(random_model):
    """Backprop starting at the target layer gives the library's own maps; a batch gives the
    maps of its images one by one."""
    name, model, x = random_model
    if name != "resnet18":
        pytest.skip("checked on one model")
    with GradCAM(model=model, target_layers=cam_layers(model)) as cam:
        plain = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * len(x))
    model.zero_grad(set_to_none=True)
    ours = cam_batch(model, name, x)
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    one_by_one = np.concatenate([cam_batch(model, name, x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(ours, one_by_one, atol=1e-5)
    random = cam_batch(model, name, x, "random")
    assert np.array_equal(random, cam_batch(model, name, x, "random"))   # seeded
    assert not np.array_equal(random[0], random[1])                       # but one map per image


def test_input_made_in_inference_mode():
    model = create_model("resnet18")
    with torch.inference_mode():
        x = torch.randn(1, 3, 64, 64)
        maps = cam_batch(model, "resnet18", x, "hirescam")
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()


def test_flat_map_is_zeros_and_broken_model_is_an_error():
    model = create_model("alexnet")
    assert np.array_equal(cam_batch(model, "alexnet", torch.randn(1, 3, 64, 64)), np.zeros((1, 64, 64)))  # 1x1 map
    with torch.no_grad():
        model.classifier[-1].weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="gradcam on alexnet failed"):
        cam_batch(model, "alexnet", torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="unknown CAM method"):
        cam_batch(model, "alexnet", torch.randn(1, 3, 96, 96), "guessed")
    assert set(METHOD_NAMES) == set(METHODS) | {"random"} and METHOD_NAMES[0] == "gradcam"


class ImageIsTheFeatureMap(nn.Module):
    """Its target layer passes the input through, and the logit is the mean brightness: the
    hemorrhage Grad-CAM is then exactly the bright part of the input."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(3, 1)
        nn.init.ones_(self.fc.weight)

    def forward(self, x):
        return self.fc(self.feat(x).mean((2, 3)))


@pytest.mark.parametrize("shape, centre", [((90, 150), (22, 112)), ((150, 90), (121, 14)), ((70, 70), (30, 50))])
def test_cam_is_mapped_back_onto_the_original_image(monkeypatch, shape, centre):
    monkeypatch.setitem(CNNS, "toy", CNNBuild(None, lambda m: ["feat"], ""))
    toy = ImageIsTheFeatureMap().eval()
    toy.registry_name = "toy"
    loaded = LoadedModel(toy,
                         {"model": "toy", "input_size": 48, "mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    image = np.zeros(shape, np.uint8)
    (r, c), half = centre, 5
    image[r - half:r + half + 1, c - half:c + half + 1] = 255
    explanation = explain_image(loaded, image)
    assert isinstance(explanation, Explanation) and explanation.method == "gradcam"
    assert explanation.cam.shape == shape and 0 < explanation.prob < 1 and explanation.seconds > 0
    hot = np.argwhere(explanation.cam >= 0.5)
    assert np.abs(hot.mean(axis=0) - centre).max() <= 1.0   # the blob, not the padding, lights up
    assert len(hot) < 3 * (2 * half + 1) ** 2


def test_explain_image_of_a_registry_model_on_a_non_square_slice():
    loaded = LoadedModel(create_model("resnet18").eval(),
                         {"model": "resnet18", "input_size": 64, "mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    image = np.random.default_rng(0).integers(0, 256, (80, 120), dtype=np.uint8)
    for method in ("gradcam", "random"):
        explanation = explain_image(loaded, image, method)
        assert explanation.cam.shape == (80, 120) and np.isfinite(explanation.cam).all()
        assert 0 <= explanation.prob <= 1
    windows = explain_image(loaded, np.repeat(image[..., None], 3, axis=2))   # a window set: (H, W, C)
    assert windows.cam.shape == (80, 120) and windows.prob == pytest.approx(explanation.prob, abs=1e-5)
    with pytest.raises(ValueError, match="windowed uint8"):
        explain_image(loaded, image.astype(np.float32))


def test_overlay_draws_the_mask_contour():
    image = np.full((40, 60), 90, np.uint8)
    cam = np.tile(np.linspace(0, 1, 60, dtype=np.float32), (40, 1))
    mask = np.zeros((40, 60), bool)
    mask[10:20, 15:30] = True
    out = overlay(image, cam, mask=mask)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    for y, x in [(10, 20), (19, 22), (14, 15), (14, 29)]:   # on the rectangle's edge
        assert tuple(out[y, x]) == MASK_COLOUR
    assert tuple(out[15, 22]) != MASK_COLOUR                 # inside it: heat, not contour
    plain = overlay(image, cam, alpha=0.4)
    assert plain[0, 59, 0] > plain[0, 59, 2] and tuple(plain[0, 0]) == (90, 90, 90)   # jet's hot red; low: unpainted
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, cam[:, :50])


@pytest.mark.parametrize("level", [0.0, 0.7, "nearly"])
def test_a_flat_map_leaves_the_slice_unpainted(level):
    """A constant map, or one whose range is noise beside its level, points nowhere: the overlay is the plain slice
    (a min-max stretch would tint it all)."""
    image = np.random.default_rng(0).integers(0, 256, (40, 60), dtype=np.uint8)
    noise = np.random.default_rng(1).random((40, 60), dtype=np.float32)
    cam = 0.5 + 1e-3 * noise if level == "nearly" else np.full((40, 60), level, np.float32)
    assert (overlay(image, cam, alpha=1.0) == np.repeat(image[..., None], 3, axis=2)).all()


def test_a_peaked_map_colours_only_near_its_peak():
    """A peak over a raised floor (a background the network gave middling evidence to): the floor stays unpainted."""
    y, x = np.mgrid[:64, :64]
    cam = (0.3 + np.exp(-((y - 20) ** 2 + (x - 40) ** 2) / (2 * 3.0 ** 2))).astype(np.float32)
    out = overlay(np.full((64, 64), 90, np.uint8), cam, alpha=0.6)
    painted = (out != 90).any(axis=2)
    assert painted[20, 40] and out[20, 40, 0] > out[20, 40, 2]   # the peak: red
    assert np.hypot(y[painted] - 20, x[painted] - 40).max() <= 3 * 3.0   # nothing beyond three widths of the peak


def _peak_at(shape: tuple[int, int], y: int, x: int) -> np.ndarray:
    cam = np.zeros(shape, np.float32)
    cam[y, x] = 1.0
    return cam


def test_peak_on_bleed_is_the_pointing_game_at_the_tolerance_scaled_to_the_map():
    mask = np.zeros((32, 32), bool)
    mask[10:14, 10:14] = True                 # right edge at x = 13; tolerance 8 px * 32 / 256 = 1 px
    assert peak_on_bleed(_peak_at((32, 32), 12, 11), mask) is True     # inside
    assert peak_on_bleed(_peak_at((32, 32), 12, 14), mask) is True     # 1 px outside: within tolerance
    assert peak_on_bleed(_peak_at((32, 32), 12, 15), mask) is False    # 2 px outside
    assert peak_on_bleed(_peak_at((32, 32), 30, 30), mask) is False    # far outside
    wide = np.pad(mask, ((0, 0), (0, 32)))    # 32 x 64: the padded side is 64, so 2 px
    assert peak_on_bleed(_peak_at((32, 64), 12, 15), wide) is True
    assert peak_on_bleed(_peak_at((32, 64), 12, 16), wide) is False
    assert peak_on_bleed(np.full((32, 32), 0.5, np.float32), mask) is False   # a flat map points nowhere
    assert peak_on_bleed(_peak_at((32, 32), 12, 11), None) is None
    assert peak_on_bleed(_peak_at((32, 32), 12, 11), np.zeros((32, 32), bool)) is None   # a normal slice


def test_localization_scores_on_hand_made_maps():
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True                   # 25 px
    cam = np.zeros((20, 20), np.float32)
    cam[5:10, 5:10] = 1.0                     # exactly the mask
    assert localization_scores(cam, mask) == {"pointing_game": 1.0, "energy_in_mask": 1.0, "iou": 1.0}
    cam[0:5, 0:5] = 0.5
    cam[0, 0] = 2.0                           # the peak outside; a second hot square
    scores = localization_scores(cam / 2, mask)
    assert scores["pointing_game"] == 0.0
    assert scores["energy_in_mask"] == pytest.approx(25 / (25 + 24 * 0.5 + 2))
    assert scores["iou"] == pytest.approx(25 / 26)   # hot (>= 0.5): the mask and the peak pixel
    assert localization_scores(cam, mask, iou_threshold=0.4)["iou"] == pytest.approx(25 / 50)
    # The peak (0, 0) is sqrt(5^2 + 5^2) = 7.07 px from the mask's corner (5, 5).
    assert localization_scores(cam, mask, tolerance=7.0)["pointing_game"] == 0.0
    assert localization_scores(cam, mask, tolerance=7.1)["pointing_game"] == 1.0
    flat = localization_scores(np.full((20, 20), 0.3, np.float32), mask, tolerance=100)
    assert flat["pointing_game"] == 0.0 and flat["iou"] == 0.0
    with pytest.raises(ValueError, match="non-empty mask"):
        localization_scores(cam, np.zeros((20, 20), bool))


def test_faithfulness_per_map():
    torch.manual_seed(0)
    model = create_model("resnet18").eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    cams = cam_batch(model, "resnet18", x)
    scores = faithfulness(model, "resnet18", x, cams, "gradcam")
    assert scores["model"] == "resnet18" and scores["method"] == "gradcam"
    for key in ("road", "confidence_drop"):
        assert scores[key].shape == (2,) and np.isfinite(scores[key]).all() and np.abs(scores[key]).max() <= 1
    np.testing.assert_array_equal(scores["road"], faithfulness(model, "resnet18", x, cams, "gradcam")["road"])
    # A map of ones keeps the whole input: the probability cannot drop.
    whole = faithfulness(model, "resnet18", x, np.ones_like(cams), "ones")
    np.testing.assert_allclose(whole["confidence_drop"], 0, atol=1e-6)


def test_repeated_cams_do_not_grow_memory():
    model = create_model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    for _ in range(10):   # warm-up: allocator pools and oneDNN caches settle
        cam_batch(model, "resnet18", x)
    gc.collect()
    before = rss_mb()
    for _ in range(100):
        cam_batch(model, "resnet18", x)
    gc.collect()
    assert rss_mb() - before < 50
    assert not model.layer4._forward_hooks   # every CAM released its hooks (the default layer: layer4)


# Easy phantoms (difficulty 0-0.4) with batch 8 give a model that finds them in ~60 s of CPU; at 112 px
# the CAM layer is layer3 (7x7 cells): layer4 would be 4x4, too coarse for a bleed of ~1 % of the slice.
SIZE = 112


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    write_dataset(root / "data", 300, size=SIZE, seed=0, stack_size=1, difficulty=(0.0, 0.4), twins=True)
    assert train.main(["--data", str(root / "data"), "--models", "resnet18", "--epochs", "7", "--image-size",
                       str(SIZE), "--batch-size", "8", "--device", "cpu", "--numerics", "fp32", "--seed", "0",
                       "--out", str(root / "run")]) == 0   # fp32: the same weights whatever numerics this machine times fastest
    return root / "run"


def test_gradcam_points_at_phantom_bleeds_better_than_chance(trained_run):
    loaded = load_network(trained_run / "resnet18")
    assert loaded.card["metrics"]["test"]["roc_auc"] >= 0.75
    cases = phantom_cases(40, SIZE, seed=1, difficulty=(0.0, 0.4))
    assert framing_of(loaded.card) == "head"   # --data frames by default: the phantoms are scored framed alike
    images, masks = phantom_images(cases, framing_of(loaded.card))
    cam = loaded.card["cam"]   # chosen on the validation bleeds' masks among layer3 (the depth rule, 7x7) and finer
    scores = cam["chosen_on"]["pointing_game"]
    assert list(scores)[0] == "layer3" and scores[cam["layers"][0]] == max(scores.values())
    table = {m: score_localization(loaded, images, masks, m, tolerance=8)[0] for m in ("gradcam", "eigencam", "random")}
    exact = score_localization(loaded, images, masks, "gradcam")[0]
    for method, row in {**table, "gradcam, no tolerance": exact}.items():
        print(method, {k: round(v, 3) for k, v in row.items()})
    assert table["gradcam"]["tolerance_px"] == 8 and exact["tolerance_px"] == 0
    assert table["gradcam"]["pointing_game"] >= table["random"]["pointing_game"] + 0.3
    assert table["gradcam"]["energy_in_mask"] >= 1.2 * table["random"]["energy_in_mask"]


def test_cli_writes_table_and_gallery(trained_run, tmp_path, capsys):
    out = tmp_path / "explain"
    assert main(["--run", str(trained_run), "--phantoms", "6", "--size", str(SIZE), "--out", str(out),
                 "--methods", "gradcam,random", "--gallery-columns", "5"]) == 0
    table = pd.read_csv(out / "localization.csv")
    assert list(table.columns[:6]) == ["model", "method", "pointing_game", "energy_in_mask", "iou", "n"]
    assert table[["model", "method"]].values.tolist() == [["resnet18", "gradcam"], ["resnet18", "random"]]
    assert (table["n"] == 6).all() and table["pointing_game"].between(0, 1).all()
    with Image.open(out / "gallery.png") as gallery:
        assert gallery.size == (5 * 192, 18 + 192 + 18)
    printed = capsys.readouterr().out
    assert "pointing_game" in printed and "tolerance 8 px" in printed
    lo, hi = run_difficulty(trained_run)   # phantoms drawn like the run's own: write_dataset's (0, 0.4)
    assert 0 <= lo < hi <= 0.4 and f"difficulty {lo:g}-{hi:g}" in printed
    assert run_difficulty(tmp_path) == (0.2, 0.8)   # a folder without run.json: the default range


def test_a_cam_layer_chosen_on_masks_is_the_one_that_points_best(tiny_phantoms, monkeypatch):
    """On validation bleeds with masks, each option's pointing game is that of its own Grad-CAM maps, the best one
    is chosen and set on the model; without masks (or for stacks) the depth rule stands."""
    monkeypatch.setattr(fit, "CAM_TRUTH_BLEEDS", (2, 48))
    data = prepare(tiny_phantoms, 64, seed=0)
    torch.manual_seed(0)
    model = create_model("resnet18").eval()
    rows, val = np.arange(len(data.manifest)), split_parts(data.manifest)["val"]
    cam = fit.pick_cam_layers(model, "resnet18", data, rows, val, torch.device("cpu"))
    chosen_on = cam["chosen_on"]
    scores = chosen_on["pointing_game"]
    depth_rule = choose_cam_layers(model, 64)["layers"][0]
    assert list(scores) == [depth_rule, "layer1"]   # resnet18 at 64 px: layer2 8x8 cells; layer1, the one finer size
    assert cam["layers"] == model.cam_layer_names and scores[cam["layers"][0]] == max(scores.values())
    assert cam["cells"] == cam_sides(model, 64)[cam["layers"][0]]
    bleeds = val[data.manifest["label"].to_numpy()[val] == 1]
    masks = stored_masks(data.manifest["path"].iloc[bleeds].tolist(), 64)
    assert chosen_on["validation_bleeds"] == len(masks) >= 2
    x = to_model_input(channels_first(torch.as_tensor(data.images[bleeds[sorted(masks)]])), IMAGENET_MEAN,
                       IMAGENET_STD)
    for layer, score in scores.items():   # each score is its own layer's maps against the masks
        model.cam_layer_names = [layer]
        maps = cam_batch(model, "resnet18", x)
        assert score == pytest.approx(np.mean([localization_scores(m, masks[i], tolerance=chosen_on["tolerance_px"])
                                               ["pointing_game"] for m, i in zip(maps, sorted(masks))]))
    assert "chosen_on" not in fit.pick_cam_layers(model, "resnet18", data, np.stack([rows, rows], 1), val,
                                                  torch.device("cpu"))
    monkeypatch.setattr(fit, "CAM_TRUTH_BLEEDS", (10_000, 48))
    assert fit.pick_cam_layers(model, "resnet18", data, rows, val, torch.device("cpu"))["layers"] == [depth_rule]
