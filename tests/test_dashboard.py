"""Dashboard tests: every page through streamlit's AppTest on a tiny run trained once for the module."""
import io
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from streamlit.testing.v1 import AppTest

from core.data.layouts import BHX_FILES, box_mask
from core.data.truth import mask_file
from core.io import store as ckpt
from core.io.framing import frame, framing_of
from core.io.imaging import ScanError
from core.metrics.binary import binary_metrics, scan_scores
from core.nets.cnn import IMAGENET_MEAN, IMAGENET_STD
from core.phantom.generate import generate_slice, render

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGES = ["leaderboard", "compare", "training", "scan", "errors", "teach", "data", "model_cards"]
from conftest import TINY_RUN_CAM_MODELS, TINY_RUN_MODELS
from dashboard.models import case_image

MODELS = TINY_RUN_MODELS
PATIENT = "Doe^Secret"

@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The suite's two-model run, exposed through CHECKPOINTS_DIR."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHECKPOINTS_DIR", str(tiny_run.parent))
        yield tiny_run

def page(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    return at.switch_page(f"views/{name}.py").run()

def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at

def split_rows(run_dir, model):
    preds = pd.read_csv(run_dir / model / ckpt.PREDICTIONS, dtype={"id": str})
    return preds[preds["split"] == "test"]

def texts(at: AppTest) -> str:
    return " ".join(e.value for kind in ("markdown", "caption", "subheader", "title", "info", "warning", "success")
                    for e in getattr(at, kind))

@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_with_the_notice(run_dir, name):
    at = ok(page(name))
    assert at.title, "each page has a title"
    assert any("not for clinical use" in w.value for w in at.sidebar.warning)

def test_empty_checkpoints_dir_shows_the_train_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CHECKPOINTS_DIR", str(tmp_path))
    for name in ("leaderboard", "scan", "model_cards"):
        at = ok(page(name))
        assert [c.value for c in at.code] == ["python train.py"]
    assert at.number_input(key="chk_tn_").value == 50  # the published-table checker needs no run

def test_damaged_card_is_one_sidebar_error(tmp_path, monkeypatch):
    (tmp_path / "broken" / "resnet18").mkdir(parents=True)
    (tmp_path / "broken" / ckpt.SPLIT).write_text("path,sha256,label,subtype,group,split\n")
    (tmp_path / "broken" / "resnet18" / ckpt.CARD).write_text("{not json")
    monkeypatch.setenv("CHECKPOINTS_DIR", str(tmp_path))
    at = ok(page("leaderboard"))
    assert len(at.sidebar.error) == 1 and "broken cannot be read" in at.sidebar.error[0].value
    assert [c.value for c in at.code] == ["python train.py"]

def test_leaderboard_has_one_row_per_model_and_labelled_published_rows(run_dir):
    at = ok(page("leaderboard"))
    board = at.dataframe[0].value
    assert len(board) == len(MODELS) and set(board["Source"]) == {"this run"}
    youden = ckpt.load_card(run_dir / "resnet18")["thresholds"]["youden"]   # the default operating point
    expected = binary_metrics(split_rows(run_dir, "resnet18")["label"], split_rows(run_dir, "resnet18")["prob"], youden)
    row = board[board["Model"] == "ResNet-18"].iloc[0]
    assert row["Threshold"] == pytest.approx(youden)
    assert row["Sensitivity"] == pytest.approx(expected["sensitivity"], nan_ok=True)
    assert row["Accuracy 95% CI"] == f"{expected['accuracy_ci'][0]:.3f}–{expected['accuracy_ci'][1]:.3f}"
    at.toggle[0].set_value(True).run()
    ok(at)
    board = at.dataframe[0].value
    published = board[board["Source"] != "this run"]
    assert len(published) > 0 and published["Source"].str.startswith("published").all()
    assert published["Model"].str.contains("published|recomputed").all()

def test_leaderboard_shows_the_scan_level_auc_beside_the_slice_auc(run_dir):
    board = ok(page("leaderboard")).dataframe[0].value
    assert {"Model", "AUC", "Scan AUC", "Scan AUC 95% CI", "Scans n"} <= set(board.columns)
    board = board.set_index("Model")
    for model in MODELS:   # the phantom stacks are the scans; each scores its most suspicious slice
        rows = split_rows(run_dir, model)
        labels, scores = scan_scores(rows["series"], rows["label"], rows["prob"])
        name = ckpt.load_card(run_dir / model)["display_name"]
        assert board.loc[name, "Scan AUC"] == pytest.approx(roc_auc_score(labels, scores))
        assert board.loc[name, "Scans n"] == len(labels) < board.loc[name, "Test n"]


def test_compare_threshold_slider_drives_the_confusion_matrix(run_dir):
    at = ok(page("compare"))
    counts = {}
    for t in (0.0, 0.5, 1.0):
        at.slider(key="cmp_threshold").set_value(t).run()
        table = ok(at).dataframe[0].value.set_index("Model")
        counts[t] = table.loc["ResNet-18", ["TN", "FP", "FN", "TP"]].astype(int).tolist()
        met = binary_metrics(split_rows(run_dir, "resnet18")["label"], split_rows(run_dir, "resnet18")["prob"], t)
        assert counts[t] == [met["tn"], met["fp"], met["fn"], met["tp"]]
    assert counts[0.0][0] == counts[0.0][2] == 0, "threshold 0 calls every case hemorrhage"
    assert counts[0.0] != counts[1.0]
    card = ckpt.load_card(run_dir / "resnet18")
    at.radio(key="cmp_mode").set_value("youden").run()
    table = ok(at).dataframe[0].value.set_index("Model")
    assert table.loc["ResNet-18", "Threshold"] == pytest.approx(card["thresholds"]["youden"])
    at.slider(key="cmp_prevalence").set_value(5.0).run()
    assert "PPV at 5.0%" in ok(at).dataframe[0].value.columns

def test_model_card_page_and_published_table_checker(run_dir):
    at = ok(page("model_cards"))
    for model in MODELS:   # every family's card renders: CNN, sequence, classical, ensemble
        at.selectbox(key="card_model").set_value(model).run()
        card = ckpt.load_card(run_dir / model)
        assert card["display_name"] in texts(ok(at)) and f"`{model}`" in texts(at)
        assert bool(at.get("plotly_chart")) == (card["family"] == "classical"), "importances for classical only"
    assert "Members: cnn_gru, knn, mobilenet_v2, resnet18; soft_voting in probability space" in texts(at)
    assert {b.label for b in at.get("download_button")} == {"Download card (Markdown)", "Download card (JSON)"}
    at.selectbox(key="chk_example").set_value("VGG16").run()
    table = ok(at).dataframe[-1].value.set_index("metric")
    assert table.loc["accuracy", "from the matrix"] == pytest.approx(989 / 1016)
    assert table.loc["accuracy", "as k / n"] == "989 / 1016"
    assert table.loc["sensitivity", "from the matrix"] == 1.0
    warning = at.main.warning[-1].value
    assert "sensitivity" in warning and "f1" in warning and "accuracy" not in warning  # 97.34% is right
    assert warning.startswith("The journal paper of 2025's summary table") and "Study B" not in texts(at)

def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()

def ct_dicom(hu: np.ndarray) -> bytes:
    """A CT slice as DICOM bytes with a patient name that must never reach the page."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT, "ID-0042", "CT"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleIntercept, ds.RescaleSlope, ds.PixelSpacing = -1024, 1, [0.9, 0.9]
    ds.PixelData = (np.round(hu) + 1024).astype(np.int16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

def test_scan_page_uploads_png_dicom_and_garbage(run_dir):
    phantom = generate_slice(np.random.default_rng(1), 96, "subdural", 0.2)
    at = ok(page("scan"))
    at.file_uploader(key="scan_upload").upload("slice.png", png_bytes(render(phantom.hu)),
                                               "image/png").run()
    assert len(ok(at).metric) == len(MODELS) and not at.error
    assert f"of {len(MODELS)} models call hemorrhage" in at.subheader[0].value

    at.file_uploader(key="scan_upload").clear().upload("IM0001", ct_dicom(phantom.hu)).run()  # octet-stream
    assert len(ok(at).metric) == len(MODELS) and not at.error
    # The run was trained on --data, framed to the head: the upload is framed as its slices were.
    assert at.image[0].captions == ["CT, 96 × 96 px, 0.90 × 0.90 mm pixels, brain window, framed to the head as "
                                    "the models were trained"]
    at.selectbox(key="scan_window").set_value("subdural").run()
    assert "subdural window" in " ".join(c for i in ok(at).image for c in i.captions)
    assert PATIENT not in str(at.main) + str(at.sidebar) and "ID-0042" not in str(at.main)

    at.file_uploader(key="scan_upload").clear().upload("notes.dcm", b"\x00not a scan" * 50).run()
    assert [e.value for e in ok(at).error] == ["The file is not a recognised image (PNG, JPEG, TIFF, BMP or DICOM)."]
    assert not at.metric
    at.file_uploader(key="scan_upload").clear().upload("again.png", png_bytes(np.zeros((64, 64), np.uint8))).run()
    assert len(ok(at).metric) == len(MODELS) and not at.error, "the app keeps working after a bad upload"

def test_scan_page_series_upload_feeds_neighbours_to_sequence_models(run_dir, monkeypatch):
    """What the GRU is given, not what it happened to learn: the stack for the chosen slice holds its
    ordered neighbours in a series and the slice alone otherwise."""
    from core.data.decode import resize_square, to_model_input
    from core.phantom.generate import generate_stack
    from core.nets.sequence import SequenceClassifier
    stacks = []   # every (B, K, 3, S, S) batch a sequence model predicts on (not its CAM passes)
    forward_all = SequenceClassifier.forward_all

    def recording(self, x):
        if x.ndim == 5 and torch.is_inference_mode_enabled():
            stacks.append(x.detach().clone())
        return forward_all(self, x)
    monkeypatch.setattr(SequenceClassifier, "forward_all", recording)

    stack = generate_stack(np.random.default_rng(4), 96, 3, "intraparenchymal", 0.2)
    files = [(f"p1_0_{i + 1}.png", png_bytes(render(s.hu)), "image/png") for i, s in enumerate(stack)]
    size = ckpt.load_card(run_dir / "cnn_gru")["input_size"]
    framing = framing_of(ckpt.load_card(run_dir / "cnn_gru"))   # each slice framed as the run's were
    slices = [to_model_input(torch.tensor(resize_square(frame(render(s.hu), framing)[0], size))[None, None],
                             IMAGENET_MEAN, IMAGENET_STD)[0] for s in stack]
    at = ok(page("scan"))
    at.radio(key="scan_source").set_value("series").run()
    at.file_uploader(key="scan_series").set_value([files[2], files[0], files[1]]).run()   # any order
    assert len(ok(at).metric) == len(MODELS) and not at.error
    assert at.image[0].captions[0].startswith("slice 2 of 3")
    in_series = {m.label: float(m.value.rstrip("%")) for m in at.metric}
    centre = stacks[-1][1]   # rows are the ordered series; the page shows slice 2 of 3
    expected = [slices[i] for i in (0, 0, 1, 2, 2)]   # stack of 5 around slice 2, edges repeated
    assert len(centre) == len(expected)
    assert all(torch.equal(got, want) for got, want in zip(centre, expected)), "ordered neighbours"

    at.radio(key="scan_source").set_value("upload").run()
    at.file_uploader(key="scan_upload").upload(*files[1]).run()   # the same centre slice, alone
    assert len(ok(at).metric) == len(MODELS) and not at.error
    shown_alone = {m.label: float(m.value.rstrip("%")) for m in at.metric}
    # A CNN reads the slice alone either way (batch of 3 vs 1: equal up to float noise, then rounding).
    assert in_series["ResNet-18"] == pytest.approx(shown_alone["ResNet-18"], abs=0.1 + 1e-9)
    alone = stacks[-1]
    assert alone.shape[0] == 1 and all(torch.equal(s, slices[1]) for s in alone[0]), "a lone slice is its own stack"


def test_scan_page_series_names_its_most_suspicious_slices(run_dir):
    from core.phantom.generate import generate_stack
    stack = generate_stack(np.random.default_rng(5), 96, 3, "subdural", 0.2)
    files = [(f"p2_0_{i + 1}.png", png_bytes(render(s.hu)), "image/png") for i, s in enumerate(stack)]
    at = ok(page("scan"))
    at.radio(key="scan_source").set_value("series").run()
    at.file_uploader(key="scan_series").set_value(files[::-1]).run()
    table = ok(at).dataframe[-1].value.set_index("Model")
    assert len(table) == len(MODELS)
    alone = []   # ResNet-18 reads each slice alone: its shown probability of slice k is its score of that slice
    for k in (1, 2, 3):
        at.slider(key="series_slice").set_value(k).run()
        alone.append(float(next(m.value for m in ok(at).metric if m.label == "ResNet-18").rstrip("%")) / 100)
    row = table.loc["ResNet-18"]
    assert row["Scan score (max)"] == pytest.approx(max(alone), abs=0.0005 + 1e-6)
    named = [row[f"#{k}"] for k in (1, 2, 3)]   # "p2_0_2.png (slice 2): 51.2%", most suspicious first
    slices = [int(n.split("(slice ")[1].split(")")[0]) for n in named]
    probs = [float(n.rsplit(": ", 1)[1].rstrip("%")) / 100 for n in named]
    assert sorted(slices) == [1, 2, 3] and probs == sorted(probs, reverse=True)
    assert all(n.startswith(f"p2_0_{k}.png ") for n, k in zip(named, slices))
    assert probs == pytest.approx([alone[k - 1] for k in slices], abs=0.0005 + 1e-6)


def test_scan_page_test_example_matches_predictions_csv(run_dir):
    at = ok(page("scan"))
    at.radio(key="scan_source").set_value("test").run()
    case = ok(at).selectbox(key="scan_case").value
    for model, display in (("resnet18", "ResNet-18"), ("mobilenet_v2", "MobileNetV2")):
        rows = split_rows(run_dir, model).set_index("id")
        shown = next(m.value for m in at.metric if m.label == display)
        # The page predicts one slice, predictions.csv a batch: equal up to float noise, then rounding.
        assert float(shown.rstrip("%")) / 100 == pytest.approx(rows.at[case, "prob"], abs=0.0005 + 1e-6)
    at.radio(key="scan_source").set_value("phantom").run()
    at.selectbox(key="ph_subtype").set_value("epidural").run()
    assert "green: true bleed outline" in ok(at).image[0].captions[0]

def test_scan_page_cam_grid(run_dir):
    from core.explain import cam as explain
    at = ok(page("scan"))
    at.radio(key="scan_source").set_value("phantom").run()
    assert len(ok(at).image) == 1 + len(TINY_RUN_CAM_MODELS)
    at.selectbox(key="cam_method").set_value(explain.METHOD_NAMES[-1]).run()
    at.slider(key="cam_alpha").set_value(0.8).run()
    assert len(ok(at).image) == 1 + len(TINY_RUN_CAM_MODELS)

def test_errors_page_lists_mistakes_and_shows_a_case_on_request(run_dir):
    at = ok(page("errors"))
    at.selectbox(key="err_model").set_value("mobilenet_v2").run()
    rows = split_rows(run_dir, "mobilenet_v2")
    met = binary_metrics(rows["label"], rows["prob"], ckpt.load_card(run_dir / "mobilenet_v2")["thresholds"]["youden"])
    assert (len(at.dataframe[0].value), len(at.dataframe[1].value)) == (met["fn"], met["fp"])
    assert not at.image, "images load only on request"
    at.toggle(key="err_show").set_value(True).run()  # a 1-epoch model always errs somewhere
    assert ok(at).image and at.image[0].captions[0].startswith("Input")

PEAK = ("peak on the bleed", "peak off the bleed")

def masked_and_normal(run_dir) -> tuple[str, str]:
    """A test case whose phantom mask holds a bleed, and a normal one (its mask empty)."""
    rows = split_rows(run_dir, "resnet18")
    bleeds = [r.id for r in rows.itertuples() if r.label == 1 and np.asarray(Image.open(mask_file(r.path))).any()]
    return bleeds[0], rows.loc[rows["label"] == 0, "id"].iloc[0]

def peak_captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions if any(p in c for p in PEAK)]

def test_scan_page_says_for_every_network_whether_its_peak_hit_the_true_bleed(run_dir):
    bleed, normal = masked_and_normal(run_dir)
    at = ok(page("scan"))
    at.radio(key="scan_source").set_value("test").run()
    at.selectbox(key="scan_case").set_value(bleed).run()
    assert "green: true bleed outline" in ok(at).image[0].captions[0]
    assert len(peak_captions(at)) == len(TINY_RUN_CAM_MODELS) == len(at.image) - 1   # one under every map
    at.selectbox(key="scan_case").set_value(normal).run()
    assert not peak_captions(ok(at)) and "green" not in at.image[0].captions[0]   # no mask: nothing extra

def test_errors_page_says_for_every_network_whether_its_peak_hit_the_true_bleed(run_dir, tmp_path, monkeypatch):
    shutil.copytree(run_dir, tmp_path / run_dir.name)
    for model, youden in (("resnet18", 0.0), ("mobilenet_v2", 2.0)):   # opposite calls: every case a disagreement
        card = json.loads((tmp_path / run_dir.name / model / ckpt.CARD).read_text())
        card["thresholds"]["youden"] = youden
        (tmp_path / run_dir.name / model / ckpt.CARD).write_text(json.dumps(card))
    monkeypatch.setenv("CHECKPOINTS_DIR", str(tmp_path))
    bleed, normal = masked_and_normal(run_dir)
    at = ok(page("errors"))
    at.selectbox(key="err_case").set_value(bleed).run()
    at.toggle(key="err_show").set_value(True).run()
    assert ok(at).image[0].captions[0] == "Input (green: true bleed)"
    assert len(peak_captions(at)) == len(TINY_RUN_CAM_MODELS) == len(at.image) - 1
    at.selectbox(key="err_case").set_value(normal).run()
    assert not peak_captions(ok(at)) and at.image[0].captions[0] == "Input"

def test_a_case_is_outlined_with_the_bhx_boxes_kept_above_it(tmp_path):
    """A CQ500-like slice with no stored mask takes its BHX boxes, joined by SOPInstanceUID, from the CSV of a folder
    above it; a slice the CSV does not name has no outline."""
    hu = generate_slice(np.random.default_rng(2), 64, None, 0.2).hu
    series = tmp_path / "CQ500CT7 CQ500CT7" / "Unknown Study" / "CT PLAIN THIN"
    series.mkdir(parents=True)
    (series / "CT000001.dcm").write_bytes(ct_dicom(hu))
    (series / "CT000002.dcm").write_bytes(ct_dicom(hu))
    uid = pydicom.dcmread(series / "CT000001.dcm").SOPInstanceUID
    (tmp_path / BHX_FILES[0]).write_text(",SOPInstanceUID,SeriesInstanceUID,StudyInstanceUID,data,labelName,labelType\n"
                                         f"0,{uid},1.2.3,1.2,\"{{'x': 10, 'y': 12, 'width': 8, 'height': 6}}\",Subdural,Box\n")
    image, mask, problem = case_image(str(series / "CT000001.dcm"))
    boxes = pd.DataFrame({"x": [10.0], "y": [12.0], "width": [8.0], "height": [6.0]})
    assert not problem and mask.tolist() == box_mask(boxes, image.shape).tolist()
    assert case_image(str(series / "CT000002.dcm"))[1] is None

def test_data_page_counts_leakage_and_galleries(run_dir):
    at = ok(page("data"))
    manifest = pd.read_csv(run_dir / ckpt.SPLIT)
    assert at.dataframe[0].value.loc["total", "total"] == len(manifest)
    assert {m.label for m in at.metric} >= {"Near-duplicate pairs", "Groups straddling splits"}
    assert len(at.image) >= 2  # sample gallery and the phantom subtype grid
    for subtype in ("Intraparenchymal", "Subdural", "Epidural", "Subarachnoid", "Intraventricular"):
        assert subtype in texts(at)

def test_a_model_calling_every_case_one_class_is_flagged_not_shown_as_a_plain_row(run_dir, tmp_path, monkeypatch):
    shutil.copytree(run_dir, tmp_path / run_dir.name)
    card_path = tmp_path / run_dir.name / "resnet18" / ckpt.CARD
    card = json.loads(card_path.read_text())
    card["thresholds"]["youden"] = 0.0   # every probability is >= 0: every case is called hemorrhage
    card_path.write_text(json.dumps(card))
    monkeypatch.setenv("CHECKPOINTS_DIR", str(tmp_path))
    at = ok(page("leaderboard"))
    board = at.dataframe[0].value.set_index("Model")
    assert board.loc["ResNet-18", "Calls"] == "⚠ every case hemorrhage"
    assert (board.drop("ResNet-18")["Calls"] != "⚠ every case hemorrhage").any()
    assert any("**ResNet-18** calls every test case hemorrhage" in w.value for w in at.main.warning)
    at = ok(page("scan"))
    at.radio(key="scan_source").set_value("phantom").run()
    flagged = {m.label for m in ok(at).metric if "for every test case" in m.delta}
    assert "ResNet-18" in flagged


class _Planted:
    """Unpickling it creates a folder: proof that a pickle was loaded."""
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture
def damaged_run(run_dir, tmp_path, monkeypatch):
    """A copy of the run with mobilenet_v2's weights tampered (bytes flipped; its card unchanged), and a folder `svm`
    holding only a card (knn's, vouching for the pickle by sha256) and a model.pkl that must never be unpickled."""
    copy = tmp_path / "checkpoints" / run_dir.name
    shutil.copytree(run_dir, copy)
    weights = copy / "mobilenet_v2" / ckpt.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])
    weights.write_bytes(bytes(data))
    (copy / "svm").mkdir()
    (copy / "svm" / "model.pkl").write_bytes(pickle.dumps(_Planted(str(tmp_path / "unpickled"))))
    card = {**ckpt.load_card(run_dir / "knn"), "model": "svm", "display_name": "Pickled SVM",
            "weights_file": "model.pkl", "weights_sha256": ckpt.sha256_file(copy / "svm" / "model.pkl")}
    (copy / "svm" / ckpt.CARD).write_text(json.dumps(card))
    monkeypatch.setenv("CHECKPOINTS_DIR", str(copy.parent))
    yield copy
    assert not (tmp_path / "unpickled").exists(), "the pickle was loaded"


