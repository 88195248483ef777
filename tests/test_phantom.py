"""Synthetic head CT phantoms: dataset files, HU per tissue, the difficulty knob and slice stacks."""
import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from core.io.imaging import MASK_COLOUR
from core.phantom import generate as phantom
from core.phantom.generate import FOV_MM, LABEL_COLUMNS, TISSUES
from core.subtypes import SUBTYPES
from core.phantom.scanner import DEFAULT, OTHER, Scanner

ROOT = Path(__file__).resolve().parents[1]
T = {name: code for code, name in enumerate(TISSUES)}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_cli_writes_a_complete_reproducible_dataset(tmp_path):
    # 10 stacks of 4: five hemorrhagic stacks, one per subtype.
    cli = subprocess.run([sys.executable, "-m", "core.phantom", "--out", str(tmp_path / "a"), "--n", "40",
                          "--size", "64", "--seed", "7", "--stack-size", "4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "40 slices" in cli.stdout and "slices/s" in cli.stdout
    table = pd.read_csv(tmp_path / "a" / "labels.csv", keep_default_na=False)
    assert list(table.columns) == LABEL_COLUMNS
    assert len(table) == 40 and table.id.is_unique
    assert set(table.label) == {0, 1}
    assert set(table[table.label == 1].subtype) == set(SUBTYPES)
    assert (table[table.label == 0].subtype == "").all() and (table[table.label == 0].bleed_area_mm2 == 0).all()
    assert np.allclose(table.pixel_spacing_mm, FOV_MM / 64)
    assert table.id.iloc[0] == "ph000000_s00" and table.stack_id.nunique() == 10
    for row in table.itertuples():
        image = Image.open(tmp_path / "a" / ("hemorrhage" if row.label else "normal") / f"{row.id}.png")
        mask = np.asarray(Image.open(tmp_path / "a" / "masks" / f"{row.id}.png"))
        assert image.mode == "L" and image.size == (64, 64)
        assert set(np.unique(mask)) <= {0, 255} and (mask.any() == bool(row.label))
        assert row.bleed_area_mm2 == pytest.approx((mask > 0).sum() * (FOV_MM / 64) ** 2, abs=0.01)
    assert not list((tmp_path / "a").rglob("*.partial"))

    # The same seed in-process gives the same bytes; another seed differs.
    phantom.write_dataset(tmp_path / "b", 40, size=64, seed=7, stack_size=4)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    phantom.write_dataset(tmp_path / "b", 40, size=64, seed=8, stack_size=4)
    assert _hashes(tmp_path / "b") != _hashes(tmp_path / "a")
    # Rewriting a folder leaves each slice in exactly one class folder, as labels.csv says.
    table = pd.read_csv(tmp_path / "b" / "labels.csv")
    on_disk = {f.stem: f.parent.name for f in (tmp_path / "b").glob("[hn]*/*.png")}
    assert on_disk == {r.id: "hemorrhage" if r.label else "normal" for r in table.itertuples()}


@pytest.mark.parametrize("seed", range(3))
def test_hu_per_tissue_is_in_the_clinical_ranges(seed):
    rng = np.random.default_rng(seed)
    normal = phantom.generate_slice(rng, 256, None, hard_negatives=())
    hu, tissue = normal.hu, normal.tissue
    assert np.median(hu[np.isin(tissue, [T["skull"], T["diploe"]])]) == pytest.approx(1250, abs=550)
    assert np.median(hu[tissue == T["diploe"]]) < np.median(hu[tissue == T["skull"]])
    assert 20 <= np.median(hu[np.isin(tissue, [T["grey"], T["white"]])]) <= 45
    assert np.median(hu[tissue == T["grey"]]) > np.median(hu[tissue == T["white"]])
    assert -5 <= np.median(hu[tissue == T["ventricle"]]) <= 15
    assert np.median(hu[tissue == T["air"]]) < -900
    assert 30 <= np.median(hu[tissue == T["scalp"]]) <= 50
    assert 1.5 <= np.std(hu[tissue == T["white"]]) <= 7  # noise of a few HU on top of the blur
    for subtype in SUBTYPES:
        bleed = phantom.generate_slice(rng, 256, subtype, difficulty=0.5)
        assert bleed.label == 1 and bleed.subtype == subtype
        assert 50 <= np.median(bleed.hu[bleed.mask]) <= 90, subtype


def test_hard_negatives_are_dense_but_not_blood():
    s = phantom.generate_slice(np.random.default_rng(0), 128, None, hard_negatives=phantom.HARD_NEGATIVES)
    assert s.label == 0 and not s.mask.any() and s.subtype == ""
    assert np.median(s.hu[s.tissue == T["calcification"]]) > 100
    assert np.median(s.hu[s.tissue == T["bone"]]) > 100


def test_every_subtype_shows_even_when_small_and_faint():
    for seed in range(4):
        for subtype in SUBTYPES:
            s = phantom.generate_slice(np.random.default_rng(seed), 64, subtype, difficulty=1.0)
            assert s.label == 1 and s.mask.sum() >= 1, (seed, subtype)
            assert s.bleed_area_mm2 == pytest.approx(s.mask.sum() * s.pixel_spacing_mm ** 2)


def test_difficulty_shrinks_bleeds_and_lowers_their_contrast():
    def stats(difficulty):
        slices = [phantom.generate_slice(np.random.default_rng(seed), 128, subtype, difficulty)
                  for seed in range(3) for subtype in SUBTYPES]
        return np.mean([s.bleed_area_mm2 for s in slices]), np.mean([np.median(s.hu[s.mask]) for s in slices])

    (easy_area, easy_hu), (hard_area, hard_hu) = stats(0.1), stats(0.9)
    assert hard_area < 0.6 * easy_area
    assert hard_hu < easy_hu - 10


def test_stack_has_consistent_per_slice_labels_and_smooth_anatomy():
    rng = np.random.default_rng(3)
    stack = phantom.generate_stack(rng, 128, k=5, subtype="subdural", difficulty=0.3, stack_id=12)
    other = phantom.generate_stack(rng, 128, k=5, subtype=None, stack_id=13)
    assert [s.slice_index for s in stack] == list(range(5)) and {s.stack_id for s in stack} == {12}
    labels = [s.label for s in stack]
    assert labels == [int(s.mask.any()) for s in stack]
    assert all(s.subtype == ("subdural" if s.label else "") for s in stack)
    bleeding = np.flatnonzero(labels)
    assert bleeding.size and (np.diff(bleeding) == 1).all()  # one contiguous run
    assert not any(s.label for s in other)

    def distance(a, b):
        return np.abs(phantom.render(a.hu).astype(float) - phantom.render(b.hu)).mean()

    adjacent = max(distance(a, b) for a, b in zip(stack, stack[1:]))
    across = min(distance(a, b) for a in stack for b in other)
    assert adjacent < across


def test_unknown_subtype_is_refused():
    with pytest.raises(ValueError, match="unknown subtype"):
        phantom.generate_slice(np.random.default_rng(0), 64, "chronic")


def test_grid_preview(tmp_path):
    phantom.write_grid(tmp_path / "grid.png", size=64)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.mode == "RGB" and grid.width == 4 * 64
    pixels = np.asarray(grid)
    assert (pixels == MASK_COLOUR).all(axis=-1).any()  # bleed outlines, in the colour every page uses


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_twins_differ_only_by_the_bleed(subtype):
    with_bleed, without = phantom.generate_twins(np.random.default_rng(5), 128, 1, subtype, 0.1)
    (bleed,), (twin,) = with_bleed, without
    assert bleed.label == 1 and bleed.subtype == subtype and bleed.mask.any()
    assert twin.label == 0 and twin.subtype == "" and not twin.mask.any() and twin.bleed_area_mm2 == 0
    changed = np.abs(bleed.hu - twin.hu) > 5  # HU; the noise is the same in both
    near = ndimage.binary_dilation(bleed.mask, iterations=4)   # blur and partial volume spread the edge
    assert changed[bleed.mask].mean() > 0.5
    assert changed[~near].mean() < 0.01, "the twin must show the same head: only the bleed may differ"


def test_a_twin_dataset_pairs_every_patient_with_and_without_its_bleed(tmp_path):
    table = phantom.write_dataset(tmp_path / "t", 20, size=64, seed=2, stack_size=1, twins=True)
    assert len(table) == 20 and table.label.sum() == 10 and table.id.is_unique
    assert table.stack_id.nunique() == 10
    assert {tuple(sorted(group)) for _, group in table.groupby("stack_id").label} == {(0, 1)}
    assert set(table[table.label == 1].subtype) == set(SUBTYPES)
    normal = Image.open(tmp_path / "t" / "normal" / "ph000003_t00.png")
    assert normal.size == (64, 64) and (tmp_path / "t" / "hemorrhage" / "ph000003_s00.png").is_file()
    again = phantom.write_dataset(tmp_path / "u", 20, size=64, seed=2, stack_size=1, twins=True)
    assert _hashes(tmp_path / "t") == _hashes(tmp_path / "u") and again.equals(table)


# --- scanners (core.phantom.scanner) --------------------------------------------------------------------------

# sha256 over (relative path, bytes) of every file write_dataset wrote before scanners existed, on these settings.
TODAY = {(12, 64, 5, 3, False): "8cd58b8b57815bd1903bc46d30d16a651209a65cec98c4321e432f5f14b1d88b",
         (12, 64, 6, 1, True): "d64bffa2efd9f5bfcd430753355fa441d484df604787b310fe66d8fdbb2a7c13"}


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            digest.update(str(f.relative_to(folder)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("settings", TODAY)
def test_the_default_scanner_writes_the_same_phantoms_as_before_bit_for_bit(settings, tmp_path):
    n, size, seed, stack_size, twins = settings
    phantom.write_dataset(tmp_path / "a", n, size, seed, stack_size, twins=twins)
    phantom.write_dataset(tmp_path / "b", n, size, seed, stack_size, twins=twins, scanner=Scanner())
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") == TODAY[settings]


def _scanned(scanner: Scanner, seed: int) -> phantom.PhantomSlice:
    """The same head (one seed) as `scanner` images it, at 128 px."""
    return phantom.generate_slice(np.random.default_rng(seed), 128, None, 0.2, hard_negatives=(), scanner=scanner)


def _white_matter_noise(s) -> tuple[float, float]:
    """(std, neighbour correlation) of the HU inside white matter, away from its edges: the noise and its grain."""
    inside = ndimage.binary_erosion(s.tissue == T["white"], iterations=3)
    r = s.hu - np.median(s.hu[inside])
    pairs = inside[:, 1:] & inside[:, :-1]
    return float(r[inside].std()), float((r[:, 1:] * r[:, :-1])[pairs].mean() / r[inside].var())


def _edge_strength(s) -> float:
    """Mean HU gradient inside the head's brain (ventricle, sulcus and grey-white edges), away from the skull."""
    brain = np.isin(s.tissue, [T["grey"], T["white"], T["csf"], T["ventricle"], T["falx"]])
    inside = ndimage.binary_erosion(ndimage.binary_fill_holes(brain), iterations=4)
    return float(np.hypot(*np.gradient(s.hu))[inside].mean())


@pytest.mark.parametrize("seed", range(2))
def test_the_other_scanner_images_the_same_head_noisier_coarser_softer_and_smaller(seed):
    ours, theirs = _scanned(DEFAULT, seed), _scanned(OTHER, seed)
    (noise, grain), (other_noise, other_grain) = _white_matter_noise(ours), _white_matter_noise(theirs)
    assert other_noise == pytest.approx(OTHER.noise * noise, rel=0.25)
    assert grain < 0.2 and other_grain > 0.5    # white noise against correlated, coarser texture
    # A wider field of view: the same head covers (FOV_MM / fov)^2 of the pixels, at a wider spacing.
    head = (theirs.hu > -500).sum() / (ours.hu > -500).sum()
    assert head == pytest.approx((FOV_MM / OTHER.fov_mm) ** 2, rel=0.03)
    assert theirs.pixel_spacing_mm == OTHER.fov_mm / 128 > ours.pixel_spacing_mm
    # Without noise: the smoother kernel and thick slices soften edges; a sharp kernel enhances them.
    quiet = {name: _edge_strength(_scanned(replace(s, noise=0), seed))
             for name, s in (("ours", DEFAULT), ("theirs", OTHER), ("sharp", Scanner(sharpen=1.0)))}
    assert quiet["theirs"] < 0.9 * quiet["ours"] and quiet["sharp"] > 1.1 * quiet["ours"]


def test_the_other_scanner_exports_through_its_own_window(tmp_path):
    assert phantom.render(np.float32([[35, -15, 85]]), brain=OTHER.window).tolist() == [[128, 0, 255]]
    assert phantom.render(np.float32([[35, -15, 85]])).tolist() == [[112, 0, 255]]   # brain 40/80
    phantom.main(["--out", str(tmp_path / "o"), "--n", "4", "--size", "64", "--seed", "7", "--scanner", OTHER.name])
    phantom.write_dataset(tmp_path / "d", 4, size=64, seed=7, stack_size=5)
    table = pd.read_csv(tmp_path / "o" / "labels.csv")
    assert np.allclose(table.pixel_spacing_mm, OTHER.fov_mm / 64)
    assert table.label.tolist() == pd.read_csv(tmp_path / "d" / "labels.csv").label.tolist()   # the same heads
    assert _hashes(tmp_path / "o") != _hashes(tmp_path / "d")


def test_a_scanner_out_of_range_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^scanner 'x': out of range: noise -1, fov_mm 0$"):
        Scanner(name="x", noise=-1, fov_mm=0)
