"""The field's published layouts (core.data.layouts) read as they come: tiny replicas of RSNA 2019, CQ500, PhysioNet
CT-ICH and BHX with their exact file names and headers, phantom heads inside, each trained through train.py."""
import io
import json
import logging
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

import train
from core.data.decode import decode_images
from core.data.discover import discover
from core.data.layouts import BHX_FILES, box_mask, cq500_series, detect, read_bhx
from core.data.truth import masked_slices
from core.explain.__main__ import main as explain
from core.io.imaging import load_scan
from core.io.volume import mask_slice_path, parse_slice_path, slice_path
from core.phantom.generate import generate_stack, write_dataset
from core.subtypes import SUBTYPES

PATIENTS = 16            # 8 with a bleed, 8 without: enough groups for a grouped 70/15/15 split
RSNA_FINDINGS = (*sorted(SUBTYPES), "any")   # the six rows per image, in the competition's order
PATIENT_NAME = "Doe^Jane"


def _stack(seed: int, k: int = 4, bleeds: bool | None = None):
    """Phantom slices (64 px, HU and masks) of one head; odd seeds bleed unless told, each with a subtype of its own."""
    bleeds = seed % 2 if bleeds is None else bleeds
    return generate_stack(np.random.default_rng(seed), 64, k, SUBTYPES[seed % 5] if bleeds else None, 0.2, seed)


