"""Dataset discovery, leak-free splits and the decoded dataset."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from core.data.discover import DatasetError, class_of_folder, discover, series_of_stem, split_of_folder
from core.data.decode import SliceDataset, augment_batch, decode_images, pad_to_square, resize_square
from core.data.splits import prepare, read_manifest, write_manifest


def _noise_png(path: Path, seed: int, size=(48, 48)) -> Path:
    """A random 'head': a textured ellipse on black. Every file gets a different perceptual hash, so
    none is a near-duplicate of another, while a re-cropped copy stays close, as real scans do."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    texture = Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    mask = Image.new("L", size, 0)
    rx, ry = rng.uniform(0.3, 0.45) * w, rng.uniform(0.3, 0.45) * h
    ImageDraw.Draw(mask).ellipse([w / 2 - rx, h / 2 - ry, w / 2 + rx, h / 2 + ry], fill=255)
    Image.composite(texture, Image.new("L", size, 0), mask).save(path)
    return path


def _class_tree(root: Path, n_per_class: int, pos="hemorrhage", neg="normal", stem=lambda i: f"{i:03d}"):
    for i in range(n_per_class):
        _noise_png(root / pos / f"{stem(i)}.png", seed=i)
        _noise_png(root / neg / f"{stem(i + 1000)}.png", seed=i + 1000)
    return root


@pytest.mark.parametrize("name,expected", [
    ("Hemorrhagic", (1, "")), ("with_hemorrhage", (1, "")), ("With Hemorrhage", (1, "")), ("ICH", (1, "")),
    ("1", (1, "")), ("POSITIVE", (1, "")), ("normal", (0, "")), ("Without Hemorrhage", (0, "")),
    ("no-hemorrhage", (0, "")), ("0", (0, "")), ("negative", (0, "")), ("Epidural", (1, "epidural")),
    ("intracerebral", (1, "intraparenchymal")), ("Intraventricular", (1, "intraventricular")),
    ("images", None), ("masks", None),
])
def test_class_folder_synonyms(name, expected):
    assert class_of_folder(name) == expected


@pytest.mark.parametrize("name,expected", [("Training Data", "train"), ("Train", "train"), ("val", "val"),
                                           ("Validation", "val"), ("Testing Data", "test"), ("test set", "test"),
                                           ("hemorrhage", None)])
def test_split_folder_names(name, expected):
    assert split_of_folder(name) == expected


@pytest.mark.parametrize("stem,expected", [("N21_0_104", ("N21", 104)), ("5_0_7", ("5", 7)),
                                           ("IMG-0001-00042", ("IMG-0001", 42)), ("ph000012_s02", ("ph000012", 2)),
                                           ("patient7_slice12", ("patient7", 12)), ("000", (None, None)),
                                           ("scan", (None, None))])
def test_series_from_file_names(stem, expected):
    assert series_of_stem(stem) == expected


def test_class_folders_with_subtypes(tmp_path):
    for i, folder in enumerate(["Epidural", "SUBDURAL", "No Hemorrhage"] * 2):
        _noise_png(tmp_path / folder / f"x{i}.png", seed=i)
    table = discover(tmp_path).set_index("id")
    assert table.loc["Epidural/x0", "label"] == 1 and table.loc["Epidural/x0", "subtype"] == "epidural"
    assert table.loc["SUBDURAL/x1", "subtype"] == "subdural"
    assert table.loc["No Hemorrhage/x2", "label"] == 0 and table.loc["No Hemorrhage/x2", "subtype"] == ""


@pytest.mark.parametrize("with_extension", [False, True])
def test_labels_csv_with_spaced_header(tmp_path, with_extension):
    rows = []
    for i in range(6):
        _noise_png(tmp_path / "imgs" / f"{i:03d}.png", seed=i)
        rows.append(f"{i:03d}{'.png' if with_extension else ''},{int(i < 3)}")
    (tmp_path / "imgs" / "labels.csv").write_text("id, hemorrhage\n" + "\n".join(rows) + "\n")
    table = discover(tmp_path).sort_values("id")
    assert table["label"].tolist() == [1, 1, 1, 0, 0, 0]


