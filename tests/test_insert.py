"""Lesion insertion (core.insert): anatomy read from the slice, bleeds where their subtype belongs, at acute-blood
density, reproducible files, and a normal never split from its painted copy. Phantoms give the truth: their
tissue map says where skull, brain and ventricles really are."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.morphology import convex_hull_image

from core.data.splits import prepare, seen_in_training
from core.insert.__main__ import main
from core.io import store as ckpt
from core.insert.anatomy import PARENCHYMA_HU, estimate_intensity, read_anatomy
from core.insert.lesions import BLOOD_HU, DENSITY_HU, paint_bleed
from core.insert.write import copies_per_normal, source_slices, write_painted
from core.phantom.anatomy import BONE, CSF, DIPLOE, EDEMA, FALX, GREY, SKULL, VENTRICLE, WHITE
from core.phantom.generate import render, write_dataset
from core.presets import PAINTED_COPIES
from core.subtypes import SUBTYPES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 256


def normal_phantoms(n: int = 6, seed: int = 3, hard_negatives=None):
    """Normal phantom slices (HU, tissue truth) from central slices of ventricle-bearing heads."""
    from core.phantom.generate import generate_stack
    rng = np.random.default_rng(seed)
    return [generate_stack(rng, SIZE, 5, None, 0.3, i, hard_negatives=hard_negatives)[2] for i in range(n)]


@pytest.fixture(scope="module")
def phantoms():
    return normal_phantoms()


def truth(slice_):
    t = slice_.tissue
    inside = ~np.isin(t, [0, 1, SKULL, DIPLOE])   # air, scalp and bone are outside the intracranial space
    inside = ndimage.binary_fill_holes(~np.isin(t, [0, 1])) & inside
    return {"inside": inside, "ventricle": t == VENTRICLE, "brain": np.isin(t, [GREY, WHITE, EDEMA]),
            "csf": np.isin(t, [CSF, VENTRICLE]), "bone": np.isin(t, [SKULL, DIPLOE, BONE]), "falx": t == FALX}


def test_window_estimate_recovers_the_brain_window(phantoms):
    """A phantom rendered through W80/L40: grey = 255 * HU / 80; the estimate from its histogram comes close."""
    for s in phantoms:
        grey = render(s.hu)
        est = estimate_intensity(grey, truth(s)["inside"])
        assert est.offset == pytest.approx(255 * PARENCHYMA_HU / 80, abs=15)
        assert est.scale == pytest.approx(255 / 80, rel=0.35)


@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_anatomy_masks_match_the_phantom_truth(phantoms, is_hu):
    found = true = 0
    for s in phantoms:
        a = read_anatomy(s.hu if is_hu else render(s.hu), is_hu, FOV_MM_PX if is_hu else None)
        t = truth(s)
        overlap = (a.inside & t["inside"]).sum() / (a.inside | t["inside"]).sum()
        assert overlap > 0.85, "intracranial space"
        assert (a.inside & t["bone"]).sum() == 0
        hits = (a.ventricles & ndimage.binary_dilation(t["csf"])).sum()
        assert hits >= 0.6 * a.ventricles.sum(), "a hypodense patch may pass for a ventricle, never most of it"
        found, true = found + a.ventricles.sum(), true + hits
    assert true >= 0.85 * found > 0


FOV_MM_PX = 230.0 / SIZE


@pytest.mark.parametrize("subtype", SUBTYPES)
@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_each_bleed_lies_where_its_subtype_belongs(phantoms, subtype, is_hu):
    painted_any = 0
    for i, s in enumerate(phantoms):
        values = s.hu if is_hu else render(s.hu)
        a = read_anatomy(values, is_hu, FOV_MM_PX if is_hu else None)
        p = paint_bleed(a, values, subtype, np.random.default_rng(i), 0.2)
        if p is None:
            continue
        painted_any += 1
        t, m = truth(s), p.mask
        assert not (m & ~ndimage.binary_dilation(t["inside"], iterations=2)).any(), "blood beyond the inner table"
        assert not (m & t["bone"]).any()
        if subtype == "intraventricular":
            assert (m & ndimage.binary_dilation(t["ventricle"], iterations=2)).sum() >= 0.9 * m.sum()
        if subtype in ("subdural", "epidural"):
            assert a.depth_mm[m].max() <= 25, "along the inner table"
        if subtype == "intraparenchymal":
            assert (m & (t["brain"] | t["csf"])).sum() >= 0.95 * m.sum() and a.depth_mm[m].min() > 2
        if subtype == "subarachnoid":
            assert a.depth_mm[m].max() <= 20 and (m & ndimage.binary_dilation(t["csf"], iterations=3)).sum() >= 0.7 * m.sum()
        reach = 5 + (round(6 / a.spacing_mm) if subtype == "intraparenchymal" else 0)   # blurred edge, edema rim
        changed = values != p.values
        assert not (changed & ~ndimage.binary_dilation(m, iterations=reach)).any(), "pixels away keep their values"
    assert painted_any >= len(phantoms) // 2


@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_painted_density_is_acute_blood(phantoms, is_hu):
    for i, s in enumerate(phantoms):
        values = s.hu if is_hu else render(s.hu)
        a = read_anatomy(values, is_hu, FOV_MM_PX if is_hu else None)
        p = paint_bleed(a, values, "intraparenchymal", np.random.default_rng(i), 0.0)
        core = ndimage.binary_erosion(p.mask, iterations=2) if p.mask.sum() > 60 else p.mask
        inside = np.median(p.values[core].astype(float))
        if is_hu:
            assert BLOOD_HU[0] - 5 <= inside <= BLOOD_HU[1] + 5
        else:   # the true window maps 50-90 HU to grey 159-255; the estimated one lands close
            assert 255 * BLOOD_HU[0] / 80 - 25 <= inside <= 255


def painted(phantoms, subtype: str, is_hu: bool, difficulties=(0.0, 0.5, 1.0)):
    """Each phantom painted with `subtype` at each difficulty, where it fits: (slice, anatomy, Painted)."""
    for i, s in enumerate(phantoms):
        values = s.hu if is_hu else render(s.hu)
        a = read_anatomy(values, is_hu, FOV_MM_PX if is_hu else None)
        for k, d in enumerate(difficulties):
            p = paint_bleed(a, values, subtype, np.random.default_rng(100 * i + k), d)
            if p is not None:
                yield s, a, p


def across_falx(s) -> np.ndarray:
    """Every pixel's signed distance (px) from the phantom's true falx line."""
    rows, cols = np.nonzero(truth(s)["falx"])
    _, vectors = np.linalg.eigh(np.cov(np.stack([cols, rows]).astype(float)))
    x, y = vectors[:, 1]
    r, c = np.indices(s.tissue.shape)
    return (r - rows.mean()) * x - (c - cols.mean()) * y


def table_profile(s, mask: np.ndarray):
    """The blood along the true inner table, leaving out what lies beside the falx: per 3 degree bin about the
    intracranial centre over the arc it covers, its deepest and shallowest distance from the table (mm), and the
    arc's length along the table (mm)."""
    t, spacing = truth(s), s.pixel_spacing_mm
    depth = ndimage.distance_transform_edt(t["inside"]) * spacing
    rows, cols = np.nonzero(mask & (ndimage.distance_transform_edt(~t["falx"]) * spacing > 5))
    cy, cx = ndimage.center_of_mass(t["inside"])
    bins = ((np.degrees(np.arctan2(rows - cy, cols - cx)) + 180) // 3).astype(int) % 120
    deep, shallow = np.zeros(120), np.full(120, np.inf)
    np.maximum.at(deep, bins, depth[rows, cols])
    np.minimum.at(shallow, bins, depth[rows, cols])
    covered = np.roll(deep > 0, -int(np.argmin(deep > 0)))   # from an empty bin on: the arc is one run
    run = np.flatnonzero(covered)
    arc = (np.arange(run[0], run[-1] + 1) + int(np.argmin(deep > 0))) % 120
    length = len(arc) * np.radians(3) * float(np.hypot(rows - cy, cols - cx).mean()) * spacing
    return deep[arc], shallow[arc], length


@pytest.mark.parametrize("subtype", ["epidural", "subdural"])
@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_extra_axial_blood_lies_against_the_inner_table(phantoms, subtype, is_hu):
    """Epidural and subdural blood fills the intracranial space from the inner table inward, all along its arc
    (its end bins, binned about the centre rather than along the table's normals, aside), and never enters a
    ventricle; a subdural crescent stays on one side of the falx."""
    count = 0
    for s, a, p in painted(phantoms, subtype, is_hu):
        t, m = truth(s), p.mask
        count += 1
        assert not (m & ~ndimage.binary_dilation(t["inside"], iterations=2)).any() and not (m & t["bone"]).any()
        assert not (m & t["ventricle"]).any()
        deep, shallow, _ = table_profile(s, m)
        assert (shallow[1:-1][deep[1:-1] > 0] <= 3).all(), "blood that leaves the inner table (between its ends)"
        labels, n = ndimage.label(m)
        bone_mm = ndimage.distance_transform_edt(~t["bone"]) * s.pixel_spacing_mm
        assert all(bone_mm[labels == k].min() <= 5 for k in range(1, n + 1)), "every part reaches the table"
        if subtype == "subdural":
            side = across_falx(s)[m & (ndimage.distance_transform_edt(~t["falx"]) * s.pixel_spacing_mm > 5)]
            assert (side > 0).all() or (side < 0).all(), "a subdural crescent does not cross the falx"
    assert count >= len(phantoms)


@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_epidural_is_a_short_lens_and_subdural_a_long_thin_crescent(phantoms, is_hu):
    """An epidural covers at most a third of a hemisphere's convexity (60 degrees), thicker in its middle than at
    its ends and thick for its length (at most 10 times longer than thick); a subdural runs over 50 degrees or more,
    at most 20 mm thick, at least 6 times longer than thick."""
    for s, _, p in painted(phantoms, "epidural", is_hu):
        deep, _, length = table_profile(s, p.mask)
        k = max(1, len(deep) // 5)
        middle, ends = np.median(deep[len(deep) // 3: 2 * len(deep) // 3 + 1]), np.median(np.r_[deep[:k], deep[-k:]])
        assert 3 * len(deep) <= 60 and middle >= 1.2 * ends and deep.max() >= length / 10
    for s, _, p in painted(phantoms, "subdural", is_hu):
        deep, _, length = table_profile(s, p.mask)
        assert 3 * len(deep) >= 50 and deep.max() <= 20 and length >= 6 * deep.max()


@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_intraventricular_blood_layers_in_the_dependent_horns(phantoms, is_hu):
    """Blood inside the lateral ventricles, filling each below one horizontal level: their dependent (posterior,
    lower) part."""
    count = 0
    for s, _, p in painted(phantoms, "intraventricular", is_hu):
        t, m = truth(s), p.mask
        count += 1
        assert (m & ndimage.binary_dilation(t["ventricle"])).sum() >= 0.95 * m.sum()
        rows = np.indices(m.shape)[0]
        labels, _ = ndimage.label(t["ventricle"])
        holding = np.isin(labels, np.unique(labels[m & t["ventricle"]])) & (labels > 0)
        below = ndimage.binary_erosion(holding) & (rows > rows[m].min() + 1)
        assert (below & m).sum() >= 0.9 * below.sum(), "a horizontal level, the ventricle full below it"
        assert rows[m].mean() > rows[holding].mean(), "the dependent part"
    assert count >= len(phantoms) // 2


@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_subarachnoid_blood_fills_sulci_and_cisterns_in_thin_lines(is_hu):
    """Without streak artifacts, whose dark bands read as CSF (docs/NOTES.md), the blood lies in the sulci."""
    phantoms = normal_phantoms(hard_negatives=("pineal", "choroid", "skull_base"))
    count = 0
    for s, _, p in painted(phantoms, "subarachnoid", is_hu):
        t, m = truth(s), p.mask
        count += 1
        assert (m & ndimage.binary_dilation(t["csf"] & ~t["ventricle"])).sum() >= 0.85 * m.sum()
        assert (m & t["ventricle"]).sum() <= 0.05 * m.sum()
        half_width = ndimage.distance_transform_edt(m)[m] * s.pixel_spacing_mm
        assert np.percentile(half_width, 90) <= 2.5, "lines in sulci, not blobs"
    assert count >= len(phantoms)


@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_intraparenchymal_blood_is_a_compact_clot_in_one_hemisphere(phantoms, is_hu):
    count = 0
    for s, _, p in painted(phantoms, "intraparenchymal", is_hu):
        t, m = truth(s), p.mask
        count += 1
        assert (m & t["brain"]).sum() >= 0.8 * m.sum() and (m & (t["brain"] | t["csf"])).sum() >= 0.95 * m.sum()
        assert (m & t["ventricle"]).sum() <= 0.01 * m.sum(), "clear of the ventricles but for horn tips too thin"
        assert (ndimage.distance_transform_edt(t["inside"]) * s.pixel_spacing_mm)[m].min() > 2
        side = across_falx(s)[m]
        assert (side > -1).all() or (side < 1).all(), "it does not cross the falx"
        assert m.sum() >= 0.8 * convex_hull_image(m).sum(), "round to oval, lobulated at most"
    assert count >= len(phantoms)


@pytest.mark.parametrize("subtype", SUBTYPES)
@pytest.mark.parametrize("is_hu", [True, False], ids=["HU", "windowed"])
def test_each_subtypes_blood_has_its_density(phantoms, subtype, is_hu):
    """Inside the mask the slice reads the subtype's acute-blood density (HU, or the grey of the window the painter
    estimated), give or take the slice's noise."""
    lo, hi = DENSITY_HU[subtype]
    for _, a, p in painted(phantoms, subtype, is_hu):
        hu = p.values[p.mask] if is_hu else a.intensity.to_hu(p.values[p.mask])
        spread = 3 * a.noise_hu + (0 if is_hu else 1 / a.intensity.scale)
        assert lo <= p.blood_hu <= hi and lo - 1 <= np.median(hu) <= hi + 1
        assert lo - spread <= np.percentile(hu, 5) and np.percentile(hu, 95) <= hi + spread


def phantom_normals(root: Path, n: int = 12) -> Path:
    """A folder of normal phantom slices only (as core.insert's input may be)."""
    write_dataset(root, n, size=128, seed=5, stack_size=3, hemorrhage_fraction=0.0)
    return root


def files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_the_cli(tmp_path, capsys):
    normals = phantom_normals(tmp_path / "normals")
    assert main(["--normals", str(normals), "--out", str(tmp_path / "a"), "--n", "15", "--seed", "7"]) == 0
    assert "12 normal slices, 15 painted copies and 0 real" in capsys.readouterr().out
    write_painted(normals, tmp_path / "b", n=15, seed=7)
    write_painted(normals, tmp_path / "c", n=15, seed=8)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")
    labels = pd.read_csv(tmp_path / "a" / "labels.csv")
    painted = labels[labels["label"] == 1]
    assert len(painted) == 15 and (labels["label"] == 0).sum() == 12
    assert set(painted["subtype"]) <= set(SUBTYPES) and len(set(painted["subtype"])) >= 3
    assert (painted["bleed_area_mm2"] > 0).all()
    for _, row in painted.iterrows():   # every painted slice has its mask
        assert (tmp_path / "a" / "masks" / f"{row['id']}.png").is_file()


def test_cli_refuses_bad_values_with_one_line(tmp_path, capsys):
    assert main(["--normals", str(tmp_path), "--out", str(tmp_path / "o")]) == 2   # no images
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit) as stop:
        main(["--normals", str(tmp_path), "--out", str(tmp_path / "o"), "--subtypes", "chronic"])
    assert stop.value.code == 2


def test_copies_spread_round_robin():
    assert copies_per_normal(4, 6) == [2, 2, 1, 1] and sum(copies_per_normal(7, 30)) == 30


def test_a_normal_and_its_painted_copies_share_one_split(tmp_path):
    normals = phantom_normals(tmp_path / "normals", n=60)
    labels = write_painted(normals, tmp_path / "painted", seed=0, copies=2)
    prepared = prepare(tmp_path / "painted", 64, seed=0)
    manifest = prepared.manifest.merge(labels[["id", "source"]].rename(columns={"id": "stem"}),
                                       left_on=prepared.manifest["id"].map(lambda i: Path(i).name), right_on="stem")
    assert manifest.groupby("source")["split"].nunique().max() == 1
    assert manifest.groupby("source")["label"].agg(["min", "max"]).eq([0, 1]).all(axis=None)


def test_an_evaluation_on_the_source_folder_drops_what_a_painted_run_trained_on(tmp_path):
    """Painted slices are re-encoded files; the run still knows their sources, so core.evaluate on the source
    folder keeps only sources whose every copy sits in the test split."""
    normals = phantom_normals(tmp_path / "normals", n=30)
    write_painted(normals, tmp_path / "painted", seed=0)
    manifest = prepare(tmp_path / "painted", 64, seed=0).manifest
    source = source_slices(normals)
    seen = seen_in_training(manifest)
    tested = set(manifest.loc[manifest["split"] == "test", "source_sha256"])
    trained = set(manifest.loc[manifest["split"] != "test", "source_sha256"])
    assert tested and trained and not tested & trained
    assert set(source["sha256"]) == tested | trained
    assert set(source["sha256"]) & seen == trained


@pytest.mark.skipif(not (SHARED / "head_ct_kaggle").is_dir(), reason="../shared/data is absent")
def test_real_normals_keep_their_series_and_splits(tmp_path):
    """Darshil's normals come as split folders of whole series: the painted set keeps both."""
    source = SHARED / "ct_series_darshil"
    labels = write_painted(source, tmp_path / "d", n=12, seed=0)
    assert {p.name for p in (tmp_path / "d").iterdir() if p.is_dir()} <= {"train", "val", "test"}
    painted = labels[labels["label"] == 1]
    assert len(painted) == 12 and painted["patient_id"].str.startswith("src:").all()


def test_a_real_head_dicom_is_painted_in_hu_and_written_as_dicom(tmp_path):
    """pydicom's own head CT slice (HU, 0.43 mm pixels): the painted copies are DICOM in HU with acute blood
    inside their masks, the normal is unchanged in HU, and the look-test grid has a row per subtype."""
    from pydicom.data import get_testdata_file
    from core.insert.write import write_grid
    from core.io.imaging import load_scan
    (tmp_path / "in" / "normal").mkdir(parents=True)
    source = get_testdata_file("J2K_pixelrep_mismatch.dcm")
    (tmp_path / "in" / "normal" / "head.dcm").write_bytes(Path(source).read_bytes())
    labels = write_painted(tmp_path / "in", tmp_path / "out", n=5, difficulty=(0.0, 0.3))
    original = load_scan(source).pixels
    assert np.abs(load_scan(tmp_path / "out" / "normal" / "normal_head.dcm").pixels - original).max() <= 0.5
    for _, row in labels[labels["label"] == 1].iterrows():
        scan = load_scan(tmp_path / "out" / "hemorrhage" / f"{row['id']}.dcm")
        mask = load_scan(tmp_path / "out" / "masks" / f"{row['id']}.png").image > 127
        assert scan.is_hu and scan.pixel_spacing == pytest.approx((0.431, 0.431))
        assert BLOOD_HU[0] - 10 <= np.median(scan.pixels[mask]) <= BLOOD_HU[1] + 5
        assert np.abs(scan.pixels - original)[~ndimage.binary_dilation(mask, iterations=12)].max() <= 0.5
    write_grid(tmp_path / "out", tmp_path / "grid.png")
    from PIL import Image
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * 256, len(set(labels["subtype"]) - {""}) * 256)


def test_train_with_synthetic_bleeds_trains_on_a_cached_painted_set(tmp_path, monkeypatch, capsys):
    import json
    import train
    monkeypatch.setattr("core.presets.PAINTED_CACHE", tmp_path / "cache")
    normals = phantom_normals(tmp_path / "normals", n=48)
    args = ["--data", str(normals), "--synthetic-bleeds", "--models", "resnet18,knn", "--epochs", "1", "--image-size",
            "64", "--device", "cpu", "--numerics", "fp32", "--warmup-phantoms", "40", "--out", str(tmp_path / "run")]
    assert train.main(args) == 0
    # The network first learned bleeds on phantoms (RUN/warmup) and started from those weights; k-NN has none.
    warm = json.loads((tmp_path / "run" / "warmup" / "run.json").read_text())
    assert warm["synthetic"] and ckpt.list_models(tmp_path / "run" / "warmup") == ["resnet18"]
    card = ckpt.load_card(tmp_path / "run" / "resnet18")
    assert card["training"]["init_from"]["run"] == str(tmp_path / "run" / "warmup")
    assert ckpt.list_models(tmp_path / "run") == ["knn", "resnet18"]
    facts = json.loads((tmp_path / "run" / "run.json").read_text())
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and facts["data_roots"] == [str(cached[0])] and facts["painted_from"] == [str(normals.resolve())]
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert (split["label"] == 0).sum() == 48 and (split["label"] == 1).sum() == 48 * PAINTED_COPIES
    assert split.groupby("group")["split"].nunique().max() == 1
    assert train.main(["--synthetic-bleeds", "--models", "resnet18"]) == 2   # nothing to paint into
    assert "give --data" in capsys.readouterr().err


def test_real_bleeds_keep_the_source_hemorrhage_slices(tmp_path):
    write_dataset(tmp_path / "mixed", 12, size=96, seed=2, stack_size=1)   # 6 normal, 6 hemorrhagic phantoms
    labels = write_painted(tmp_path / "mixed", tmp_path / "out", seed=0, real_bleeds=True)
    real = labels[(labels["label"] == 1) & (labels["bleed_area_mm2"] == 0)]
    assert len(real) == 6 and set(real["subtype"]) <= set(SUBTYPES)
    assert (labels["label"] == 0).sum() == 6 and (labels["bleed_area_mm2"] > 0).sum() == 6
    assert not list((tmp_path / "out" / "masks").glob("mixed*"))   # masks only for what was painted here
