"""Hand-crafted features of brain-window slices for the classical baselines (docs/NOTES.md, "Hand-crafted features").
A slice of several windows (S, S, C) is read through its first, the brain window (core.io.imaging.display_grey)."""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern

from core.io.imaging import display_grey

HIST_BINS = 32
ZONE_EDGES = (0.0, 0.1, 0.2, 0.35, 1.0)      # depth below the head's surface / the deepest point's depth
ZONE_BINS = 16
GLCM_LEVELS = 32                               # grey levels of the head (air is one more, dropped)
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
LBP_SCALES = ((8, 1.0), (8, 2.0))              # (points, radius); "uniform" gives points + 2 codes
HOG_SIZE, HOG_CELL, HOG_BLOCK, HOG_ORIENTATIONS = 64, 32, 2, 9

FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"hist_bin_{i:02d}" for i in range(HIST_BINS))
    + tuple(f"zone{z}_bin_{i:02d}" for z in range(len(ZONE_EDGES) - 1) for i in range(ZONE_BINS))
    + tuple(f"glcm_{prop}_d{d}" for prop in GLCM_PROPS for d in GLCM_DISTANCES)
    + tuple(f"lbp_uniform_r{r:g}_{code:02d}" for p, r in LBP_SCALES for code in range(p + 2))
    + tuple(f"hog_{i:03d}" for i in range(
        (HOG_SIZE // HOG_CELL - HOG_BLOCK + 1) ** 2 * HOG_BLOCK ** 2 * HOG_ORIENTATIONS))
)
FEATURE_CONFIG = {"hist_bins": HIST_BINS, "zone_edges": ZONE_EDGES, "zone_bins": ZONE_BINS,
                  "glcm_levels": GLCM_LEVELS, "glcm_distances": GLCM_DISTANCES,
                  "glcm_angles": "0, 45, 90, 135 degrees, averaged", "glcm_props": GLCM_PROPS,
                  "lbp_scales": LBP_SCALES, "hog": {"size": HOG_SIZE, "pixels_per_cell": HOG_CELL,
                                                    "cells_per_block": HOG_BLOCK, "orientations": HOG_ORIENTATIONS}}


def intensity_histogram(image: np.ndarray) -> np.ndarray:
    """Normalised histogram of head grey levels 1..255 (air excluded): blood renders brighter than brain."""
    head = image[image > 0]
    counts, _ = np.histogram(head, bins=HIST_BINS, range=(1, 256))
    return counts / max(1, head.size)


def depth_zone_histograms(image: np.ndarray) -> np.ndarray:
    """Normalised histograms of four head shells by relative depth: tells bright skull from blood beneath it."""
    head = ndimage.binary_fill_holes(image > 0)
    depth = ndimage.distance_transform_edt(head)[head]
    depth /= max(float(depth.max(initial=0.0)), 1.0)
    n_zones = len(ZONE_EDGES) - 1
    zone = np.clip(np.searchsorted(ZONE_EDGES, depth, side="left") - 1, 0, n_zones - 1)   # (lo, hi]
    level = image[head].astype(np.int64) * ZONE_BINS // 256                            # equal-width bins
    counts = np.bincount(zone * ZONE_BINS + level, minlength=n_zones * ZONE_BINS).reshape(n_zones, ZONE_BINS)
    return (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).ravel()


def glcm_texture(image: np.ndarray) -> np.ndarray:
    """GLCM Haralick properties per distance, averaged over angles; air co-occurrences dropped."""
    levels = np.where(image > 0, 1 + (image.astype(np.uint16) * GLCM_LEVELS) // 256, 0).astype(np.uint8)
    glcm = graycomatrix(levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS + 1, symmetric=True)
    glcm = glcm[1:, 1:].astype(np.float64)
    glcm /= np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        props = np.stack([graycoprops(glcm, prop).mean(axis=1) for prop in GLCM_PROPS])
    # Correlation is undefined (NaN) on a constant region; 0 says "no linear relation" there.
    return np.nan_to_num(props, nan=0.0).ravel()


def lbp_histogram(image: np.ndarray) -> np.ndarray:
    """Rotation-invariant uniform LBP histograms over head pixels at two radii: micro-texture beyond intensity."""
    head = image > 0
    n = max(1, int(head.sum()))
    out = []
    for points, radius in LBP_SCALES:
        codes = local_binary_pattern(image, points, radius, method="uniform").astype(np.int64)
        out.append(np.bincount(codes[head], minlength=points + 2)[:points + 2] / n)
    return np.concatenate(out)


def hog_descriptor(image: np.ndarray) -> np.ndarray:
    """HOG of the slice at HOG_SIZE px, 2x2 cells of 32 px in one block: 36 columns of quadrant shape cues."""
    if image.shape != (HOG_SIZE, HOG_SIZE):
        image = np.asarray(Image.fromarray(image).resize((HOG_SIZE, HOG_SIZE), Image.Resampling.BILINEAR))
    return hog(image, orientations=HOG_ORIENTATIONS, pixels_per_cell=(HOG_CELL, HOG_CELL),
               cells_per_block=(HOG_BLOCK, HOG_BLOCK), block_norm="L2-Hys", feature_vector=True)


def slice_features(image: np.ndarray) -> np.ndarray:
    """Every feature of one (S, S) uint8 slice (or its brain window), in FEATURE_NAMES order."""
    if image.ndim not in (2, 3) or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 slice, got {image.dtype} of shape {image.shape}")
    image = display_grey(image)
    return np.concatenate([intensity_histogram(image), depth_zone_histograms(image), glcm_texture(image),
                           lbp_histogram(image), hog_descriptor(image)]).astype(np.float32)


def extract_features(images: np.ndarray) -> np.ndarray:
    """(N, S, S) or (N, S, S, C) uint8 -> (N, len(FEATURE_NAMES)) float32 (docs/NOTES.md, "Hand-crafted features")."""
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"expected (N, S, S) slices, got shape {images.shape}")
    if len(images) == 0:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.stack([slice_features(image) for image in images])
