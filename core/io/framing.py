"""Head framing: crop a slice to its head and blank what lies outside it (the table, figure letters, arrows).

Public sets differ in framing: Kaggle's slices are tight crops of the head, Darshil's are the whole 512 px field
of view with the table below. A model trained on one learns the other's scale and margins as a shortcut; framing
both the same way removes it (docs/NOTES.md, "Head framing"). The heuristic, on the windowed uint8 slice: pixels
above a tenth of full scale (air and the dark background are below it), closed by a square of 1% of the side,
holes filled, opened by a square of 2% so that thin table arcs and text go; the largest connected component, when
it covers at least 2% of the slice, is the head: everything else is zeroed and the slice cropped to its box with a
2% margin. No head found: unchanged.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from core.io.imaging import display_grey

FRAMINGS = ("none", "head")
_THRESHOLD = 0.1 * 255
_MIN_AREA = 0.02
_MARGIN = 0.02
_WORK_SIDE = 256


def head_region(image: np.ndarray) -> np.ndarray | None:
    """The head's mask (filled largest bright component) of a grey uint8 slice, or None when there is none;
    found on a copy of at most ~2 x _WORK_SIDE px (the mask needs no finer detail) and scaled back."""
    step = max(1, max(image.shape[:2]) // _WORK_SIDE)
    small = image[::step, ::step]
    radius = max(1, round(min(small.shape) / 100))
    square = lambda r: np.ones((2 * r + 1,) * 2, bool)
    # Closing joins a skull-base slice's fragments, filling makes the head solid; an opening twice as wide then
    # removes what stays thin when filled: the table's arc, letters, arrows.
    solid = ndimage.binary_fill_holes(ndimage.binary_closing(small > _THRESHOLD, square(radius)))
    solid = ndimage.binary_opening(solid, square(2 * radius))
    labels, n = ndimage.label(solid)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < _MIN_AREA * small.size:
        return None
    head = ndimage.binary_dilation(labels == np.argmax(sizes) + 1, iterations=radius)   # the edge the opening shaved
    return np.repeat(np.repeat(head, step, axis=0), step, axis=1)[:image.shape[0], :image.shape[1]]


def frame(image: np.ndarray, framing: str, *aligned: np.ndarray) -> tuple[np.ndarray, ...]:
    """(image, *aligned) framed: "none" returns them as they are; "head" blanks the image outside its head and
    crops it and every aligned array (masks of the same shape) to the head's box. An (H, W, C) window set is framed
    by its brain window, every channel alike."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing {framing!r} is not one of {', '.join(FRAMINGS)}")
    head = head_region(display_grey(image)) if framing == "head" else None
    if head is None:
        return (image, *aligned)
    rows, cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    margin = round(_MARGIN * max(image.shape[:2]))
    top, bottom = max(0, rows[0] - margin), min(image.shape[0], rows[-1] + 1 + margin)
    left, right = max(0, cols[0] - margin), min(image.shape[1], cols[-1] + 1 + margin)
    blanked = np.where(head.reshape(head.shape + (1,) * (image.ndim - 2)), image, np.zeros((), image.dtype))
    return tuple(a[top:bottom, left:right] for a in (blanked, *aligned))


def framing_of(card_or_run: dict) -> str:
    """The framing a card or run.json records; folders written before framing existed were not framed."""
    return card_or_run.get("framing", "none")
