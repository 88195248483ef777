"""train.py --windows rsna3: three HU windows (brain, subdural, soft tissue) as the channels, from decoding to the card,
core.evaluate and the Scan page; sets without HU are refused."""
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

import train
from core.data.decode import decode_images, to_model_input
from core.data.discover import discover
from core.data.splits import prepare
from core.evaluate import evaluate_run, main as evaluate_main
from core.explain.cam import phantom_cases, phantom_images, score_localization
from core.io import store
from core.io.framing import frame, head_region
from core.io.imaging import load_scan
from core.io.volume import slice_path
from core.nets.build import load_network
from core.nets.cnn import IMAGENET_MEAN, IMAGENET_STD
from core.phantom.generate import generate_slice, render
from core.run import _check_split
from test_datasets import CT_ICH_AFFINE, _train, write_ct_ich
from test_imaging import make_dicom

# (level, width) in HU per channel, as the RSNA 2019 winners windowed: brain, subdural, soft tissue.
RSNA3 = ((40, 80), (80, 200), (40, 380))
HU = np.array([[-1024, -100, 0, 20], [40, 75, 130, 180], [229, 300, 1000, 1976]], np.int16)
APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


def expected_windows(hu: np.ndarray) -> np.ndarray:
    """Each window computed directly: clip((HU - (L - W/2)) / W, 0, 1) * 255, rounded."""
    return np.stack([np.rint(np.clip((hu - (level - width / 2)) / width, 0, 1) * 255)
                     for level, width in RSNA3], -1).astype(np.uint8)


def test_a_ct_dicom_decodes_to_the_three_windows():
    scan = load_scan(make_dicom(HU + 1024), window="rsna3")   # stored + intercept -1024 = HU
    assert scan.image.dtype == np.uint8 and scan.window == "rsna3"
    np.testing.assert_array_equal(scan.image, expected_windows(HU))
    np.testing.assert_array_equal(load_scan(make_dicom(HU + 1024)).image, scan.image[..., 0])


def test_a_nifti_slice_decodes_to_the_three_windows(tmp_path):
    volume = np.stack([HU.T, HU.T[::-1]], axis=-1)   # CT_ICH_AFFINE: a viewed slice is the stored one transposed
    nib.save(nib.Nifti1Image(volume, CT_ICH_AFFINE), tmp_path / "049.nii")
    scan = load_scan(slice_path(tmp_path / "049.nii", 0), window="rsna3")
    assert scan.is_hu and scan.window == "rsna3"
    np.testing.assert_array_equal(scan.image, expected_windows(HU))


def test_head_framing_crops_and_blanks_every_channel_by_the_brain_windows_head():
    phantom = generate_slice(np.random.default_rng(4), 96, "subdural", 0.2)
    hu = np.full((128, 128), -1000.0, np.float32)
    hu[20:116, 8:104] = phantom.hu                   # off centre, so the crop is not the whole slice
    image = load_scan(make_dicom(np.round(hu + 1024).astype(np.int16)), window="rsna3").image
    framed = frame(image, "head")[0]
    brain, head, whole = frame(image[..., 0], "head", head_region(image[..., 0]), image)
    assert framed.shape == (*brain.shape, 3) and max(brain.shape) < 128
    np.testing.assert_array_equal(framed[..., 0], brain)
    np.testing.assert_array_equal(framed, np.where(head[..., None], whole, 0))


def test_augmentation_moves_every_channel_of_an_image_alike():
    """Three equal channels stay equal and match the grey image's augmentation: one affine grid and one
    brightness/contrast jitter per image, drawn from the same stream."""
    grey = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 1, 16, 16), dtype=np.uint8))
    augment = lambda batch: to_model_input(batch, IMAGENET_MEAN, IMAGENET_STD, torch.Generator().manual_seed(3))
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    three, one = augment(grey.expand(-1, 3, -1, -1)), augment(grey)
    torch.testing.assert_close(three, one)
    unnormalised = three * std + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(unnormalised[:, 0], unnormalised[:, 2])


@pytest.fixture(scope="module")
def rsna3_run(tmp_path_factory):
    """A CT-ICH replica (NIfTI in HU) trained with --windows rsna3: a CNN and a classical model."""
    root = tmp_path_factory.mktemp("ct_ich_hu")
    write_ct_ich(root)
    out = tmp_path_factory.mktemp("rsna3_runs") / "rsna3"
    _train(root, out, "--models", "resnet18,knn", "--windows", "rsna3")
    return root, out


def test_the_run_and_every_card_record_the_windows(rsna3_run):
    _, out = rsna3_run
    assert json.loads((out / "run.json").read_text())["windows"] == "rsna3"
    cnn, knn = store.load_card(out / "resnet18"), store.load_card(out / "knn")
    assert (cnn["windows"], cnn["window"], cnn["channels"]) == ("rsna3", "brain, subdural, soft_tissue",
                                                                 "one HU window per channel")
    # The hand-crafted features read the brain window of the three.
    assert (knn["windows"], knn["window"], knn["channels"]) == ("rsna3", "brain", "grey")
    assert knn["latency"]["input_size"] == 64


def test_a_run_resumes_only_with_the_windows_it_was_trained_with(rsna3_run):
    root, out = rsna3_run
    _check_split(prepare(root, 16, framing="head", windows="rsna3"), out, resume=True)
    with pytest.raises(SystemExit, match="--windows rsna3"):
        _check_split(prepare(root, 16, framing="head"), out, resume=True)


