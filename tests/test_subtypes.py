"""`train.py --subtypes`: a multi-label head (any + the five subtypes), its masked loss, targets, cards, predictions,
maps and evaluation."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import train
from core.data.discover import subtype_flags
from core.engine.loop import MaskedBCE
from core.evaluate import evaluate_run, evaluation_cases
from core.explain.cam import cam_batch
from core.inference import load_predictor, predict_outputs_all
from core.io import store
from core.metrics.stats import delong_auc
from core.nets.build import create_model
from core.report import markdown, leaderboard, misclassified
from core.subtypes import FLAG_COLUMNS, OUTPUTS, SUBTYPES

NAN = float("nan")


def test_masked_loss_ignores_unlabelled_targets():
    """Against torch's own BCE over the labelled entries alone: a NaN target adds nothing, whatever its logit."""
    torch.manual_seed(0)
    logits = torch.randn(4, 6, requires_grad=True)
    targets = torch.tensor([[1, 0, 1, 0, 0, 0], [1, NAN, NAN, NAN, NAN, NAN],
                            [0, 0, 0, 0, 0, 0], [1, 1, 0, NAN, 0, 1]])
    loss_fn = MaskedBCE.balanced(targets)
    # Labelled negatives over positives per output (at least one positive): 1/3, 2/1, 2/1, 2/1 (none), 3/1, 2/1.
    pos_weight = torch.tensor([1 / 3, 2, 2, 2, 3, 2])
    torch.testing.assert_close(loss_fn.pos_weight, pos_weight)
    known = ~targets.isnan()
    rows, cols = known.nonzero(as_tuple=True)
    reference = F.binary_cross_entropy_with_logits(logits[rows, cols], targets[rows, cols],
                                                   pos_weight=pos_weight[cols])
    loss = loss_fn(logits, targets)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    changed = logits.detach().clone()
    changed[~known] = 50.0   # a confident call on a subtype nobody labelled costs nothing
    torch.testing.assert_close(loss_fn(changed, targets), reference.detach())


def test_one_output_loss_is_the_balanced_bce_it_replaces():
    logits, labels = torch.randn(8), torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1])
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(5 / 3))(logits, labels)
    torch.testing.assert_close(MaskedBCE.balanced(labels)(logits[:, None], labels), expected)


def test_subtype_flags_from_names_and_published_flags():
    table = pd.DataFrame({"label": [0, 1, 1, 1, 1, 1],
                          "subtype": ["", "subdural", "SDH+sah", "", "real", "Intraventricular"]})
    flags = subtype_flags(table)
    assert list(flags.columns) == FLAG_COLUMNS
    named = [set(), {"subdural"}, {"subdural", "subarachnoid"}, None, None, {"intraventricular"}]   # None: unknown
    expected = [[NAN] * 5 if n is None else [float(s in n) for s in SUBTYPES] for n in named]
    np.testing.assert_array_equal(flags.to_numpy(), np.array(expected, dtype=float))
    # A published layout's own flags; a bleed whose readers agreed on no subtype is unknown, not negative.
    published = pd.DataFrame({"label": [1, 1, 0], "subtype": ["subdural", "", ""],
                              **{c: [int(c == "sub_subdural"), 0, 0] for c in FLAG_COLUMNS}})
    np.testing.assert_array_equal(subtype_flags(published)["sub_subdural"].to_numpy(), [1, NAN, 0])
    assert subtype_flags(published).iloc[1].isna().all()


def test_the_hemorrhage_map_of_a_subtypes_head_is_a_one_logit_models(tmp_path):
    """Grad-CAM targets output 0 alone: the same maps as a one-logit network holding that output's weights."""
    torch.manual_seed(0)
    six = create_model("resnet18", num_outputs=6).eval()
    one = create_model("resnet18").eval()
    state = six.state_dict()
    one.load_state_dict({**state, "fc.weight": state["fc.weight"][:1], "fc.bias": state["fc.bias"][:1]})
    x = torch.randn(2, 3, 64, 64)
    for target in (1, 0):
        np.testing.assert_allclose(cam_batch(six, "resnet18", x, target=target),
                                   cam_batch(one, "resnet18", x, target=target), atol=1e-5)


