"""Decode every image once into a uint8 cache (pad to square, then resize), and the Dataset + augmentation.
Slices are (S, S) grey or (S, S, C) window sets (core.io.imaging.WINDOW_SETS); networks read them channels first."""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import imagehash
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.data.discover import DatasetError
from core.io.framing import frame
from core.io.imaging import WINDOW_SETS, ScanError, display_grey, load_scan_with_digest

RESIZE_POLICY = "pad_to_square_then_resize_bilinear"
HASH_SIZE = 64  # near-duplicate hashes come from this fixed size, so the split never depends on --image-size


@dataclass
class DecodedSet:
    images: np.ndarray                 # (N, S, S) or (N, S, S, C) uint8, rows aligned with `paths` minus failures
    paths: list[str]
    sha256: list[str]
    phash: np.ndarray                  # (N,) uint64 perceptual hashes
    dhash: np.ndarray                  # (N,) uint64 difference hashes
    series_uid: list[str | None]
    slice_position: list[float | None]   # DICOM: mm along the slice normal (orders a series)
    instance_number: list[int | None]
    patient_key: list[str | None]        # DICOM: one-way key of the patient (core.io.imaging.Scan.patient_key)
    failed: dict[str, str] = field(default_factory=dict)   # path -> one-line reason


def pad_to_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = image
    return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pad_to_square(image)).resize((size, size), Image.Resampling.BILINEAR))


def framed_square(image: np.ndarray, size: int, framing: str = "none", *masks: np.ndarray) -> tuple[np.ndarray, ...]:
    """A slice as decode_images caches it, and any masks aligned with it the same way: framed together, padded to
    square, resized; a mask keeps the pixels it covers at least half after the (bilinear) resize."""
    framed = frame(image, framing, *masks)
    return (resize_square(framed[0], size),
            *(resize_square(np.asarray(m, bool).astype(np.uint8) * 255, size) >= 128 for m in framed[1:]))


def _hash64(h: imagehash.ImageHash) -> np.uint64:
    return np.uint64(int("".join("1" if b else "0" for b in h.hash.flatten()), 2))


def _decode_one(path: str, size: int, framing: str, windows: str):
    scan, digest = load_scan_with_digest(path, windows)
    # Hashes come from the unframed brain window: the split (near-duplicate groups) depends on neither the framing
    # nor the windows.
    small = Image.fromarray(pad_to_square(display_grey(scan.image))).resize((HASH_SIZE, HASH_SIZE),
                                                                            Image.Resampling.BILINEAR)
    return (framed_square(scan.image, size, framing)[0],
            digest, _hash64(imagehash.phash(small)), _hash64(imagehash.dhash(small)),
            scan.series_uid, scan.slice_position, scan.instance_number, scan.patient_key, scan.is_hu)


def decode_images(paths: list[str], size: int, workers: int | None = None, framing: str = "none",
                  windows: str = "brain") -> DecodedSet:
    """Decode each file once on threads (decoders release the GIL), through the `windows` set, framed
    (core.io.framing); unreadable files go to `failed`. Several windows need HU: a readable file without them
    (an 8-bit PNG, a non-CT DICOM) stops the whole set with DatasetError, never a silent grey copy."""
    def safe(path):
        try:
            return _decode_one(path, size, framing, windows)
        except (ScanError, OSError) as err:
            return str(err).splitlines()[0] if str(err) else type(err).__name__

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(safe, paths))
    ok = [(p, r) for p, r in zip(paths, results) if not isinstance(r, str)]
    channels = len(WINDOW_SETS[windows])
    no_hu = next((p for p, r in ok if not r[8]), None) if channels > 1 else None
    if no_hu is not None:
        raise DatasetError(f"windows {windows} need CT in Hounsfield units (DICOM or NIfTI), and {no_hu} holds "
                           "none; train such data with --windows brain.")
    empty = np.zeros((0, size, size) + ((channels,) if channels > 1 else ()), np.uint8)
    images = np.stack([r[0] for _, r in ok]) if ok else empty
    return DecodedSet(
        images=images, paths=[p for p, _ in ok], sha256=[r[1] for _, r in ok],
        phash=np.array([r[2] for _, r in ok], dtype=np.uint64),
        dhash=np.array([r[3] for _, r in ok], dtype=np.uint64),
        series_uid=[r[4] for _, r in ok],
        slice_position=[r[5] for _, r in ok],
        instance_number=[r[6] for _, r in ok],
        patient_key=[r[7] for _, r in ok],
        failed={p: r for p, r in zip(paths, results) if isinstance(r, str)})