def test_training_slices_are_three_windows_framed_and_split_as_the_brain_alone(rsna3_run):
    root, _ = rsna3_run
    paths = discover(root)["path"].tolist()[:12]
    three, brain = (decode_images(paths, 64, framing="head", windows=w) for w in ("rsna3", "brain"))
    assert three.images.shape == (12, 64, 64, 3) and brain.images.shape == (12, 64, 64)
    np.testing.assert_array_equal(three.images[..., 0], brain.images)
    assert (three.phash == brain.phash).all() and (three.dhash == brain.dhash).all()
    assert (three.images[..., 1] != three.images[..., 0]).any() and (three.images[..., 2] != three.images[..., 0]).any()


def test_evaluate_decodes_the_runs_three_windows(rsna3_run):
    _, out = rsna3_run
    report = evaluate_run(out, bootstrap=0)
    assert report["dataset"]["windows"] == "rsna3"
    for model in ("resnet18", "knn"):
        saved = pd.read_csv(out / model / store.PREDICTIONS)
        saved = saved[saved["split"] == "test"].set_index("path")["prob"]
        mine = report["predictions"].query("model == @model").set_index("path")["prob"]
        np.testing.assert_allclose(mine.loc[saved.index], saved, atol=1e-5)


def test_core_explain_renders_phantoms_through_the_runs_windows(rsna3_run):
    cases = phantom_cases(2, 64, seed=1)
    images, masks = phantom_images(cases, "head", "rsna3")
    assert all(i.ndim == 3 and i.shape[2] == 3 and i.shape[:2] == m.shape for i, m in zip(images, masks))
    np.testing.assert_array_equal(images[0][..., 0], phantom_images(cases, "head")[0][0])
    scores, probs, maps = score_localization(load_network(rsna3_run[1] / "resnet18"), images, masks, "gradcam")
    assert scores["n"] == 2 and [m.shape for m in maps] == [m.shape for m in masks]


def png_set(root: Path) -> str:
    """Two CT DICOMs and two PNGs in class folders; returns the first file without HU, in discovery order."""
    for i, label in enumerate(("hemorrhage", "normal", "hemorrhage", "normal")):
        (root / label).mkdir(parents=True, exist_ok=True)
        if i < 2:
            (root / label / f"{i}.dcm").write_bytes(make_dicom(HU + 1024))
        else:
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / label / f"{i}.png")
    return next(p for p in discover(root)["path"] if p.endswith(".png"))


def test_a_set_without_hu_is_refused_in_one_line_naming_its_first_such_file(rsna3_run, tmp_path, capsys):
    first = png_set(tmp_path / "pngs")
    assert train.main(["--data", str(tmp_path / "pngs"), "--windows", "rsna3", "--models", "resnet18",
                       "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemolens: windows rsna3 need CT in Hounsfield units") and first in err
    assert "\n" not in err and not (tmp_path / "run" / "resnet18").exists()
    assert evaluate_main(["--run", str(rsna3_run[1]), "--data", str(tmp_path / "pngs"),
                          "--out", str(tmp_path / "eval")]) == 2
    assert first in capsys.readouterr().err


def test_the_scan_page_scores_an_uploaded_dicom_through_the_runs_three_windows(rsna3_run, monkeypatch):
    from dashboard.models import case_image, read_scan

    root, out = rsna3_run
    monkeypatch.setenv("CHECKPOINTS_DIR", str(out.parent))
    phantom = generate_slice(np.random.default_rng(1), 64, "subdural", 0.2)
    dicom = make_dicom(np.round(phantom.hu + 1024).astype(np.int16))
    assert read_scan(dicom, "rsna3").image.shape == (64, 64, 3)
    path = discover(root)["path"].iloc[0]
    image, mask, problem = case_image(path, "head", "rsna3")
    assert not problem and image.ndim == 3 and image.shape[2] == 3 and (mask is None or mask.shape == image.shape[:2])

    at = AppTest.from_file(APP, default_timeout=90).run()
    at = at.switch_page("views/scan.py").run()
    at.file_uploader(key="scan_upload").upload("IM0001", dicom).run()
    assert not at.exception and not at.error and len(at.metric) == 2
    assert "brain window of the brain, subdural, soft_tissue windows the models read" in at.image[0].captions[0]
    assert not [s for s in at.selectbox if s.key == "scan_window"], "the windows are the run's, not a choice"
    assert not [w for w in at.main.warning if "Hounsfield" in w.value]
    png = io.BytesIO()
    Image.fromarray(render(phantom.hu)).save(png, format="PNG")
    at.file_uploader(key="scan_upload").clear().upload("slice.png", png.getvalue()).run()
    assert not at.exception and len(at.metric) == 2
    assert any("no Hounsfield units" in w.value for w in at.main.warning)

    # A test-split slice decoded on the page scores as at training; a fresh phantom is rendered through the windows.
    at.radio(key="scan_source").set_value("test").run()
    case = at.selectbox(key="scan_case").value
    saved = pd.read_csv(out / "resnet18" / store.PREDICTIONS, dtype={"id": str}).set_index("id")
    shown = next(m.value for m in at.metric if m.label == "ResNet-18")
    assert float(shown.rstrip("%")) / 100 == pytest.approx(saved.at[case, "prob"], abs=0.0005 + 1e-6)
    at.radio(key="scan_source").set_value("phantom").run()
    assert not at.exception and len(at.metric) == 2 and len(at.image) == 2   # the slice and ResNet-18's CAM
    at.switch_page("views/data.py").run()
    assert "subdural, soft_tissue HU windows" in at.caption[0].value