UNAVAILABLE = {"MobileNetV2": "weights do not match the card's sha256: tampered, truncated or replaced",
               "Pickled SVM": "weights file model.skops is missing",
               "Soft-voting ensemble": "member mobilenet_v2 is unavailable"}
TRUSTED = ["ResNet-18", "CNN + BiGRU", "k-NN"]


def test_a_damaged_model_is_unavailable_on_every_page_and_the_others_keep_working(damaged_run):
    at = ok(page("scan"))
    health = at.sidebar.warning[-1].value
    assert health.startswith("3 of 6 models verified; 3 unavailable: ")
    assert all(f"{name} ({why})" in health for name, why in UNAVAILABLE.items()), health
    at.file_uploader(key="scan_upload").upload("slice.png", png_bytes(render(generate_slice(
        np.random.default_rng(1), 96, "subdural", 0.2).hu)), "image/png").run()
    assert sorted(m.label for m in ok(at).metric) == sorted(TRUSTED)
    assert all(m.value.endswith("%") for m in at.metric) and not at.error
    assert "of 3 models call hemorrhage" in at.subheader[0].value
    rows = [w.value for w in at.main.warning if ": unavailable: " in w.value]
    assert sorted(rows) == sorted(f"**{name}**: unavailable: {why}" for name, why in UNAVAILABLE.items())
    assert len(at.image) == 1 + 2, "CAMs of the two loaded networks (ResNet-18, CNN + BiGRU)"
    for name in PAGES:
        at = ok(page(name))
        banner = next(w.value for w in at.main.warning if w.value.startswith("Unavailable, so not ranked"))
        assert all(f"**{n}**" in banner and why in banner for n, why in UNAVAILABLE.items()), (name, banner)