def _dicom(path: Path, hu: np.ndarray, uids: dict, z: int, bad_intercept=False, corrupt=False) -> None:
    """A CT slice as the RSNA files are: 12-bit unsigned pixels, intercept -1024, zero-padded multi-valued windows,
    whatever UIDs it is given (RSNA's 'ID_' ones included), a patient name that must never surface."""
    with warnings.catch_warnings():   # pydicom warns about the 'ID_' UIDs when they are set and written too
        warnings.simplefilter("ignore")
        data = _dicom_bytes(hu, uids, z, bad_intercept, corrupt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _dicom_bytes(hu: np.ndarray, uids: dict, z: int, bad_intercept: bool, corrupt: bool) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta, CTImageStorage, uids["sop"], "CT"
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID = uids["series"], uids["study"], uids["patient"]
    ds.PatientName, ds.InstanceNumber, ds.ImagePositionPatient = PATIENT_NAME, z + 1, [0.0, 0.0, 5.0 * z]
    ds.ImageOrientationPatient, ds.PixelSpacing = [1, 0, 0, 0, 1, 0], [0.9, 0.9]
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = ["00040", "00040"], ["00080", "00080"]
    truth = np.clip(np.round(hu), -1000, 3000).astype(np.int32)
    # The faulty files: an intercept near 0 and values that only the published repair turns back into HU.
    stored, ds.RescaleIntercept = (truth % 4096, 1) if bad_intercept else (truth + 1024, -1024)
    ds.RescaleSlope = 1
    ds.PixelData = stored.astype(np.uint16).tobytes()[:100 if corrupt else None]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _train(root: Path, out: Path, *flags: str) -> pd.DataFrame:
    assert train.main(["--data", str(root), "--models", "resnet18", "--epochs", "1", "--image-size", "64",
                       "--device", "cpu", "--numerics", "fp32", "--out", str(out), *flags]) == 0
    return pd.read_csv(out / "split.csv", dtype=str)


def _one_split_per(split: pd.DataFrame, patient_of) -> None:
    patients = split["path"].map(patient_of)
    assert patients.notna().all()
    assert (split.groupby(patients)["split"].nunique() == 1).all()
    assert set(split["split"]) == {"train", "val", "test"}


# --- RSNA 2019 -----------------------------------------------------------------------------------------------------

def _rsna_patient(p: int) -> list:
    """A normal patient's 4 slices, or a bleeding one's 10, two per subtype: every bleeding patient in a test split
    gives each subtype an AUC with a DeLong interval (which needs two positives)."""
    return [_stack(10 * p + i, 1, bleeds=True)[0] for i in range(10)] if p % 2 else _stack(p)


def _rsna(root: Path) -> dict:
    """stage_2_train.csv + stage_2_train/ID_<sop>.dcm; each patient's slices in two to five series (grouping by
    series alone would split patients); one bad-intercept file, one corrupt file, two image groups repeated in the
    CSV."""
    rows, truth = [], {}
    for p in range(PATIENTS):
        for z, s in enumerate(_rsna_patient(p)):
            sop = f"ID_{p:02x}{z:02x}c0ffee"
            uids = {"sop": sop, "series": f"ID_se{p:02d}{z // 2}", "study": f"ID_st{p:02d}", "patient": f"ID_pat{p:02d}"}
            _dicom(root / "stage_2_train" / f"{sop}.dcm", s.hu, uids, z, bad_intercept=(p, z) == (2, 1))
            truth[sop] = {"patient": p, "label": s.label, "subtype": s.subtype, "hu": s.hu}
            rows += [f"{sop}_{f},{int(s.label and f in ('any', s.subtype))}" for f in RSNA_FINDINGS]
    _dicom(root / "stage_2_train" / "ID_badbadbad.dcm", _stack(0)[0].hu,
           {"sop": "ID_badbadbad", "series": "ID_sebad", "study": "ID_stbad", "patient": "ID_patbad"}, 0, corrupt=True)
    rows += [f"ID_badbadbad_{f},0" for f in RSNA_FINDINGS]
    rows += rows[6:18]   # the published CSV repeats a few image groups
    (root / "stage_2_train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")
    return truth


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    truth = _rsna(root)
    out = root.parent / "rsna_run"
    return root, truth, out, _train(root, out, "--subtypes")


def test_rsna_rows_labels_subtype_flags_and_repeated_rows(rsna):
    root, truth, _, _ = rsna
    assert detect(root) == "rsna"
    table = discover(root).set_index("id")
    assert len(table) == len(truth) + 1                      # repeated CSV rows are dropped, not doubled
    for sop, t in truth.items():
        row = table.loc[f"stage_2_train/{sop}"]
        assert row["label"] == t["label"] and row["subtype"] == t["subtype"]
        assert [row[f"sub_{f}"] for f in SUBTYPES] == [int(t["label"] and f == t["subtype"]) for f in SUBTYPES]
    assert table["group"].isna().all()                       # no patient in the labels: the DICOM header tells


def test_rsna_trains_grouped_by_dicom_patient_never_storing_it(rsna):
    root, truth, out, split = rsna
    _one_split_per(split, lambda path: truth.get(Path(path).stem, {}).get("patient"))
    leakage = json.loads((out / "leakage.json").read_text())
    assert [Path(p).name for p in leakage["skipped_unreadable"]] == ["ID_badbadbad.dcm"]
    written = " ".join(f.read_text(errors="ignore") for f in out.rglob("*") if f.suffix in (".csv", ".json"))
    assert "ID_pat" not in written and PATIENT_NAME not in written and "ID_st" not in written


def test_rsna_trains_a_subtypes_head_with_every_subtypes_test_auc(rsna):
    _, truth, out, split = rsna
    card = json.loads((out / "resnet18" / "card.json").read_text())
    test = split[split["split"] == "test"]
    assert card["outputs"] == ["any", *SUBTYPES] and set(card["metrics"]["test"]["subtypes"]) == set(SUBTYPES)
    for flag, entry in card["metrics"]["test"]["subtypes"].items():
        assert entry["n"] == len(test) and entry["n_pos"] == (test[f"sub_{flag}"].astype(float) == 1).sum() > 0
        assert 0 <= entry["roc_auc_ci"][0] <= entry["roc_auc"] <= entry["roc_auc_ci"][1] <= 1


def test_rsna_bad_intercept_is_repaired_to_the_true_hu(rsna):
    root, truth, _, _ = rsna
    sop = "ID_0201c0ffee"
    scan = load_scan(root / "stage_2_train" / f"{sop}.dcm")
    assert np.abs(scan.pixels - np.clip(np.round(truth[sop]["hu"]), -1000, 3000)).max() == 0
    normal = load_scan(root / "stage_2_train" / "ID_0200c0ffee.dcm")   # the usual file, intercept -1024
    assert np.abs(normal.pixels - np.clip(np.round(truth["ID_0200c0ffee"]["hu"]), -1000, 3000)).max() == 0


def test_rsna_id_uids_and_padded_multivalued_windows_decode_quietly(rsna, caplog):
    root, _, _, _ = rsna
    path = root / "stage_2_train" / "ID_0300c0ffee.dcm"
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="pydicom"):
        warnings.simplefilter("always")
        scan = load_scan(path)
    assert not caught and not caplog.records
    assert scan.series_uid == "ID_se030" and scan.patient_key and "ID_pat" not in scan.patient_key
    assert b"00040\\00040" in path.read_bytes()              # the windows really are multi-valued and padded