def test_given_split_is_honoured(tmp_path):
    for split in ("Train", "Val", "Test"):
        _class_tree(tmp_path / split, 4, stem=lambda i, s=split: f"{s}{i}")
    data = prepare(tmp_path, size=32)
    by_folder = data.manifest["path"].map(lambda p: Path(p).parts[-3].lower())
    assert (by_folder == data.manifest["split"]).all()


def test_one_class_and_empty_datasets_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="No images"):
        discover(tmp_path)
    for i in range(3):
        _noise_png(tmp_path / "normal" / f"{i}.png", seed=i)
    with pytest.raises(DatasetError, match="only one class"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "nope")


def test_unreadable_files_are_skipped_and_listed(tmp_path):
    _class_tree(tmp_path, 12)
    (tmp_path / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "hemorrhage" / "empty.png").write_bytes(b"")
    data = prepare(tmp_path, size=32)
    skipped = data.leakage["skipped_unreadable"]
    assert {Path(p).name for p in skipped} == {"broken.png", "empty.png"}
    assert all(isinstance(msg, str) and msg and "\n" not in msg for msg in skipped.values())
    assert len(data.manifest) == 24 and data.images.shape == (24, 32, 32)


def test_split_is_stratified_grouped_and_seeded(tmp_path):
    # 40 "patients" x 3 slices: slices of one patient must never straddle splits.
    for p in range(40):
        for s in range(3):
            _noise_png(tmp_path / ("hemorrhage" if p % 2 else "normal") / f"pt{p:02d}_slice{s}.png", seed=p * 10 + s)
    a, b = prepare(tmp_path, size=32, seed=1), prepare(tmp_path, size=32, seed=1)
    man = a.manifest
    assert man["split"].tolist() == b.manifest["split"].tolist()
    assert (man.groupby("group")["split"].nunique() == 1).all()
    assert man["group"].nunique() == 40
    share = man["split"].value_counts(normalize=True)
    assert 0.6 <= share["train"] <= 0.8 and 0.08 <= share["val"] <= 0.22 and 0.08 <= share["test"] <= 0.22
    for split in ("train", "val", "test"):
        assert 0.3 <= man.loc[man["split"] == split, "label"].mean() <= 0.7
    assert a.leakage["groups_straddling_splits"] == []
    other = prepare(tmp_path, size=32, seed=2).manifest
    assert other["split"].tolist() != man["split"].tolist()


def test_near_duplicates_are_grouped_and_manifest_round_trips(tmp_path):
    _class_tree(tmp_path, 12)
    _noise_png(tmp_path / "hemorrhage" / "003.png", seed=3, size=(96, 96))
    original = np.asarray(Image.open(tmp_path / "hemorrhage" / "003.png"))
    # The same slice re-cropped and rescaled, under another name: it must share the original's group.
    Image.fromarray(original[1:-1, 1:-1]).resize((120, 120)).save(tmp_path / "hemorrhage" / "copy.png")
    data = prepare(tmp_path, size=32)
    man = data.manifest.set_index("id")
    assert man.loc["hemorrhage/copy", "group"] == man.loc["hemorrhage/003", "group"]
    assert man.loc["hemorrhage/copy", "split"] == man.loc["hemorrhage/003", "split"]
    assert data.leakage["near_duplicate_pairs"] >= 1
    write_manifest(data.manifest, tmp_path / "split.csv")
    back = read_manifest(tmp_path / "split.csv")
    assert list(back.columns[:6]) == ["path", "sha256", "label", "subtype", "group", "split"]
    assert back["sha256"].tolist() == data.manifest["sha256"].tolist()


def test_pad_to_square_keeps_aspect_and_size_does_not_leak():
    wide = np.full((20, 40), 200, dtype=np.uint8)
    square = pad_to_square(wide)
    assert square.shape == (40, 40) and square[:10].max() == 0 and square[10:30].min() == 200
    # Two images of the same content at different sizes give the same training image.
    small, large = resize_square(wide, 16), resize_square(np.kron(wide, np.ones((3, 3), np.uint8)), 16)
    assert np.abs(small.astype(int) - large.astype(int)).max() <= 2