def test_the_leaderboard_ranks_only_verified_models(damaged_run):
    at = ok(page("leaderboard"))
    assert sorted(at.dataframe[0].value["Model"]) == sorted(TRUSTED)
    at = ok(page("compare"))
    assert sorted(at.dataframe[0].value["Model"]) == sorted(TRUSTED)
    assert sorted(at.multiselect[0].options) == sorted(TRUSTED)


def test_a_verified_model_that_fails_to_load_is_one_scan_row(run_dir, tmp_path, monkeypatch):
    """ResNet-18's weights in MobileNetV2's folder, its card's sha256 updated: it verifies, but cannot load."""
    copy = tmp_path / "checkpoints" / run_dir.name
    shutil.copytree(run_dir, copy)
    shutil.copy(copy / "resnet18" / ckpt.WEIGHTS, copy / "mobilenet_v2" / ckpt.WEIGHTS)
    card = {**ckpt.load_card(copy / "mobilenet_v2"), "weights_sha256": ckpt.sha256_file(copy / "resnet18" / ckpt.WEIGHTS)}
    (copy / "mobilenet_v2" / ckpt.CARD).write_text(json.dumps(card))
    monkeypatch.setenv("CHECKPOINTS_DIR", str(copy.parent))
    at = ok(page("scan"))
    assert at.sidebar.caption[-1].value == "5 of 5 models verified."
    at.radio(key="scan_source").set_value("phantom").run()
    assert sorted(m.label for m in ok(at).metric) == sorted(TRUSTED)
    rows = sorted(w.value for w in at.main.warning if ": unavailable: " in w.value)
    assert rows[0].startswith("**MobileNetV2**: unavailable: ") and "weights do not fit model mobilenet_v2" in rows[0]
    assert rows[1] == "**Soft-voting ensemble**: unavailable: member mobilenet_v2 is unavailable"