def channels_first(images: torch.Tensor) -> torch.Tensor:
    """A view (no copy) of cached slices with the channel axis where networks read it: (N, S, S) grey ->
    (N, 1, S, S), (N, S, S, C) windows -> (N, C, S, S)."""
    return images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)


class SliceDataset(torch.utils.data.Dataset):
    """uint8 slices (C, S, S) or `rows` stacks (K, C, S, S) with float labels; augmented per batch on the device.
    With `masks` ((N, S, S) bool, one per item; all-False: none known), a batch carries them and whether each has
    one, for a loss on where the evidence lies (core.engine.attention)."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels, device: str | torch.device = "cpu",
                 rows: np.ndarray | None = None, masks: np.ndarray | None = None):
        self.images = channels_first(torch.as_tensor(images).to(device))
        # Host-side indices: an integer picks a view, no gather kernel per item on a GPU-resident cache.
        self.rows = np.arange(len(self.images)) if rows is None else np.asarray(rows)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32).to(device)
        if len(self.labels) != len(self.rows):
            raise ValueError(f"{len(self.labels)} labels for {len(self.rows)} items")
        self.masks = None if masks is None else torch.as_tensor(np.asarray(masks, bool)).to(device)
        if self.masks is not None and len(self.masks) != len(self.rows):
            raise ValueError(f"{len(self.masks)} masks for {len(self.rows)} items")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        item = self.images[self.rows[i]], self.labels[i]
        return item if self.masks is None else (*item, self.masks[i], self.masks[i].any())

    def __getitems__(self, indices: list[int]):
        """A whole batch in one gather (one kernel on a GPU cache); pair with `collate_fn=SliceDataset.collate`."""
        rows = torch.as_tensor(self.rows[np.asarray(indices)], device=self.images.device)
        picked = torch.as_tensor(indices, device=self.labels.device)
        if self.masks is None:
            return self.images[rows], self.labels[picked]
        masks = self.masks[picked]
        return self.images[rows], self.labels[picked], masks, masks.flatten(1).any(1)

    @staticmethod
    def collate(batch):
        return batch


def _normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    """[0, 1] (B,[K,]C,S,S) -> ImageNet-normalised (B,[K,]3,S,S), grey (C = 1) repeated."""
    x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x - m) / s


def to_model_input(batch_uint8: torch.Tensor, mean, std, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B,[K,]C,S,S) -> normalised float (B,[K,]3,S,S), grey (C = 1) repeated; augmented first given a
    generator (every channel of an image alike)."""
    x = batch_uint8.float().div_(255.0)
    if generator is not None:
        x = augment_batch(x.flatten(1, -3), generator).view_as(x)
    return _normalised(x, mean, std)


def to_model_input_and_masks(batch_uint8: torch.Tensor, masks: torch.Tensor, mean, std,
                             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices (B,C,S,S) as to_model_input, and their (B,S,S) masks moved by the same rotation, zoom and flip."""
    x = torch.cat([batch_uint8.float().div_(255.0), masks[:, None].float()], 1)
    if generator is not None:
        x = augment_batch(x, generator, geometric_only=1)
    return _normalised(x[:, :-1], mean, std), x[:, -1] > 0.5


def augment_batch(x: torch.Tensor, generator: torch.Generator, max_degrees: float = 15.0,
                  zoom: tuple[float, float] = (0.9, 1.1), jitter: float = 0.1, geometric_only: int = 0) -> torch.Tensor:
    """Rotation, zoom, flip and brightness/contrast jitter of a (B,C,S,S) [0,1] batch, one affine grid per batch;
    the last `geometric_only` channels (masks) are moved alike but not jittered."""
    b = x.shape[0]
    rand = torch.rand(b, 5, generator=generator, device=generator.device).to(x.device)
    angle = (rand[:, 0] * 2 - 1) * math.radians(max_degrees)
    scale = 1.0 / (zoom[0] + rand[:, 1] * (zoom[1] - zoom[0]))
    flip = torch.where(rand[:, 2] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin * flip, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (1 + (rand[:, 3] * 2 - 1) * jitter).view(b, 1, 1, 1)
    brightness = ((rand[:, 4] * 2 - 1) * jitter).view(b, 1, 1, 1)
    jittered = out[:, :out.shape[1] - geometric_only]
    jittered.mul_(contrast).add_(brightness).clamp_(0.0, 1.0)
    return out
