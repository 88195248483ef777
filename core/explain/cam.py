"""Class activation maps through pytorch-grad-cam: maps, overlays, localization and faithfulness scores."""
from __future__ import annotations

import time
import zlib
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_grad_cam import (EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
                              XGradCAM)
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from core.data.decode import channels_first, resize_square, to_model_input
from core.nets.build import cam_layers
from core.nets.sharing import exclusive
from core.nets.sequence import SequenceClassifier
from core.io.framing import frame
from core.io.imaging import MASK_COLOUR, display_grey
from core.phantom.generate import generate_slice, render
from core.subtypes import SUBTYPES

METHODS: dict[str, type] = {"gradcam": GradCAM, "hirescam": HiResCAM, "gradcam++": GradCAMPlusPlus,
                            "xgradcam": XGradCAM, "layercam": LayerCAM, "eigencam": EigenCAM,
                            "scorecam": ScoreCAM}
METHOD_NAMES: tuple[str, ...] = (*METHODS, "random")
SCORECAM_BATCH = 16        # ScoreCAM runs one forward per activation channel, this many at a time
RANDOM_GRID = 7            # the random baseline is as coarse as a 7x7 feature map at native size
COLOURMAP = cv2.COLORMAP_JET   # overlays: blue (low) to red (high), the maps' usual key
# A map whose range is under this share of its peak points nowhere: drawn flat, not stretched into noise that tints
# the whole slice.
FLAT_CONTRAST = 0.05
# Evidence below this share of a map's range is not painted, so the slice shows through where the map is low;
# above it the paint's opacity grows with the evidence.
UNPAINTED_BELOW = 0.15
KEY_GREY = 128   # what the colour key is painted over: a mid grey, like brain tissue in the brain window
DEFAULT_TOLERANCE_PX = 8   # pointing-game slack on a 256 px phantom, one for every model (Zhang et al. use 15 px)
TOLERANCE_SIDE = 256       # the side DEFAULT_TOLERANCE_PX is set on; other sizes scale it (core.engine.fit)


@contextmanager
def _graph_from(model: torch.nn.Module, layers: list[torch.nn.Module]):
    """Record autograd only from the target layers on: about one forward, no weight gradients left."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    start = lambda module, args, out: out if out.requires_grad else out.detach().requires_grad_()
    handles = [layer.register_forward_hook(start) for layer in layers]   # before the CAM's own hooks
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1]; a flat map becomes zeros (it points nowhere), never NaN."""
    maps = np.asarray(maps, dtype=np.float32)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def _random_maps(x: torch.Tensor) -> np.ndarray:
    """The chance baseline: smooth noise seeded by each image's content."""
    size = (x.shape[-1], x.shape[-2])
    maps = []
    for image in x.detach().cpu().numpy():
        rng = np.random.default_rng(zlib.crc32(image.tobytes()))
        coarse = rng.random((RANDOM_GRID, RANDOM_GRID), dtype=np.float32)
        maps.append(cv2.resize(coarse, size, interpolation=cv2.INTER_LINEAR))
    return _normalise(np.stack(maps))


def _check_method(method: str, target: int) -> None:
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHOD_NAMES)}")
    if target not in (0, 1):
        raise ValueError(f"target must be 1 (hemorrhage) or 0 (normal), not {target!r}")