def test_the_app_loads_a_runs_models_in_the_background_before_the_first_upload(run_dir, tmp_path, monkeypatch):
    """Opening the app on a run (its Leaderboard loads no model) starts loading its verified models on another
    thread; once that is done, the Scan page's first upload loads none of them again."""
    import threading

    import dashboard.models
    import dashboard.preload
    from dashboard.frame import open_run
    copy = tmp_path / "checkpoints" / run_dir.name   # a run no other test has loaded: nothing of it is cached
    shutil.copytree(run_dir, copy)
    monkeypatch.setenv("CHECKPOINTS_DIR", str(copy.parent))
    began, load_all = threading.Event(), dashboard.preload._load_all
    monkeypatch.setattr(dashboard.preload, "_load_all", lambda *args: began.set() or load_all(*args))
    at = ok(AppTest.from_file(APP, default_timeout=90).run())
    assert began.wait(timeout=60), "the app's first run on the run starts loading its models"
    loading = dashboard.preload.preload(open_run(copy))   # the thread the app started (once per run state)
    loading.join(timeout=300)
    assert not loading.is_alive()
    loads = []
    monkeypatch.setattr(dashboard.models, "load_predictor", lambda model_dir: loads.append(model_dir))
    at.switch_page("views/scan.py").run()
    at.file_uploader(key="scan_upload").upload("slice.png", png_bytes(render(generate_slice(
        np.random.default_rng(2), 96, "epidural", 0.2).hu)), "image/png").run()
    assert len(ok(at).metric) == len(MODELS) and not loads


