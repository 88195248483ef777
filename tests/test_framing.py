"""Head framing (core.io.framing): crop to the head, blank the table and letters, the same in training,
evaluation and upload; the split never depends on it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import train
from core.data.splits import prepare
from core.engine.config import TrainConfig
from core.io.framing import frame, head_region
from core.run import _check_split


def synthetic_slice() -> tuple[np.ndarray, np.ndarray]:
    """A 400 x 300 slice: a head (bright skull ring around grey brain) off centre, a thin table arc below it, a
    letter in the corner; and a bleed mask inside the brain."""
    yy, xx = np.mgrid[:400, :300]
    r = np.hypot(yy - 150, xx - 170)
    image = np.where(r < 90, 110, np.where(r < 100, 200, 0))
    table = np.abs(np.hypot(yy - 150, xx - 170) - 150) < 2
    image[table & (yy > 260)] = 250
    image[10:22, 10:18] = 255                        # a figure letter
    mask = np.hypot(yy - 140, xx - 160) < 20
    return image.astype(np.uint8), mask


def test_head_framing_crops_to_the_head_and_blanks_table_and_letters():
    image, mask = synthetic_slice()
    framed, framed_mask = frame(image, "head", mask)
    # The head spans rows 50-250, columns 70-270; 2% of the long side (8 px) of margin, 1% more of edge.
    assert framed.shape == framed_mask.shape
    assert 200 <= framed.shape[0] <= 230 and 200 <= framed.shape[1] <= 230
    assert (framed == 200).sum() == (image == 200).sum(), "the whole skull survives"
    assert (framed == 250).sum() == 0 and (framed == 255).sum() == 0, "table and letter are blanked"
    assert (framed == 110).sum() > 0.5 * (image == 110).sum()
    assert framed_mask.sum() == mask.sum(), "the bleed mask moves with the image"


def test_no_framing_and_no_head_leave_the_slice_as_it_is():
    image, mask = synthetic_slice()
    kept, kept_mask = frame(image, "none", mask)
    assert kept is image and kept_mask is mask
    black = np.zeros((64, 64), np.uint8)
    assert head_region(black) is None and frame(black, "head")[0] is black
    with pytest.raises(ValueError, match="framing"):
        frame(image, "tight")


def test_framing_changes_the_images_but_never_the_split(tiny_phantoms):
    plain, framed = prepare(tiny_phantoms, 32, seed=0), prepare(tiny_phantoms, 32, seed=0, framing="head")
    assert plain.manifest[["sha256", "split"]].equals(framed.manifest[["sha256", "split"]])
    assert framed.framing == "head" and plain.framing == "none"
    # Framed, the head fills the square: fewer black pixels than in the whole field of view.
    assert (framed.images == 0).mean() < 0.8 * (plain.images == 0).mean()


def test_a_run_resumes_only_with_the_framing_it_was_trained_with(tmp_path):
    root = tmp_path / "set"
    for label in ("hemorrhage", "normal"):
        (root / label).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(
            root / ("hemorrhage" if i % 2 else "normal") / f"{i}.png")
    run = tmp_path / "run"
    run.mkdir()
    _check_split(prepare(root, 16, framing="head"), run, resume=False)
    (run / "run.json").write_text(json.dumps({"data_root": str(root), "framing": "head"}))
    _check_split(prepare(root, 16, framing="head"), run, resume=True)
    with pytest.raises(SystemExit, match="--framing head"):
        _check_split(prepare(root, 16), run, resume=True)


def test_real_data_is_framed_by_default_and_phantoms_are_not():
    preset = train.demo_preset("cpu")
    for argv, expected in (([], "none"), (["--data", "x"], "head"), (["--data", "x", "--framing", "none"], "none")):
        args = train.parse_args(argv)
        cfg: TrainConfig = train.resolve_config(args, preset, ["resnet18"])
        assert cfg.framing == expected, argv


def test_darshil_slices_lose_the_table_and_kaggle_crops_stay_whole(shared_data):
    data = shared_data
    darshil = sorted((data / "ct_series_darshil" / "data" / "Training Data" / "Without Hemorrhage").glob("*.jpg"))
    for path in darshil[::40]:
        image = np.asarray(Image.open(path).convert("L"))
        framed = frame(image, "head")[0]
        # The table's arc lies below the head: framed, the bottom rows hold no bright bone-like arc.
        assert framed.shape[0] < 0.95 * image.shape[0], path.name
        assert (framed[-3:] > 200).sum() < 5, path.name
    for path in sorted((data / "head_ct_kaggle" / "head_ct").glob("1[0-9]0.png")):
        image = np.asarray(Image.open(path).convert("L"))
        framed = frame(image, "head")[0]
        assert framed.size > 0.8 * image.size, path.name   # already a tight crop of the head
