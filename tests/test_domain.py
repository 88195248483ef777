"""The domain (out-of-distribution) check: its statistics against an independent Mahalanobis, its calibration, what
a run stores and verifies, and real slices and non-head images flagged by models trained on phantoms."""
import glob
import json

import numpy as np
import pydicom.data
import pytest
from scipy.spatial.distance import mahalanobis

from conftest import TINY_RUN_MODELS
from core.data.decode import framed_square
from core.inference import domain_scores_all, image_domain, image_domain_scores, load_predictor
from core.io import store
from core.io.framing import head_region
from core.io.imaging import load_scan
from core.metrics.domain import PASS_RATE, DomainModel, fit_domain, input_problem, out_of_domain
from core.phantom.generate import generate_slice, render, write_dataset


def test_scores_are_the_mahalanobis_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 6)) * [1, 2, 3, 1, 1, 5] + [0, 0, 0, 0, 0, 10]
    labels = np.repeat([0, 1], 100)
    train[labels == 1, 0] += 4
    model = fit_domain(train, labels, train[:50])
    cases = rng.normal(size=(5, 6)) * 3
    z = (cases - model.centre) / model.scale
    expected = [min(mahalanobis(row, mean, model.precision) for mean in model.means) for row in z]
    np.testing.assert_allclose(model.scores(cases), expected, rtol=1e-9)
    assert model.means.shape == (2, 6)


def test_the_threshold_passes_the_stated_share_of_fresh_in_distribution_cases_and_flags_shifted_ones():
    rng = np.random.default_rng(1)
    cov = np.diag(np.linspace(0.5, 3, 40))
    draw = lambda n, shift=0.0: rng.multivariate_normal(np.full(40, shift), cov, size=n)
    model = fit_domain(draw(400), rng.integers(0, 2, 400), draw(400))
    passed = 1 - model.unusual(model.scores(draw(4000))).mean()
    assert abs(passed - PASS_RATE) < 0.03
    assert model.unusual(model.scores(draw(200, shift=1.5))).mean() > 0.95
    assert model.percentile(model.scores(draw(1, shift=5)))[0] == 1.0


def test_a_constant_feature_and_a_round_trip_through_tensors():
    rng = np.random.default_rng(2)
    train = np.c_[rng.normal(size=(50, 3)), np.ones(50)]
    model = fit_domain(train, np.zeros(50), train)
    again = DomainModel.from_tensors(model.tensors())
    np.testing.assert_allclose(again.scores(train), model.scores(train))
    assert np.isfinite(model.scores(train)).all() and again.threshold == model.threshold
    with pytest.raises(ValueError, match="two training cases"):
        fit_domain(train[:1], [0], train)


@pytest.mark.parametrize("image, problem", [
    (np.zeros((64, 64), np.uint8), "no head found"),
    ((np.add.outer(*(np.abs(np.arange(64) - 32),) * 2) < 24).astype(np.uint8) * 255, "brain densities"),
])
def test_cheap_input_checks_flag_an_empty_image_and_a_bare_mask(image, problem):
    assert problem in input_problem(image, head_region(image))


def test_a_phantom_head_passes_the_cheap_input_checks():
    image = render(generate_slice(np.random.default_rng(0), 128, None, 0.3).hu)
    assert input_problem(image, head_region(image)) == ""


def test_a_run_stores_verified_domain_statistics_for_every_model_with_features(tiny_run, tmp_path):
    for model in TINY_RUN_MODELS:
        card = store.load_card(tiny_run / model)
        if model == "ensemble_soft":   # it reads its members' probabilities: they are checked
            assert "domain" not in card and load_predictor(tiny_run / model).domain is None
            continue
        assert card["domain"]["calibrated_on"] == {"split": "val", "n": card["dataset"]["counts"]["val"]["n"]}
        assert store.sha256_file(tiny_run / model / store.DOMAIN) == card["domain"]["sha256"]
        assert load_predictor(tiny_run / model).domain.threshold == card["domain"]["threshold"]
    copy = tmp_path / "resnet18"
    copy.mkdir()
    for name in (store.CARD, store.WEIGHTS, store.DOMAIN):
        (copy / name).write_bytes((tiny_run / "resnet18" / name).read_bytes())
    raw = bytearray((copy / store.DOMAIN).read_bytes())
    raw[-3] ^= 0xFF
    (copy / store.DOMAIN).write_bytes(bytes(raw))
    with pytest.raises(store.CheckpointError, match="sha256"):
        load_predictor(copy)


def _flagged(run_dir, predictors: dict, images: list[np.ndarray], framing: str) -> np.ndarray:
    """Per image, whether the Scan page raises its banner: the run's image check, or half or more of the models'."""
    framed = lambda size: np.stack([framed_square(i, size, framing)[0] for i in images])
    run_place = image_domain(run_dir)[0].percentile(image_domain_scores(image_domain(run_dir), framed))
    models = np.array([predictors[m].domain.percentile(s) for m, s in domain_scores_all(predictors, framed).items()])
    return np.array([out_of_domain(r, list(places)) for r, places in zip(run_place, models.T)])


def test_a_run_trained_on_phantoms_flags_real_slices_and_a_non_head_dicom_but_not_fresh_phantoms(
        tiny_run, shared_data, tmp_path):
    framing = json.loads((tiny_run / "run.json").read_text())["framing"]
    predictors = {m: p for m in TINY_RUN_MODELS if (p := load_predictor(tiny_run / m)).domain}
    real = [load_scan(f).image for f in sorted(glob.glob(str(shared_data / "ct_series_darshil/data/*/Without*/*.jpg")))
            [::25] + sorted(glob.glob(str(shared_data / "rsna_ich_dev/normal/*.png")))[::10]]
    assert _flagged(tiny_run, predictors, real, framing).mean() >= 0.9
    non_head = load_scan(pydicom.data.get_testdata_file("CT_small.dcm")).image
    assert _flagged(tiny_run, predictors, [non_head], framing).all()
    write_dataset(tmp_path / "fresh", n=40, size=64, seed=11)
    fresh = [load_scan(f).image for f in sorted(glob.glob(str(tmp_path / "fresh/*hemorrhage/*.png"))
                                                + glob.glob(str(tmp_path / "fresh/normal/*.png")))]
    assert len(fresh) == 40
    assert _flagged(tiny_run, predictors, fresh, framing).mean() <= 0.2


def test_the_run_stores_its_image_check_calibrated_on_validation(tiny_run):
    domain, facts = image_domain(tiny_run)
    assert facts["calibrated_on"]["split"] == "val" and facts["pass_rate"] == PASS_RATE
    assert (domain.validation <= domain.threshold).mean() >= PASS_RATE
    assert image_domain(tiny_run.parent) is None, "a folder without the check has none, and says so"


def test_the_banner_needs_a_case_beyond_every_validation_case_not_a_tile_flag():
    assert not out_of_domain(0.99, [0.99] * 4), "past the 95th percentile everywhere, but inside the validation range"
    assert out_of_domain(1.0, [0.2] * 4), "the run's image check alone, beyond all its validation slices"
    assert out_of_domain(None, [1.0, 1.0, 0.5, 0.1]) and not out_of_domain(None, [1.0, 0.9, 0.5, 0.1])
    assert not out_of_domain(None, [])