def test_rsna_images_in_stage_2_train_images_and_other_folders_are_not_rsna(tmp_path):
    for p, sop in enumerate(("ID_aa", "ID_bb")):
        uids = {"sop": sop, "series": f"ID_se{p}", "study": f"ID_st{p}", "patient": f"ID_pat{p}"}
        _dicom(tmp_path / "stage_2_train_images" / f"{sop}.dcm", _stack(p, 1)[0].hu, uids, 0)
    (tmp_path / "stage_2_train.csv").write_text(
        "ID,Label\n" + "\n".join(f"{sop}_{f},{int(sop == 'ID_bb' and f in ('any', 'subdural'))}"
                                  for sop in ("ID_aa", "ID_bb") for f in RSNA_FINDINGS) + "\n")
    table = discover(tmp_path).set_index("id")
    assert table["label"].to_dict() == {"stage_2_train_images/ID_aa": 0, "stage_2_train_images/ID_bb": 1}
    assert table.loc["stage_2_train_images/ID_bb", "subtype"] == "subdural"
    (tmp_path / "stage_2_train.csv").write_text("id,hemorrhage\nID_aa,0\nID_bb,1\n")   # a plain labels CSV
    assert detect(tmp_path) is None and "sub_subdural" not in discover(tmp_path).columns


# --- CQ500 ---------------------------------------------------------------------------------------------------------

CQ500_SERIES = {"CT PLAIN THIN": 2, "CT Plain": 3, "CT BONE": 1, "CT POST CONTRAST": 1, "CT PRE CONTRAST BONE": 1}
READS = ["ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right", "ChronicBleed",
         "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift"]


def _cq500_reads(n: int, bleeds: bool) -> dict:
    """Three readers who disagree: a bleed patient has ICH and IPH from two readers and SDH from one; a normal has
    one reader calling ICH and SAH."""
    marks = {"R1": {"ICH", "IPH"}, "R2": {"ICH", "IPH", "SDH"}, "R3": set()} if bleeds else \
        {"R1": set(), "R2": {"ICH", "SAH"}, "R3": set()}
    return {"name": f"CQ500-CT-{n}", "Category": "B1" if bleeds else "B2", **{f"{r}:{f}": int(f in marks[r]) for r in ("R1", "R2", "R3") for f in READS}}


def _write_cq500(root: Path, patients: int) -> dict:
    """CQ500's layout with every series of CQ500_SERIES per patient (odd ones bleed); the slices' phantom truth by
    SOPInstanceUID `1.2.3.<patient>.<series index>.<z>`."""
    reads, truth = [], {}
    for p in range(patients):
        n = 400 + p * 3
        reads.append(_cq500_reads(n, bool(p % 2)))
        study = root / f"CQ500CT{n} CQ500CT{n}" / "Unknown Study"
        for i, (series, k) in enumerate(CQ500_SERIES.items()):
            uids = {"series": f"1.2.3.{p}.{i}", "study": f"1.2.3.{p}", "patient": f"CQ500-CT-{n}"}
            for z, s in enumerate(_stack(p * 10 + i, k, bleeds=bool(p % 2))):
                truth[f"1.2.3.{p}.{i}.{z}"] = s
                _dicom(study / series / f"CT{z:06d}.dcm", s.hu, {**uids, "sop": f"1.2.3.{p}.{i}.{z}"}, z)
    pd.DataFrame(reads).to_csv(root / "reads.csv", index=False)
    return truth


@pytest.fixture(scope="module")
def cq500(tmp_path_factory):
    root = tmp_path_factory.mktemp("cq500")
    truth = _write_cq500(root, PATIENTS)
    out = root.parent / "cq500_run"
    return root, truth, out, _train(root, out)