def test_decode_images_decodes_once_into_uint8_cache(tmp_path):
    paths = [str(_noise_png(tmp_path / f"{i}.png", seed=i, size=(50, 30))) for i in range(4)]
    decoded = decode_images(paths, size=24)
    assert decoded.images.shape == (4, 24, 24) and decoded.images.dtype == np.uint8
    assert len(set(decoded.sha256)) == 4 and decoded.failed == {}


def test_augmentation_is_seeded_bounded_and_changes_images():
    x = torch.rand(8, 1, 32, 32)
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    c = augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)


def test_slice_dataset_items():
    ds = SliceDataset(np.zeros((5, 16, 16), np.uint8), [0, 1, 0, 1, 1])
    image, label = ds[1]
    assert len(ds) == 5 and image.shape == (1, 16, 16) and image.dtype == torch.uint8 and label.item() == 1.0


@pytest.mark.parametrize("rows", [None, np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]])])
def test_slice_dataset_batches_in_one_gather_match_item_by_item(rows):
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8), dtype=np.uint8)
    labels = [0, 1, 0, 1, 1][:4 if rows is not None else 5]
    ds = SliceDataset(images, labels, rows=rows)
    indices = np.random.default_rng(1).permutation(len(ds)).tolist()
    batched = list(torch.utils.data.DataLoader(ds, batch_size=3, sampler=indices, collate_fn=SliceDataset.collate))
    assert len(batched) == 2
    for (x, y), chunk in zip(batched, (indices[:3], indices[3:])):
        x_ref = torch.stack([ds[i][0] for i in chunk])
        y_ref = torch.stack([ds[i][1] for i in chunk])
        assert x.shape == x_ref.shape and torch.equal(x, x_ref) and torch.equal(y, y_ref)


# --- the real datasets in ../shared/data -------------------------------------------------------------

def test_kaggle_set_labels_and_near_duplicates_share_a_split(shared_data):
    data = prepare(shared_data / "head_ct_kaggle", size=64, seed=0)
    man = data.manifest.assign(stem=lambda m: m["id"].str.split("/").str[-1]).set_index("stem")
    assert len(man) == 200 and man["label"].sum() == 100
    assert (man.loc[[f"{i:03d}" for i in range(100)], "label"] == 1).all()
    for a, b in [("009", "065"), ("010", "066"), ("011", "061"), ("012", "030"), ("105", "187"),
                 ("188", "189"), ("198", "199")]:
        assert man.loc[a, "split"] == man.loc[b, "split"], (a, b)
        assert man.loc[a, "group"] == man.loc[b, "group"], (a, b)
    assert data.leakage["near_duplicate_pairs_across_splits"] == 0


def test_darshil_series_set_keeps_its_split_and_series_groups(shared_data):
    table = discover(shared_data / "ct_series_darshil")
    assert len(table) == 620
    counts = table.groupby(["given_split", "label"]).size().to_dict()
    assert counts == {("test", 0): 50, ("test", 1): 50, ("train", 0): 200, ("train", 1): 200,
                      ("val", 0): 60, ("val", 1): 60}
    assert set(table["group"].dropna()) >= {"series:N1", "series:5", "series:6", "series:IMG-0001", "series:12"}
    assert table["group"].notna().all()


def test_declared_groups_are_authoritative_over_hash_similarity(tmp_path):
    # Two declared series whose slices are pixel-identical in look: hash-similar, yet independent.
    for series, label in (("a", "hemorrhage"), ("b", "normal")):
        for s in range(3):
            _noise_png(tmp_path / label / f"{series}_slice{s}.png", seed=7)   # same picture in both series
    table = discover(tmp_path)
    assert set(table["group"]) == {"series:a", "series:b"}
    from core.data.splits import assign_groups, near_duplicate_pairs
    decoded = decode_images(table["path"].tolist(), size=32)
    table = table.assign(sha256=[f"x{i}" for i in range(len(table))], group_hint=table["group"])
    pairs = near_duplicate_pairs(decoded.phash, decoded.dhash)
    assert len(pairs) == 15    # every pair of the six look-alikes
    groups = assign_groups(table, pairs)
    assert groups.nunique() == 2