def test_sidebar_operating_point_changes_every_threshold(run_dir):
    at = ok(page("leaderboard"))
    at.sidebar.selectbox(key="preset").set_value("sens95").run()
    board = ok(at).dataframe[0].value.set_index("Model")
    sens95 = ckpt.load_card(run_dir / "resnet18")["thresholds"]["sens95"]
    assert board.loc["ResNet-18", "Threshold"] == pytest.approx(sens95)

def test_read_scan_and_helpers():
    from core.metrics.published import PUBLISHED, confusion_check, rounds_to
    from dashboard.frame import checkpoints_root
    from dashboard.loaders import consensus
    from dashboard.models import read_scan

    with pytest.raises(ScanError):
        read_scan(b"garbage")
    assert read_scan(png_bytes(np.full((8, 8), 7, np.uint8))).image.shape == (8, 8)
    assert rounds_to(0.9734, 989 / 1016) and not rounds_to(0.9777, 1220 / 1247)
    assert checkpoints_root(["--checkpoints", "/x/y"]) == Path("/x/y")
    assert consensus(pd.Series([True, False, True])) == "2 of 3 models call hemorrhage"
    vgg = confusion_check(**PUBLISHED["B"]["confusion"]["VGG16"], printed=PUBLISHED["B"]["models"]["VGG16"])
    verdicts = dict(zip(vgg["metric"], vgg["matches print"]))
    assert verdicts["accuracy"] is True and verdicts["f1"] is False and verdicts["sensitivity"] is False
    assert verdicts["npv"] is None  # not printed