def test_subtypes_on_a_dataset_naming_none_is_one_line(tiny_phantoms, tmp_path, capsys):
    data = tmp_path / "plain"
    for folder in ("hemorrhage", "normal"):
        shutil.copytree(tiny_phantoms / folder, data / folder)   # class folders alone: no labels.csv, no subtype
    assert train.main(["--data", str(data), "--models", "resnet18", "--epochs", "1", "--image-size", "32",
                       "--subtypes", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemolens: --subtypes needs hemorrhage subtype labels") and "\n" not in err
    assert not (tmp_path / "run" / "resnet18").exists()


@pytest.mark.parametrize("model", ["resnet18", "cnn_gru"])
def test_a_subtypes_run_writes_six_outputs_per_subtype_aucs_and_p_columns(subtypes_run, model):
    card = store.load_card(subtypes_run / model)
    assert card["outputs"] == list(OUTPUTS) and card["training"]["args"]["subtypes"] is True
    assert store.read_json(subtypes_run / "run.json")["subtypes"] is True
    preds = pd.read_csv(subtypes_run / model / store.PREDICTIONS)
    test = preds[preds["split"] == "test"]
    subtypes = card["metrics"]["test"]["subtypes"]
    assert subtypes, "the phantoms' test split holds bleeds of named subtypes"
    for flag, entry in subtypes.items():   # each AUC is DeLong's on the rows labelled for that subtype
        labelled = test[test[f"sub_{flag}"].notna()]
        auc, lo, hi = delong_auc(labelled[f"sub_{flag}"].astype(int), labelled[f"p_{flag}"])
        assert entry["n"] == len(labelled) and entry["roc_auc"] == pytest.approx(auc)
        assert entry["roc_auc_ci"] == pytest.approx([lo, hi])
    for flag in set(SUBTYPES) - set(subtypes):   # omitted: one class among its labelled test rows
        assert test.loc[test[f"sub_{flag}"].notna(), f"sub_{flag}"].nunique() < 2
    assert "subtypes" in card["metrics"]["val"]


def test_a_loaded_subtypes_model_reproduces_its_predictions(subtypes_run):
    """The card rebuilds the six-output head; P(hemorrhage) stays column 0 and `prob`."""
    test, images, _ = evaluation_cases(subtypes_run, None, 32)   # the test split, framed as trained
    predictors = {m: load_predictor(subtypes_run / m) for m in ("resnet18", "cnn_gru")}
    outputs = predict_outputs_all(predictors, lambda size: images, manifest=test)
    for model, out in outputs.items():
        preds = pd.read_csv(subtypes_run / model / store.PREDICTIONS).query("split == 'test'")
        assert out.shape == (len(test), 6) and predictors[model].outputs == list(OUTPUTS)
        np.testing.assert_allclose(out[:, 0], preds["prob"], atol=1e-5)
        np.testing.assert_allclose(out[:, 1:], preds[[f"p_{f}" for f in SUBTYPES]], atol=1e-5)


def test_evaluation_reports_per_subtype_aucs(subtypes_run):
    report = evaluate_run(subtypes_run, bootstrap=0)
    card = store.load_card(subtypes_run / "resnet18")
    got = report["models"]["resnet18"]["subtypes"]
    assert got.keys() == card["metrics"]["test"]["subtypes"].keys()
    for flag, entry in got.items():
        assert entry["roc_auc"] == pytest.approx(card["metrics"]["test"]["subtypes"][flag]["roc_auc"], abs=1e-4)
    text = markdown(report, leaderboard(report), misclassified(report))
    assert "## Subtypes" in text and f"| ResNet-18 | {next(iter(got))} |" in text


def test_resuming_into_another_head_is_refused(subtypes_run, tiny_phantoms, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in (store.SPLIT, "run.json"):
        shutil.copy(subtypes_run / name, out / name)
    with pytest.raises(SystemExit, match="was trained with --subtypes; resume as it was"):
        train.main(["--data", str(tiny_phantoms), "--models", "resnet18", "--epochs", "1", "--image-size", "32",
                    "--batch-size", "16", "--resume", "--out", str(out)])