def test_cq500_reads_one_plain_series_per_patient_with_the_majority_label(cq500):
    root, _, _, _ = cq500
    assert detect(root) == "cq500"
    table = discover(root)
    assert set(table["path"].map(lambda p: Path(p).parent.name)) == {"CT Plain"}
    assert len(table) == PATIENTS * CQ500_SERIES["CT Plain"]
    bleeds = table["path"].map(lambda p: (int(Path(p).parents[2].name.split()[0][7:]) - 400) // 3 % 2 == 1)
    assert (table["label"] == bleeds.astype(int)).all()
    assert set(table.loc[bleeds, "subtype"]) == {"intraparenchymal"}          # SDH had one reader only
    assert (table.loc[~bleeds, "subtype"] == "").all() and (table.loc[~bleeds, "sub_subarachnoid"] == 0).all()


def test_cq500_trains_with_patients_never_straddling_splits(cq500):
    _, _, _, split = cq500
    _one_split_per(split, lambda path: Path(path).parents[2].name)


@pytest.mark.parametrize("names,expected", [
    (["CT PLAIN THIN", "CT Plain", "CT BONE", "CT POST CONTRAST"], "CT Plain"),
    (["CT 0.625mm", "CT 5mm", "CT PRE CONTRAST BONE"], "CT 5mm"),
    (["CT PRE CONTRAST THIN", "CT PRE CONTRAST 5MM STD", "CT POST CONTRAST 5MM"], "CT PRE CONTRAST 5MM STD"),
    (["CT Thin Plain"], "CT Thin Plain"),
    (["CT BONE", "CT POST CONTRAST"], None),
])
def test_cq500_series_choice(names, expected):
    assert cq500_series(names) == expected


# --- PhysioNet CT-ICH ----------------------------------------------------------------------------------------------

CT_ICH_HEADER = ("PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,"
                 "No_Hemorrhage,Fracture_Yes_No")
# Voxel axes towards the patient's left and back (as DICOM-converted volumes often are): a viewed slice is data.T.
CT_ICH_AFFINE = np.diag([-0.9, -0.9, 5.0, 1.0])


def write_ct_ich(root: Path) -> dict:
    """ct_scans/NNN.nii volumes in HU, masks/NNN.nii and the diagnosis CSV; returns each volume's phantom slices."""
    (root / "ct_scans").mkdir()
    (root / "masks").mkdir()
    rows, stacks = [CT_ICH_HEADER], {}
    for p in range(PATIENTS):
        number = 49 + p
        stacks[number] = stack = _stack(p)
        volume = np.stack([np.round(s.hu).T for s in stack], axis=-1).astype(np.int16)
        masks = np.stack([s.mask.T for s in stack], axis=-1).astype(np.uint8)
        nib.save(nib.Nifti1Image(volume, CT_ICH_AFFINE), root / "ct_scans" / f"{number:03d}.nii")
        nib.save(nib.Nifti1Image(masks, CT_ICH_AFFINE), root / "masks" / f"{number:03d}.nii")
        for z, s in enumerate(stack):
            flags = [int(s.subtype == f) for f in ("intraventricular", "intraparenchymal", "subarachnoid",
                                                    "epidural", "subdural")]
            rows.append(",".join(map(str, [number, z + 1, *flags, 1 - s.label, 0])))
    (root / "hemorrhage_diagnosis_raw_ct.csv").write_text("\n".join(rows) + "\n")
    return stacks


@pytest.fixture(scope="module")
def ct_ich(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_ich")
    stacks = write_ct_ich(root)
    out = root.parent / "ct_ich_run"
    return root, stacks, out, _train(root, out)


def test_ct_ich_slice_z_is_slice_number_z_plus_1_with_its_mask(ct_ich):
    root, stacks, _, _ = ct_ich
    assert detect(root) == "ct_ich"
    table = discover(root)
    assert len(table) == PATIENTS * 4
    for row in table.itertuples():
        volume, z = parse_slice_path(row.path)
        truth = stacks[int(volume.stem)][z]
        assert row.id == f"ct_scans/{volume.stem}#z={z}" and row.slice_index == z
        assert row.label == truth.label and row.subtype == truth.subtype
        scan = load_scan(row.path)
        assert scan.is_hu and np.abs(scan.pixels - np.round(truth.hu)).max() == 0 and scan.pixel_spacing == pytest.approx((0.9, 0.9))
        assert (load_scan(mask_slice_path(row.path)).pixels > 0.5).tolist() == truth.mask.tolist()


def test_ct_ich_trains_with_patients_never_straddling_splits(ct_ich):
    _, _, out, split = ct_ich
    _one_split_per(split, lambda path: parse_slice_path(path)[0].stem)
    assert not json.loads((out / "leakage.json").read_text())["skipped_unreadable"]


def test_a_volume_slice_is_shown_as_radiologists_view_it(tmp_path):
    """A RAS volume (voxel axes towards the patient's right and front): a mark at high x and y voxel indices, the
    right front of the head, shows at the top left of the image."""
    data = np.zeros((8, 6, 3), np.int16)
    data[7, 5, 1] = 100
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.7, 2.0, 1.0])), tmp_path / "v.nii.gz")
    scan = load_scan(slice_path(tmp_path / "v.nii.gz", 1))
    assert scan.pixels.shape == (6, 8) and scan.pixels[0, 0] == 100 and scan.pixel_spacing == pytest.approx((0.7, 0.5))
    assert scan.slice_position == 2.0
    with pytest.raises(ValueError, match="out of range"):
        load_scan(slice_path(tmp_path / "v.nii.gz", 3))