def test_scan_page_huge_upload_is_decoded_small_and_holds_only_the_cam_budget(run_dir, monkeypatch):
    """A 7700 x 7700 PNG (within core.io.imaging's limits) costs about what a normal upload does: every image
    the page hands to a model, a CAM or the cache is at most the display side, memory peaks far below one
    full-size float copy and what stays held is the CAM cache, within its byte budget."""
    import threading
    import tracemalloc

    import core.data.decode
    import core.explain.cam
    import core.inference
    from dashboard.models import CAM_CACHE_BYTES, DISPLAY_MAX_SIDE, cam_store

    sides = []
    for module, name, at_arg in ((core.data.decode, "resize_square", 0), (core.inference, "resize_square", 0),
                                 (core.explain.cam, "explain_image", 1)):
        def spy(*a, _f=getattr(module, name), _i=at_arg, **k):
            sides.append(max(a[_i].shape))
            return _f(*a, **k)
        monkeypatch.setattr(module, name, spy)
    at = ok(page("scan"))
    at.file_uploader(key="scan_upload").upload("small.png", png_bytes(np.zeros((96, 96), np.uint8))).run()
    assert len(ok(at).metric) == len(MODELS)   # warm-up: models loaded, CAM modules imported
    huge = png_bytes(np.zeros((7700, 7700), np.uint8))
    sides.clear()

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    peak, stop = [rss()], threading.Event()

    def sample():
        while not stop.wait(0.005):
            peak[0] = max(peak[0], rss())
    sampler = threading.Thread(target=sample, daemon=True)
    start_rss = rss()
    tracemalloc.start()
    sampler.start()
    try:
        at.file_uploader(key="scan_upload").clear().upload("huge.png", huge, "image/png").run()
        numpy_peak = tracemalloc.get_traced_memory()[1]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        stop.set()
        sampler.join()
        tracemalloc.stop()
    assert len(ok(at).metric) == len(MODELS) and not at.error
    assert at.image[0].captions[0].startswith("raster, 7700 × 7700 px, shown and scored at 1024 × 1024")
    assert len(at.image) == 1 + len(TINY_RUN_CAM_MODELS)
    assert sides and max(sides) <= DISPLAY_MAX_SIDE, "every image given to a model or a CAM is display-sized"
    assert numpy_peak < 7700 * 7700 * 4, "no float32 copy of the full upload"
    print(f"numpy peak {numpy_peak / 1e6:.0f} MB, held {held / 1e6:.0f} MB, RSS peak +{(peak[0] - start_rss) / 1e6:.0f} MB")
    assert peak[0] - start_rss < 500e6
    store = cam_store()
    assert 0 < store.used <= CAM_CACHE_BYTES and len(store) >= len(TINY_RUN_CAM_MODELS)
    assert held < CAM_CACHE_BYTES, "beyond the CAM cache, the upload leaves nothing held"


def test_cam_cache_evicts_the_least_recently_used_beyond_its_byte_budget():
    from dashboard.models import ByteLRU
    lru = ByteLRU(budget=100)
    for key in "abc":
        lru.put(key, key.upper(), 40)
    assert lru.get("a") is None and lru.get("b") == "B" and lru.used == 80   # a went first
    lru.put("d", "D", 40)   # c is now the least recently used (b was just read)
    assert lru.get("c") is None and lru.get("b") == "B" and len(lru) == 2 and lru.used == 80
    lru.put("huge", "H", 101)
    assert lru.get("huge") is None and lru.used <= 100


EXTERNAL = "site_b"


@pytest.fixture(scope="module")
def evaluated_copy(run_dir, tmp_path_factory):
    """A copy of the run (the shared one is never written) with one evaluation stored by core.evaluate: a phantom folder
    of 20 slices named site_b, in RUN/evaluations/site_b."""
    from core.evaluate import main as evaluate_main
    from core.phantom.generate import write_dataset
    root = tmp_path_factory.mktemp("evaluated")
    copy = Path(shutil.copytree(run_dir, root / "checkpoints" / run_dir.name))
    write_dataset(root / EXTERNAL, n=20, size=64, seed=11, stack_size=1)
    assert evaluate_main(["--run", str(copy), "--data", str(root / EXTERNAL), "--bootstrap", "0"]) == 0
    return copy


@pytest.fixture
def evaluated_run(evaluated_copy, monkeypatch):
    monkeypatch.setenv("CHECKPOINTS_DIR", str(evaluated_copy.parent))
    return evaluated_copy


def external_rows(run, model):
    preds = pd.read_csv(run / ckpt.EVALUATIONS / EXTERNAL / "predictions.csv", dtype={"id": str})
    return preds[preds["model"] == model]