def _autograd_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x as a float32 tensor on the device, cloned outside inference_mode so autograd accepts it."""
    device = next(model.parameters()).device
    with torch.inference_mode(False):
        return x.detach().to(device, torch.float32).clone()


class _HemorrhageTarget(BinaryClassifierOutputTarget):
    """The hemorrhage logit, output 0 (a subtypes head's "any"): the same map as a one-logit model's; signed by
    target (1 hemorrhage, 0 normal)."""

    def __call__(self, model_output):
        return super().__call__(model_output[..., :1])


def _hemorrhage_logits(outputs: torch.Tensor) -> np.ndarray:
    """(B,) output 0 of a (B, outputs) forward."""
    return outputs.detach().float().reshape(len(outputs), -1)[:, 0].cpu().numpy()


def _run_cam(model, cam_model, x: torch.Tensor, method: str, target: int, what: str, n_outputs: int,
             rnn: bool = False):
    """(maps in [0, 1], raw outputs) of one CAM method, checked since GradCAM swallows some exceptions."""
    layers = cam_layers(model)
    maps = outputs = None
    # cuDNN runs RNN backward in training mode only; the native kernels have no such rule.
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if rnn else contextlib.nullcontext()
    # Hooks and requires_grad flags live on the shared model: one CAM of it at a time, other models meanwhile.
    with exclusive(model), torch.inference_mode(False), torch.enable_grad(), no_cudnn, _graph_from(model, layers):
        with METHODS[method](model=cam_model, target_layers=layers) as cam:
            if method == "scorecam":
                cam.batch_size = SCORECAM_BATCH
            maps = cam(input_tensor=x, targets=[_HemorrhageTarget(target)] * n_outputs)
            outputs = _hemorrhage_logits(cam.outputs)
    expected = (len(x), *x.shape[-2:])
    if maps is None or np.shape(maps) != expected or not np.isfinite(maps).all():
        got = "nothing" if maps is None else f"shape {np.shape(maps)}, finite: {np.isfinite(maps).all()}"
        raise RuntimeError(f"{method} on {what} failed: expected finite maps of shape {expected}, got {got}")
    return _normalise(maps), outputs


def _cams_and_logits(model, model_name: str, x: torch.Tensor, method: str, target: int):
    """(B,S,S) maps and the (B,) logits of the same forward."""
    _check_method(method, target)
    x = _autograd_input(model, x)
    model.eval()
    if method == "random":
        with exclusive(model), torch.inference_mode():
            logits = _hemorrhage_logits(model(x))
        return _random_maps(x), logits
    return _run_cam(model, model, x, method, target, model_name, len(x))


def cam_batch(model, model_name: str, x: torch.Tensor, method: str = "gradcam", target: int = 1) -> np.ndarray:
    """(B,S,S) float32 maps in [0, 1] for a normalised (B,3,S,S) input; target 1 = hemorrhage, 0 = normal."""
    return _cams_and_logits(model, model_name, x, method, target)[0]


@dataclass
class Explanation:
    prob: float          # hemorrhage probability
    cam: np.ndarray      # (H, W) float32 in [0, 1], aligned with the original image
    method: str
    seconds: float
    square: np.ndarray   # (S, S) the same map at the model's input size: to_original(square, shape) is `cam`


def _model_input(loaded, images: list[np.ndarray]) -> torch.Tensor:
    """Exactly the training preprocessing: pad to square, resize, grey (or windows) to 3 normalised channels."""
    size, card = loaded.card["input_size"], loaded.card
    batch = channels_first(torch.from_numpy(np.stack([resize_square(im, size) for im in images])))
    return to_model_input(batch, card["mean"], card["std"])


def to_original(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo resize_square: scale the square map up to the padded side, then crop the padding away."""
    h, w = shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2   # as core.data.decode.pad_to_square
    square = cv2.resize(cam, (side, side), interpolation=cv2.INTER_LINEAR)
    return _normalise(square[top:top + h, left:left + w])


def explain_image(loaded, image: np.ndarray, method: str = "gradcam", target: int = 1) -> Explanation:
    """Probability and CAM for one windowed uint8 (H, W) or (H, W, C) slice, the CAM at the slice's own size."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.dtype != np.uint8:
        raise ValueError(f"explain_image needs a windowed uint8 (H, W[, C]) slice, got {image.dtype} {image.shape}")
    start = time.perf_counter()
    maps, logits = _cams_and_logits(loaded.model, loaded.card["model"], _model_input(loaded, [image]),
                                    method, target)
    prob = float(1 / (1 + np.exp(-logits[0])))
    return Explanation(prob, to_original(maps[0], image.shape[:2]), method, time.perf_counter() - start, maps[0])


def display_evidence(cam: np.ndarray) -> np.ndarray:
    """A map as an overlay paints it, in [0, 1]: 0 at its lowest, 1 at its peak; all zeros where it is flat or
    nearly so (range under FLAT_CONTRAST of its peak), since a min-max stretch would turn noise into colour."""
    heat = np.maximum(np.asarray(cam, dtype=np.float32), 0)
    low, peak = float(heat.min()), float(heat.max())
    if peak - low <= FLAT_CONTRAST * peak:
        return np.zeros_like(heat)
    return (heat - low) / (peak - low)


def _paint(rgb: np.ndarray, evidence: np.ndarray, alpha: float) -> np.ndarray:
    """RGB uint8: COLOURMAP over `rgb`, its opacity alpha at the peak and falling to 0 at UNPAINTED_BELOW."""
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.rint(255 * evidence)), COLOURMAP), cv2.COLOR_BGR2RGB)
    opacity = alpha * np.clip((evidence - UNPAINTED_BELOW) / (1 - UNPAINTED_BELOW), 0, 1)[..., None]
    return np.rint(rgb * (1 - opacity) + colours * opacity).astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, mask: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3): the CAM's display_evidence in COLOURMAP at opacity up to alpha over the slice (a window
    set's brain window), low evidence unpainted, plus the mask outline when given."""
    rgb = np.repeat(display_grey(np.asarray(image))[..., None], 3, axis=2)
    if cam.shape != rgb.shape[:2]:
        raise ValueError(f"CAM shape {cam.shape} does not match the image {rgb.shape[:2]}")
    out = _paint(rgb.astype(np.float32), display_evidence(cam), alpha)
    if mask is not None:
        contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, MASK_COLOUR, thickness=max(1, min(out.shape[:2]) // 256))
    return out


def colour_key_html(stops: int = 9) -> str:
    """The overlays' colour key as inline HTML for a caption, a swatch between its words: a gradient from no evidence
    to a map's peak, each stop the colour painted at full opacity over KEY_GREY, so its low end is the grey itself."""
    evidence = np.linspace(0, 1, stops, dtype=np.float32)[None, :]
    painted = _paint(np.full((1, stops, 3), KEY_GREY, np.float32), evidence, 1.0)[0]
    gradient = ", ".join(f"rgb({r}, {g}, {b})" for r, g, b in painted)
    return ('Colour key: low <span style="display:inline-block; width:12em; height:0.8em; vertical-align:middle; '
            f'background:linear-gradient(to right, {gradient})"></span> high evidence for hemorrhage (low: not '
            "painted).")


def localization_scores(cam: np.ndarray, mask: np.ndarray, iou_threshold: float = 0.5, tolerance: float = 0.0) -> dict:
    """Pointing game (within `tolerance` px), CAM energy in the mask and IoU; a flat map scores 0."""
    mask = np.asarray(mask, dtype=bool)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != mask.shape or not mask.any():
        raise ValueError(f"need a CAM and a non-empty mask of the same shape, got {cam.shape} and {mask.shape}")
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    ys, xs = np.nonzero(mask)
    distance = np.hypot(ys - peak[0], xs - peak[1]).min()
    total = float(cam.sum())
    hot = cam >= iou_threshold
    return {"pointing_game": float(cam.max() > cam.min() and distance <= tolerance),
            "energy_in_mask": float(cam[mask].sum()) / total if total > 0 else 0.0,
            "iou": float((hot & mask).sum() / (hot | mask).sum())}


def peak_on_bleed(cam: np.ndarray, mask: np.ndarray | None) -> bool | None:
    """Whether one map's peak hits the true bleed: the pointing game with DEFAULT_TOLERANCE_PX scaled to the map's
    padded side, as core.engine.fit.pick_cam_layers scales it; None where there is no mask or it is empty."""
    if mask is None or not np.any(mask):
        return None
    tolerance = DEFAULT_TOLERANCE_PX * max(np.shape(cam)) / TOLERANCE_SIDE
    return localization_scores(cam, mask, tolerance=tolerance)["pointing_game"] == 1.0


def cam_layer_on_truth(model, model_name: str, x: torch.Tensor, masks: list[np.ndarray], layers: list[str],
                       tolerance: float) -> tuple[str, dict[str, float]]:
    """The layer (of `layers`, preferred first) whose Grad-CAM points at known bleeds most often, and each one's
    pointing game: a depth rule can pick a layer that training left blind, masks tell (docs/NOTES.md, "CAM layer
    depth on the CPU demo"). `masks` are at the model input's size; the model keeps its own layers."""
    kept, scores = getattr(model, "cam_layer_names", None), {}
    try:
        for layer in layers:
            model.cam_layer_names = [layer]
            cams = np.concatenate([_cams_and_logits(model, model_name, x[i:i + 16], "gradcam", 1)[0]
                                   for i in range(0, len(x), 16)])
            scores[layer] = float(np.mean([localization_scores(cam, mask, tolerance=tolerance)["pointing_game"]
                                           for cam, mask in zip(cams, masks)]))
    finally:
        model.cam_layer_names = kept
    return max(layers, key=scores.get), scores   # max keeps the first of equals: the depth rule's on a tie


class _TargetProbability(_HemorrhageTarget):
    """The target class's probability (sigmoid of the signed logit), so faithfulness deltas are bounded."""

    def __call__(self, model_output):
        return torch.sigmoid(super().__call__(model_output))


def faithfulness(model, model_name, x, cams, method) -> dict:
    """Per map: ROAD combined (higher = faithful) and probability drop under input x map (lower = better)."""
    with torch.inference_mode(False):
        x = x.detach().to(next(model.parameters()).device, torch.float32).clone()
    cams = np.asarray(cams, dtype=np.float32)
    targets = [_TargetProbability(1)] * len(x)
    model.eval()
    with exclusive(model):   # its forwards would fire a concurrent CAM's hooks on the same model
        with torch.random.fork_rng(devices=[]):   # ROAD's imputer adds noise: the same score on every run
            torch.manual_seed(0)
            road = ROADCombined()(x, cams, targets, model)
        change = CamMultImageConfidenceChange()(x, cams, targets, model)
    return {"model": model_name, "method": method, "road": np.ravel(road).astype(np.float32),
            "confidence_drop": -np.ravel(change).astype(np.float32)}


def phantom_cases(n: int, size: int = 256, seed: int = 0, difficulty=(0.2, 0.8)) -> list:
    """n hemorrhagic phantom slices with masks, cycling the five subtypes (fixed seed)."""
    rng = np.random.default_rng(seed)
    return [generate_slice(rng, size, SUBTYPES[i % len(SUBTYPES)], float(rng.uniform(*difficulty)))
            for i in range(n)]


def phantom_images(cases: list, framing: str = "none",
                   windows: str = "brain") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Phantom cases rendered through the run's windows, with their bleed masks, framed (core.io.framing) as the
    run's own slices were, so a model is scored on slices like those it learned from."""
    pairs = [frame(render(c.hu, windows), framing, c.mask) for c in cases]
    return [image for image, _ in pairs], [mask for _, mask in pairs]


def score_localization(loaded, images: list[np.ndarray], masks: list[np.ndarray], method: str,
                       with_faithfulness: bool = False, tolerance: float = 0.0, batch_size: int = 16):
    """Mean localization (and faithfulness) scores of one model and method, with probabilities and maps."""
    name, rows, probs, maps, faith = loaded.card["model"], [], [], [], {"road": [], "confidence_drop": []}
    for i in range(0, len(images), batch_size):
        x = _model_input(loaded, images[i:i + batch_size])
        cams, logits = _cams_and_logits(loaded.model, name, x, method, 1)
        probs += list(1 / (1 + np.exp(-logits)))
        for cam, image, mask in zip(cams, images[i:i + batch_size], masks[i:i + batch_size]):
            maps.append(to_original(cam, image.shape[:2]))
            rows.append({**localization_scores(maps[-1], mask, tolerance=tolerance), "tolerance_px": tolerance})
        if with_faithfulness:
            scores = faithfulness(loaded.model, name, x, cams, method)
            for key in faith:
                faith[key].extend(scores[key])
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    means.update({k: float(np.mean(v)) for k, v in faith.items() if v})
    return {**means, "n": len(rows)}, probs, maps


class _SlicesAsBatch(torch.nn.Module):
    """One stack as a batch of K slices, (K, 3, H, W) -> centre logit (1, 1): K maps via the 2-D path."""

    def __init__(self, model: SequenceClassifier):
        super().__init__()
        self.model = model

    def forward(self, slices):
        return self.model(slices.unsqueeze(0))


def sequence_cam(model: SequenceClassifier, stack: torch.Tensor, method: str = "gradcam",
                 target: int = 1) -> np.ndarray:
    """(K, H, W) float32 maps in [0, 1] of a (1, K, 3, H, W) stack's evidence for the centre slice's logit."""
    if stack.ndim != 5 or len(stack) != 1:
        raise ValueError(f"sequence_cam needs one (1, K, 3, H, W) stack, got shape {tuple(stack.shape)}")
    if method not in METHODS or method == "scorecam":
        raise ValueError(f"{method!r} is not a gradient CAM method; choose from "
                         f"{', '.join(m for m in METHODS if m != 'scorecam')}")
    _check_method(method, target)
    slices = _autograd_input(model, stack[0])
    model.eval()
    return _run_cam(model, _SlicesAsBatch(model), slices, method, target, f"a {model.kind} stack", 1,
                    rnn=True)[0]