# --- BHX -----------------------------------------------------------------------------------------------------------

def test_bhx_boxes_become_the_union_mask(tmp_path):
    csv = tmp_path / "1_Initial_Manual_Labeling.csv"
    csv.write_text(
        ",SOPInstanceUID,SeriesInstanceUID,StudyInstanceUID,data,labelName,labelType\n"
        "0,1.2.3.4,1.2.3,1.2,\"{'x': 2.4, 'y': 1.0, 'width': 3.0, 'height': 2.0}\",Intraparenchymal,Freeform\n"
        "1,1.2.3.4,1.2.3,1.2,\"{'x': 4.0, 'y': 2.0, 'width': 2.0, 'height': 3.0}\",Subdural,Freeform\n"
        "2,1.2.3.5,1.2.3,1.2,\"{'x': 0, 'y': 0, 'width': 1, 'height': 1}\",Chronic,Freeform\n"
        "3,1.2.3.5,1.2.3,1.2,\"__import__('os').system('false')\",Epidural,Freeform\n")
    boxes = read_bhx(csv)
    assert boxes["SOPInstanceUID"].tolist() == ["1.2.3.4", "1.2.3.4", "1.2.3.5"]   # code is never run, only dropped
    mask = box_mask(boxes[boxes["SOPInstanceUID"] == "1.2.3.4"], (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[1:3, 2:6] = True    # x 2.4..5.4 touches columns 2-5, y 1..3 rows 1-2
    expected[2:5, 4:6] = True
    assert mask.tolist() == expected.tolist()


def test_ct_ich_test_split_evaluates_and_shows_with_its_masks(ct_ich):
    """core.evaluate decodes the run's volume slices again (their digests unchanged); the dashboard's case reader
    shows one with the bleed mask of the same slice."""
    from core.evaluate import evaluate_run
    from dashboard.models import case_image

    root, stacks, out, split = ct_ich
    report = evaluate_run(out, bootstrap=10)
    assert report["n_cases"] == (split["split"] == "test").sum() and "resnet18" in report["models"]
    bleed = next(row for row in discover(root).itertuples() if stacks[int(parse_slice_path(row.path)[0].stem)]
                 [row.slice_index].mask.any())
    image, mask, problem = case_image(bleed.path)
    truth = stacks[int(parse_slice_path(bleed.path)[0].stem)][bleed.slice_index].mask
    assert not problem and image.shape == (64, 64) and mask.tolist() == truth.tolist()


# --- Localization truth: core.explain's pointing game on real slices ------------------------------------------------

def _bhx(path: Path, boxes: dict[str, tuple]) -> Path:
    """A BHX CSV (its header, `data` cells as BHX writes them) with one box (x, y, width, height) per SOPInstanceUID."""
    rows = [",SOPInstanceUID,SeriesInstanceUID,StudyInstanceUID,data,labelName,labelType"]
    rows += [f"{i},{sop},1.2.3,1.2,\"{{'x': {x}, 'y': {y}, 'width': {w}, 'height': {h}}}\",Subdural,Box"
             for i, (sop, (x, y, w, h)) in enumerate(boxes.items())]
    path.write_text("\n".join(rows) + "\n")
    return path


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _cq500_sop(path: str) -> str:
    """The replica's SOPInstanceUID of a CT Plain slice (series index 1) from its path."""
    patient = (int(Path(path).parents[2].name.split()[0][7:]) - 400) // 3
    return f"1.2.3.{patient}.1.{int(Path(path).stem[2:])}"


def _explained(run: Path, data: Path, out: Path, *extra: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    assert explain(["--run", str(run), "--data", str(data), "--size", "64", "--methods", "gradcam,random",
                    "--gallery-columns", "2", "--out", str(out), *extra]) == 0
    return pd.read_csv(out / "localization.csv"), pd.read_csv(out / "slices.csv")


def test_a_bhx_box_lands_on_the_same_pixels_after_decoding_and_resizing(tmp_path):
    _write_cq500(tmp_path, 2)   # patient 1 bleeds; its CT Plain slices are read
    _bhx(tmp_path / BHX_FILES[0], {"1.2.3.1.1.0": (16, 8, 16, 24), "1.2.3.1.0.0": (0, 0, 8, 8)})   # 2nd: CT PLAIN THIN
    found = masked_slices(tmp_path, 32)   # the BHX file in the dataset's folder is found and joined
    assert found.rows[["id", "truth"]].values.tolist() == [["CQ500CT403 CQ500CT403/Unknown Study/CT Plain/CT000000",
                                                            "bhx"]]
    expected = np.zeros((32, 32), bool)
    expected[4:16, 8:16] = True   # rows 8-31 and columns 16-31 of 64 px, at half the size
    assert found.masks[0].tolist() == expected.tolist()
    assert np.array_equal(found.images[0], decode_images(found.rows["path"].tolist(), 32).images[0])


def test_core_explain_scores_cq500_test_slices_against_their_bhx_boxes(cq500, tmp_path, capsys):
    root, truth, run, split = cq500
    csv = _bhx(tmp_path / "boxes.csv", {sop: _bounding_box(s.mask) for sop, s in truth.items() if s.mask.any()})
    bleeds = split[(split["label"] == "1") & split["path"].map(_cq500_sop).isin(pd.read_csv(csv)["SOPInstanceUID"])]
    tested = bleeds[bleeds["split"] == "test"]
    assert len(tested) > 0
    table, slices = _explained(run, root, tmp_path / "cams", "--bhx", str(csv))
    assert table["method"].tolist() == ["gradcam", "random"] and (table["n"] == len(tested)).all()
    assert table["pointing_game"].between(0, 1).all() and table["energy_in_mask"].between(0, 1).all()
    assert sorted(slices["path"]) == sorted(tested["path"]) and set(slices["truth"]) == {"bhx"}
    printed = capsys.readouterr().out   # the run's train and val slices are left out
    assert f"{len(tested)} with BHX boxes) at 64 px; left out: {len(bleeds) - len(tested)} seen in training" in printed
    assert explain(["--run", str(run), "--data", str(root), "--out", str(tmp_path / "none")]) == 2   # no BHX file
    assert capsys.readouterr().err.startswith("hemolens: no hemorrhage slice of")


def test_core_explain_scores_ct_ich_test_slices_against_their_mask_volumes(ct_ich, tmp_path):
    root, stacks, run, split = ct_ich
    tested = [p for p, label, part in zip(split["path"], split["label"], split["split"]) if part == "test"
              and label == "1" and stacks[int(parse_slice_path(p)[0].stem)][parse_slice_path(p)[1]].mask.any()]
    assert tested
    table, slices = _explained(run, root, tmp_path / "cams")
    assert (table["n"] == len(tested)).all() and table["pointing_game"].between(0, 1).all()
    assert sorted(slices["path"]) == sorted(tested) and set(slices["truth"]) == {"mask"}


def test_a_class_folder_sets_masks_by_stem_are_its_truth(tmp_path):
    labels = write_dataset(tmp_path, n=12, size=64, seed=2, stack_size=1)
    found = masked_slices(tmp_path, 64)
    assert sorted(Path(p).stem for p in found.rows["path"]) == sorted(labels.loc[labels["label"] == 1, "id"])
    for path, mask in zip(found.rows["path"], found.masks):
        assert mask.tolist() == (load_scan(tmp_path / "masks" / f"{Path(path).stem}.png").image > 127).tolist()