def test_the_leaderboard_scores_a_stored_evaluation_and_shows_the_generalization_gap(evaluated_run):
    at = ok(page("leaderboard"))
    assert at.sidebar.selectbox(key="dataset").options == ["Test split (this run)", f"External: {EXTERNAL} (20 cases)"]
    internal = at.dataframe[0].value.set_index("Model")
    at.sidebar.selectbox(key="dataset").set_value(EXTERNAL).run()
    board = ok(at).dataframe[0].value.set_index("Model")
    gaps = at.dataframe[1].value.set_index("Model")
    assert {"Internal AUC", "Internal AUC 95% CI", f"{EXTERNAL}: AUC", f"{EXTERNAL}: AUC 95% CI",
            f"{EXTERNAL}: gap"} <= set(gaps.columns)
    for model in MODELS:
        name, rows = ckpt.load_card(evaluated_run / model)["display_name"], external_rows(evaluated_run, model)
        auc = roc_auc_score(rows["label"], rows["prob"])
        assert board.loc[name, "AUC"] == pytest.approx(auc) and board.loc[name, "Test n"] == 20
        youden = ckpt.load_card(evaluated_run / model)["thresholds"]["youden"]   # the card's, chosen on validation
        assert board.loc[name, "Sensitivity"] == pytest.approx(
            binary_metrics(rows["label"], rows["prob"], youden)["sensitivity"], nan_ok=True)
        test = split_rows(evaluated_run, model)
        assert gaps.loc[name, "Internal AUC"] == pytest.approx(roc_auc_score(test["label"], test["prob"]))
        assert internal.loc[name, "AUC"] == pytest.approx(gaps.loc[name, "Internal AUC"])
        assert gaps.loc[name, f"{EXTERNAL}: AUC"] == pytest.approx(auc)
        assert gaps.loc[name, f"{EXTERNAL}: gap"] == pytest.approx(auc - gaps.loc[name, "Internal AUC"])
    assert f"external set **{EXTERNAL}**" in texts(at)


def test_compare_and_errors_read_the_chosen_evaluation(evaluated_run):
    at = ok(page("compare"))
    at.sidebar.selectbox(key="dataset").set_value(EXTERNAL).run()
    table = ok(at).dataframe[0].value.set_index("Model")
    assert (table[["TN", "FP", "FN", "TP"]].sum(axis=1) == 20).all()
    at.switch_page("views/errors.py").run()   # the one sidebar selector keeps the choice across pages
    assert ok(at).sidebar.selectbox(key="dataset").value == EXTERNAL
    at.selectbox(key="err_model").set_value("mobilenet_v2").run()
    rows = external_rows(evaluated_run, "mobilenet_v2")
    youden = ckpt.load_card(evaluated_run / "mobilenet_v2")["thresholds"]["youden"]
    met = binary_metrics(rows["label"], rows["prob"], youden)
    assert (len(ok(at).dataframe[0].value), len(at.dataframe[1].value)) == (met["fn"], met["fp"])


def test_a_run_without_evaluations_has_no_dataset_choice(run_dir):
    at = ok(page("leaderboard"))
    assert not [s for s in at.sidebar.selectbox if s.key == "dataset"]
    assert "Internal vs external" not in texts(at)


def test_the_data_page_evaluates_a_folder_in_a_subprocess(evaluated_copy, tmp_path, monkeypatch):
    copy = Path(shutil.copytree(evaluated_copy, tmp_path / "checkpoints" / evaluated_copy.name))
    shutil.rmtree(copy / ckpt.EVALUATIONS)
    monkeypatch.setenv("CHECKPOINTS_DIR", str(copy.parent))
    at = ok(page("data"))
    not_a_folder = tmp_path / "scan.png"
    not_a_folder.write_bytes(b"not a folder")
    at.text_input(key="eval_folder").input(str(not_a_folder))
    at.button(key="eval_start").click().run()
    assert [e.value for e in ok(at).error] == [f"`{not_a_folder}` is not a folder on the machine running this app."]
    assert "evaluation" not in at.session_state and not (copy / ckpt.EVALUATIONS).exists()
    at.text_input(key="eval_folder").input(str(evaluated_copy.parents[1] / EXTERNAL))
    at.button(key="eval_start").click().run()
    job = at.session_state["evaluation"]
    assert job["proc"].args[:3] == [sys.executable, "-m", "core.evaluate"]
    assert job["proc"].wait(timeout=600) == 0, open(job["log"]).read()
    ok(at.run())
    assert any(f"Stored the evaluation in {copy / ckpt.EVALUATIONS / EXTERNAL}." in s.value for s in at.success)
    assert at.sidebar.selectbox(key="dataset").options[1] == f"External: {EXTERNAL} (20 cases)"

def test_a_subtypes_run_shows_per_subtype_aucs_and_each_slices_subtype_probabilities(subtypes_run, monkeypatch):
    """The Model cards page prints each subtype's test AUC with its DeLong CI and n; the Scan page each subtypes
    model's subtype probabilities for the slice, those of predictions.csv for a test case."""
    from core.subtypes import SUBTYPES
    monkeypatch.setenv("CHECKPOINTS_DIR", str(subtypes_run.parent))
    at = ok(page("model_cards"))
    at.selectbox(key="card_model").set_value("resnet18").run()
    subtypes = ckpt.load_card(subtypes_run / "resnet18")["metrics"]["test"]["subtypes"]
    assert subtypes and "## Subtypes" in texts(ok(at))
    for flag, e in subtypes.items():
        lo, hi = e["roc_auc_ci"]
        cell = (f"{e['roc_auc']:.3f}" + (f" ({lo:.3f}-{hi:.3f})" if lo is not None else "") +
                f", n {e['n']} ({e['n_pos']} positive)")
        assert f"| {flag} | " in texts(at) and cell in texts(at)
    at = ok(page("scan"))
    at.radio(key="scan_source").set_value("test").run()
    case = ok(at).selectbox(key="scan_case").value
    table = at.dataframe[0].value
    assert list(table.columns) == list(SUBTYPES) and len(table) == 2   # resnet18 and cnn_gru
    row = split_rows(subtypes_run, "resnet18").set_index("id").loc[case]
    np.testing.assert_allclose(table.loc["ResNet-18"].to_numpy(dtype=float),
                               row[[f"p_{f}" for f in SUBTYPES]].to_numpy(dtype=float), atol=1e-4)

