"""Sequence models (a registry CNN per slice + a bidirectional GRU/LSTM over the stack): shapes and
gradients, stacks from every source of slice order, the shared training engine, per-slice CAMs."""
import io
import json

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from core.io import store as ckpt
from core.io.weights import save_model
from core.data.discover import discover
from core.engine import fit
from core.engine.config import TrainConfig
from core.run import train_run
from core.data.decode import to_model_input
from core.nets.build import create_model, load_network
from core.nets.cnn import IMAGENET_MEAN, IMAGENET_STD
from core.nets.numerics import usable
from core.nets.predict import predict_probs
from core.data.stacks import stack_indices
from core.explain.cam import sequence_cam
from core.data.splits import prepare, read_manifest

K = 5


@pytest.fixture(scope="module", params=["cnn_gru", "cnn_lstm"])
def built(request):
    torch.manual_seed(0)
    return request.param, create_model(request.param, backbone="resnet18", stack_size=K).eval()


def test_centre_and_per_slice_logits_and_gradients_reach_every_slice(built):
    _, model = built
    x = torch.randn(2, K, 3, 32, 32, requires_grad=True)
    centre, every = model(x), model.forward_all(x)
    assert centre.shape == (2, 1) and every.shape == (2, K, 1)
    torch.testing.assert_close(centre, every[:, K // 2])
    centre[0, 0].backward()
    per_slice = x.grad.abs().sum(dim=(2, 3, 4))
    assert (per_slice[0] > 0).all(), "the centre logit must see every slice of its stack"
    assert (per_slice[1] == 0).all(), "and nothing of another stack in the batch"
    with torch.no_grad():   # a single slice is a stack of one
        assert model(x[:, 0]).shape == (2, 1)
        torch.testing.assert_close(model(x[:, 0]), model(x[:, :1]))


def test_checkpoint_round_trip_gives_identical_outputs(built, tmp_path):
    name, model = built
    architecture = {"backbone": model.backbone_name, "stack_size": model.stack_size, "hidden": model.rnn.hidden_size}
    card = {"model": name, "architecture": architecture, "input_size": 32}
    save_model(tmp_path / name, model.state_dict(), card, pd.DataFrame(columns=ckpt.HISTORY_COLUMNS),
                    pd.DataFrame(columns=ckpt.PREDICTION_COLUMNS))
    loaded = load_network(tmp_path / name)
    assert (loaded.model.backbone_name, loaded.model.stack_size, loaded.model.kind) == (
        "resnet18", K, name.removeprefix("cnn_"))
    x = torch.randn(2, K, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))


def test_unknown_backbone_and_kind_are_refused():
    with pytest.raises(ValueError, match="not a registry CNN"):
        create_model("cnn_gru", backbone="svm")
    from core.nets.sequence import build_sequence_model
    with pytest.raises(ValueError, match="gru or lstm"):
        build_sequence_model("rnn")


def test_a_stack_gets_one_augmentation_for_all_its_slices():
    slice_ = torch.randint(0, 256, (1, 1, 24, 24), dtype=torch.uint8)
    stacks = slice_.expand(4, 3, 1, 24, 24)                     # 4 stacks of 3 identical slices
    x = to_model_input(stacks, IMAGENET_MEAN, IMAGENET_STD, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 3, 24, 24)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert not torch.equal(x[0, 0], x[1, 0])                    # stacks differ from one another


# --- stacks ------------------------------------------------------------------------------------------

def _hand_made_manifest() -> pd.DataFrame:
    """Two series in shuffled rows: A (slices 0-3), B (slices 10, 12, 15, numbered as in a CSV),
    and one slice of unknown series."""
    return pd.DataFrame({"series": ["A", "B", None, "A", "B", "A", "A", "B"],
                         "slice_index": [2, "15", None, 0, "10", 3, 1, "12"]})


def test_stack_indices_order_by_slice_and_repeat_edges():
    manifest = _hand_made_manifest()
    np.testing.assert_array_equal(stack_indices(manifest, 5), [
        [3, 6, 0, 5, 5],     # A slice 2: slices 0 1 [2] 3, then 3 repeated
        [4, 7, 1, 1, 1],     # B slice 15, the last one
        [2, 2, 2, 2, 2],     # no series: itself
        [3, 3, 3, 6, 0],     # A slice 0, the first one
        [4, 4, 4, 7, 1],
        [6, 0, 5, 5, 5],
        [3, 3, 6, 0, 5],
        [4, 4, 7, 1, 1]])
    np.testing.assert_array_equal(stack_indices(manifest, 4)[0], [3, 6, 0, 5])   # the row at k // 2
    np.testing.assert_array_equal(stack_indices(manifest, 1)[:, 0], np.arange(8))
    np.testing.assert_array_equal(stack_indices(manifest.drop(columns="series"), 3), np.repeat(
        np.arange(8)[:, None], 3, axis=1))


def test_a_series_cut_by_given_split_folders_never_stacks_across_them():
    manifest = _hand_made_manifest().assign(split=["train", "val", "test", "train", "val", "test", "train", "val"])
    stacks = stack_indices(manifest, 5)
    split = manifest["split"].to_numpy()
    assert (split[stacks] == split[:, None]).all()
    np.testing.assert_array_equal(stacks[5], [5] * 5)            # A slice 3 alone in test
    np.testing.assert_array_equal(stacks[0], [3, 6, 0, 0, 0])    # A slices 0 1 [2] in train, 2 repeated


def test_darshil_series_stack_in_slice_number_order(shared_data):
    root = shared_data / "ct_series_darshil"
    if not root.is_dir():
        pytest.skip("ct_series_darshil is absent")
    table = discover(root).assign(split=lambda t: t["given_split"])
    assert table["series"].notna().all()
    assert {"data/N1", "data/5", "data/6", "data/IMG-0001", "data/12"} <= set(table["series"])
    stacks = stack_indices(table, K)
    series, number = table["series"].to_numpy(), table["slice_index"].to_numpy(dtype=int)
    assert (series[stacks] == series[:, None]).all() and (stacks[:, K // 2] == np.arange(len(table))).all()
    assert (np.diff(number[stacks], axis=1) >= 0).all()
    # Inside a series the neighbours are the next file numbers: N1 runs 41, 42, ... without gaps.
    row = table.index[(table["series"] == "data/N1") & (table["slice_index"] == 100)][0]
    assert number[stacks[row]].tolist() == [98, 99, 100, 101, 102]


def _dicom(path, uid: str, x_mm: float, instance: int, seed: int) -> None:
    """A tiny sagittal CT slice: its order is along x, which z (constant) cannot tell."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta, ds.Modality, ds.SOPClassUID, ds.SeriesInstanceUID = meta, "CT", CTImageStorage, uid
    ds.InstanceNumber, ds.ImagePositionPatient = instance, [x_mm, 0, 0]
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]   # rows along y, columns down z: normal -x
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.random.default_rng(seed).integers(1000, 1120, (16, 16)).astype(np.int16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())


def test_dicom_series_are_ordered_along_the_slice_normal(tmp_path):
    # 14 series of 3 slices (7 per class: enough independent groups for a split). File names and
    # InstanceNumber both disagree with the position: x = 10, 5, 0 have instances 1, 3, 2.
    uids = {}
    for s in range(14):
        folder = tmp_path / ("hemorrhage" if s % 2 else "normal")
        folder.mkdir(exist_ok=True)
        uids[s] = generate_uid()
        for name, x_mm, instance in (("c", 0.0, 2), ("a", 5.0, 3), ("b", 10.0, 1)):
            _dicom(folder / f"{s:02d}{name}.dcm", uids[s], x_mm, instance, seed=s * 3 + instance)
    man = prepare(tmp_path, size=16).manifest
    assert set(man["series"]) == set(uids.values())
    stem = man["path"].str[-7:-4].to_numpy()
    for s, uid in uids.items():
        rows = man.index[man["series"] == uid]
        ordered = man.loc[rows].sort_values("slice_index")
        assert [p[-5] for p in ordered["path"]] == ["b", "a", "c"]      # x = 10, 5, 0: along the normal -x
        middle = rows[stem[rows] == f"{s:02d}a"][0]
        assert [stem[i][-1] for i in stack_indices(man, 3)[middle]] == ["b", "a", "c"]


# --- the shared training engine -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gru_run(tmp_path_factory):
    """cnn_gru trained on 100 phantom slices (20 stacks) at 32 px: killed in its second epoch (its
    card never written), then resumed from epoch 1 by train_run, as `train.py --resume` does."""
    from core.phantom.generate import write_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, 100, size=32, seed=0, stack_size=K)
    out = tmp_path_factory.mktemp("runs") / "seq"
    cfg = TrainConfig(models=["cnn_gru"], out=str(out), epochs=2, image_size=32, batch_size=16,
                      device="cpu", sequence_backbone="resnet18", stack_size=K)
    prepare_fn = lambda size: prepare(root, size, seed=0)
    train_one_epoch = fit.train_one_epoch

    def killed_in_epoch_2(training, epoch, *args, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_one_epoch(training, epoch, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit, "train_one_epoch", killed_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, root, prepare_fn)
    assert json.loads((out / "cnn_gru" / "last.json").read_text())["epoch"] == 1
    cards = train_run(TrainConfig(**{**cfg.__dict__, "resume": True}), root, prepare_fn)
    return out, cards["cnn_gru"]


def test_fit_sequence_writes_a_contract_complete_run_folder(gru_run):
    out, card = gru_run
    folder = out / "cnn_gru"
    assert card["weights_sha256"] == ckpt.load_card(folder)["weights_sha256"]
    assert card["family"] == "sequence" and card["architecture"]["backbone"] == "resnet18"
    assert card["architecture"]["stack_size"] == K and card["input_size"] == 32
    assert {"default", "youden", "sens95"} <= set(card["thresholds"]) and set(card["metrics"]) == {"val", "test"}
    assert card["latency"]["stack_size"] == K and card["latency"]["batch1_ms_p50"] > 0
    history = pd.read_csv(folder / "history.csv")
    assert history["epoch"].tolist() == [1, 2] and card["training"]["epochs"] == 2   # resumed, not restarted
    split = read_manifest(out / "split.csv")
    preds = pd.read_csv(folder / "predictions.csv")
    assert len(preds) == int(split["split"].isin(["val", "test"]).sum()) and preds["prob"].between(0, 1).all()
    assert not list(folder.glob("last.*"))


def test_stack_gmacs_count_every_slice(gru_run):
    from core.nets.measure import count_gmacs
    _, card = gru_run
    one_slice = count_gmacs(create_model("resnet18"), 32)
    assert K * one_slice <= card["gmacs"] <= K * one_slice * 1.1


def test_loaded_sequence_model_reproduces_saved_predictions(gru_run):
    out, _ = gru_run
    loaded = load_network(out / "cnn_gru")
    split = read_manifest(out / "split.csv")
    data = prepare(json.loads((out / "run.json").read_text())["data_roots"], loaded.card["input_size"], seed=0)
    assert data.manifest["sha256"].tolist() == split["sha256"].tolist()
    test = np.flatnonzero(split["split"].to_numpy() == "test")
    rows = stack_indices(split, loaded.card["architecture"]["stack_size"])[test]
    # In the numerics it was trained and scored in: bf16 where the machine's timing chose it.
    numerics = usable(loaded.card["training"]["numerics"]["choice"], torch.device("cpu"))
    probs = predict_probs(numerics.model(loaded.model), data.images, loaded.card["mean"], loaded.card["std"],
                          rows=rows, numerics=numerics)
    preds = pd.read_csv(out / "cnn_gru" / "predictions.csv")
    np.testing.assert_allclose(probs, preds.loc[preds["split"] == "test", "prob"].to_numpy(), atol=1e-5)


# --- per-slice class activation maps ---------------------------------------------------------------------

def test_sequence_cam_gives_one_map_per_slice(gru_run):
    out, _ = gru_run
    loaded = load_network(out / "cnn_gru")
    split = read_manifest(out / "split.csv")
    data = prepare(json.loads((out / "run.json").read_text())["data_roots"], 64, seed=0)
    centre = int(np.flatnonzero((split["split"] == "test").to_numpy() & (split["label"] == 1).to_numpy())[0])
    stack = torch.as_tensor(data.images[stack_indices(split, K)[centre]])[None, :, None]
    x = to_model_input(stack, IMAGENET_MEAN, IMAGENET_STD)
    maps = sequence_cam(loaded.model, x)
    assert maps.shape == (K, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert maps.max() == 1, "some slice must carry evidence for the centre logit"
    assert all(p.grad is None for p in loaded.model.parameters()) and all(
        p.requires_grad for p in loaded.model.parameters())
    with pytest.raises(ValueError, match="one"):
        sequence_cam(loaded.model, x[0])


def test_slice_order_uses_position_then_instance_then_file_name():
    from types import SimpleNamespace as Scan
    from core.data.stacks import slice_order
    unknown = Scan(slice_position=None, instance_number=None)
    names = ["N7_0_110.png", "N7_0_9.png", "N7_0_100.png", "IMG-0001-00003.dcm", "scan.png"]
    assert slice_order([unknown] * 5, names) == [3, 1, 2, 0, 4]   # by number (3, 9, 100, 110), unnumbered last
    dicom = [Scan(slice_position=p, instance_number=n) for p, n in ((12.5, 1), (-7.5, 3), (2.5, 2))]
    assert slice_order(dicom, ["a", "b", "c"]) == [1, 2, 0]        # position wins over instance and name
    by_instance = [Scan(slice_position=None, instance_number=n) for n in (3, 1, 2)]
    assert slice_order(by_instance, ["x_9", "y_1", "z_5"]) == [1, 2, 0]