def test_scan_page_warns_when_an_upload_is_unlike_the_training_data(run_dir, shared_data):
    """The tiny run was trained on phantoms: a real normal slice from another hospital gets the banner, a phantom
    does not, an empty image is no head CT, and every tile says what its own checks found."""
    at = ok(page("scan"))
    real = next(shared_data.glob("rsna_ich_dev/normal/*.png")).read_bytes()
    at.file_uploader(key="scan_upload").upload("real.png", real, "image/png").run()
    assert any("This scan is unlike the training data" in w.value for w in ok(at).warning), \
        [w.value for w in at.warning]
    notes = [c.value for c in at.caption if "training data" in c.value or "No domain check" in c.value]
    assert len(notes) == len(MODELS) and any("⚠ Outside its training data" in n for n in notes)
    phantom = render(generate_slice(np.random.default_rng(4), 64, "intraparenchymal", 0.3).hu)
    at.file_uploader(key="scan_upload").clear().upload("phantom.png", png_bytes(phantom), "image/png").run()
    assert not [w.value for w in ok(at).warning if "unlike the training data" in w.value]
    at.file_uploader(key="scan_upload").clear().upload("blank.png", png_bytes(np.zeros((64, 64), np.uint8))).run()
    assert any("does not look like a head CT slice" in w.value for w in ok(at).warning)
    assert sum("⚠ saturated" in c.value for c in at.caption) == len(MODELS), "a blank upload is the blank image"


# --- Teach and per-subtype sensitivity -------------------------------------------------------------------------

TELLING = ("hemorrhage", "intraparenchymal", "subdural", "epidural", "subarachnoid", "intraventricular")


def plotly_image(at: AppTest, i: int = 0) -> np.ndarray:
    """The slice a Plotly chart of the page draws (its go.Image's PNG), as RGB."""
    import base64
    source = json.loads(at.get("plotly_chart")[i].proto.spec)["data"][0]["source"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB"))


def test_teach_quiz_hides_the_case_until_revealed_then_scores_and_counts_the_answer(run_dir):
    """The deck's order follows from its cases and seed alone, so the test finds a bleed with a mask in it; before
    the reveal no text, chart or expander names the case, its subtype or "hemorrhage" and no outline is drawn;
    revealing shows the truth, its outline and every network's map, and the summary counts the answer."""
    from core.io.imaging import MASK_COLOUR
    from core.teach import build_deck
    from dashboard.models import case_image as image_of
    deck = build_deck(pd.concat([split_rows(run_dir, m).assign(model=m) for m in MODELS]), dict.fromkeys(MODELS, 0.5))
    pos, case = next((i, c) for i, c in enumerate(deck.cases.index)
                     if deck.cases.at[c, "label"] == 1 and image_of(deck.cases.at[c, "path"])[1] is not None)
    at = ok(page("teach"))
    for _ in range(pos):
        at.button(key="teach_next").click().run()
    shown = " ".join([texts(ok(at)), *(e.label for e in at.expander), *(c.proto.spec for c in at.get("plotly_chart"))])
    assert f"Case {pos + 1} of {len(deck)}" in shown
    path = deck.cases.at[case, "path"]
    assert not [w for w in (*TELLING, case, Path(path).name, Path(path).stem) if w in shown.lower()]
    quiz = plotly_image(at)
    assert not at.image and not (quiz == MASK_COLOUR).all(axis=2).any() and (quiz[..., 0] == quiz[..., 1]).all()
    next(b for b in at.button if b.label == "Bleed").click().run()
    at.button(key="teach_reveal").click().run()
    subtype = deck.cases.at[case, "subtype"]
    assert f"Truth: hemorrhage, {subtype}" in texts(ok(at)) and case in texts(at)
    assert "✓ right call" in texts(at) and "✗ off the bleed" in texts(at)   # no point or box was given
    assert (plotly_image(at) == MASK_COLOUR).all(axis=2).any(), "the reveal outlines the bleed"
    assert len(at.image) == len(TINY_RUN_CAM_MODELS) and len(peak_captions(at)) == len(TINY_RUN_CAM_MODELS)
    summary = next(d.value for d in at.dataframe if d.value.index.name == "Reader")
    assert summary.loc["Learner", "sensitivity"] == "100% (21–100%), 1 of 1"
    assert summary.loc["Learner", f"sensitivity: {subtype}"] == "100% (21–100%), 1 of 1"
    assert summary.loc["Learner", "located"] == "0% (0–79%), 0 of 1"
    assert "1 case answered" in texts(at)
    at.button(key="teach_next").click().run()
    assert "Truth:" not in texts(ok(at)) and not at.image, "the next case is a question again"


def test_compare_shows_each_models_sensitivity_per_subtype_as_core_computes_it(run_dir):
    import re
    from core.metrics.binary import sensitivity_by_subtype
    from core.subtypes import SUBTYPES
    at = ok(page("compare"))
    table = next(d.value for d in at.dataframe if d.value.index.name == "Model")
    assert set(table.columns) <= set(SUBTYPES) and len(table) == len(MODELS)
    for model in MODELS:
        rows = split_rows(run_dir, model)
        youden = ckpt.load_card(run_dir / model)["thresholds"]["youden"]
        expected = sensitivity_by_subtype(rows["label"], (rows["prob"] >= youden).astype(int),
                                          {s: rows[f"sub_{s}"] == 1 for s in SUBTYPES})
        shown = table.loc[ckpt.load_card(run_dir / model)["display_name"]]
        assert set(expected) == set(table.columns)
        for subtype, e in expected.items():
            value, low, high, k, n = map(int, re.fullmatch(r"(\d+)% \((\d+)–(\d+)%\), (\d+) of (\d+)",
                                                            shown[subtype]).groups())
            assert (k, n) == (e["tp"], e["n"])
            for text, exact in zip((value, low, high), (e["sensitivity"], *e["sensitivity_ci"])):
                assert abs(text - 100 * exact) <= 0.5 + 1e-9   # whole percents, as shown
