"""core.metrics, core.stats and core.published against scikit-learn, scipy and worked examples."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, binomtest, mannwhitneyu, norm
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from core.metrics import binary as M
from core.metrics.published import PUBLISHED, RECOMPUTED, published_rows

Z95 = norm.ppf(0.975)


def approx(expected, **kw):
    return pytest.approx(expected, nan_ok=True, **kw)


def random_case(seed: int):
    """Seeded labels with both classes, probabilities (every third case coarsened into ties), threshold."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 150))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    prob = np.clip(rng.normal(0.4 + 0.2 * y, 0.25), 0, 1)
    if seed % 3 == 0:
        prob = np.round(prob, 1)
    return y, prob, float(rng.choice([0.5, rng.uniform(0.05, 0.95)]))


def pairwise_auc(y, prob):
    """Mann-Whitney AUC by brute force over every positive/negative pair, ties counted 1/2."""
    pos, neg = prob[y == 1][:, None], prob[y == 0][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


# --- binary_metrics / from_confusion vs scikit-learn ------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_binary_metrics_match_sklearn(seed):
    y, prob, t = random_case(seed)
    pred = (prob >= t).astype(int)
    m = M.binary_metrics(y, prob, threshold=t)
    nan = np.nan
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == tuple(skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    assert (m["n"], m["n_pos"]) == (len(y), y.sum())
    assert m["accuracy"] == approx(skm.accuracy_score(y, pred))
    assert m["sensitivity"] == approx(skm.recall_score(y, pred, zero_division=nan))
    assert m["specificity"] == approx(skm.recall_score(y, pred, pos_label=0, zero_division=nan))
    assert m["precision"] == approx(skm.precision_score(y, pred, zero_division=nan))
    assert m["npv"] == approx(skm.precision_score(y, pred, pos_label=0, zero_division=nan))
    assert m["f1"] == approx(skm.f1_score(y, pred, zero_division=nan))
    assert m["balanced_accuracy"] == approx(skm.balanced_accuracy_score(y, pred))
    if pred.min() != pred.max():  # sklearn reports MCC 0 for a constant prediction; ours is NaN
        assert m["mcc"] == approx(skm.matthews_corrcoef(y, pred))
    assert m["roc_auc"] == approx(skm.roc_auc_score(y, prob))
    assert m["pr_auc"] == approx(skm.average_precision_score(y, prob))
    assert m["brier"] == approx(skm.brier_score_loss(y, prob))
    for key, (k, n) in {"accuracy": (m["tp"] + m["tn"], m["n"]), "sensitivity": (m["tp"], m["n_pos"]),
                        "specificity": (m["tn"], m["n"] - m["n_pos"]), "precision": (m["tp"], pred.sum()),
                        "npv": (m["tn"], len(y) - pred.sum())}.items():
        expected = binomtest(k, n).proportion_ci(method="wilson") if n else (nan, nan)
        assert m[f"{key}_ci"] == approx(tuple(expected)), key


def test_threshold_is_inclusive():
    m = M.binary_metrics([0, 1, 1], [0.2, 0.5, 0.7], threshold=0.5)
    assert (m["tp"], m["fn"]) == (2, 0)


def test_one_class_gives_nan_never_raises():
    normals = M.binary_metrics([0, 0, 0, 0], [0.1, 0.2, 0.6, 0.3], bootstrap=20)
    assert normals["specificity"] == 0.75 and normals["accuracy"] == 0.75
    for key in ("sensitivity", "balanced_accuracy", "mcc", "roc_auc", "pr_auc"):
        assert math.isnan(normals[key]), key
    for key in ("sensitivity_ci", "roc_auc_ci", "f1_ci", "mcc_ci", "pr_auc_ci"):
        assert all(math.isnan(v) for v in normals[key]), key
    lesions = M.binary_metrics([1, 1, 1], [0.9, 0.8, 0.2])
    assert lesions["sensitivity"] == pytest.approx(2 / 3) and math.isnan(lesions["specificity"])
    assert math.isnan(lesions["roc_auc"]) and math.isnan(lesions["pr_auc"])
    assert lesions["brier"] == pytest.approx(np.mean([0.01, 0.04, 0.64]))


def test_single_case():
    m = M.binary_metrics([1], [0.7])
    assert m["accuracy"] == 1.0 and m["sensitivity"] == 1.0 and m["f1"] == 1.0
    assert math.isnan(m["specificity"]) and math.isnan(m["roc_auc"])
    assert m["accuracy_ci"] == approx(tuple(binomtest(1, 1).proportion_ci(method="wilson")))


def test_no_predicted_positives_gives_nan_precision():
    m = M.binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])
    assert m["tp"] + m["fp"] == 0
    assert math.isnan(m["precision"]) and math.isnan(m["mcc"]) and m["sensitivity"] == 0.0
    assert all(math.isnan(v) for v in m["precision_ci"])


def test_constant_scores_give_auc_half():
    y = np.array([0, 1, 0, 1, 1])
    m = M.binary_metrics(y, np.full(5, 0.3))
    assert m["roc_auc"] == 0.5 == skm.roc_auc_score(y, np.full(5, 0.3))
    assert m["pr_auc"] == pytest.approx(y.mean())


def test_ties_count_half():
    y = np.array([0, 0, 1, 1, 0, 1])
    prob = np.array([0.2, 0.5, 0.5, 0.9, 0.5, 0.2])
    auc, lo, hi = M.delong_auc(y, prob)
    assert auc == pytest.approx(pairwise_auc(y, prob)) == skm.roc_auc_score(y, prob)
    assert M.binary_metrics(y, prob)["roc_auc"] == pytest.approx(auc)


def test_perfect_separation():
    y = np.array([0, 0, 0, 1, 1])
    m = M.binary_metrics(y, [0.1, 0.2, 0.3, 0.8, 0.9])
    for key in ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "mcc", "roc_auc", "pr_auc"):
        assert m[key] == 1.0, key
    assert m["roc_auc_ci"] == (1.0, 1.0)  # DeLong's variance vanishes here (documented)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        M.binary_metrics([], [])
    with pytest.raises(ValueError):
        M.binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        M.binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError):
        M.from_confusion(1, -1, 0, 1)


def test_bootstrap_intervals_added_on_request():
    y, prob, _ = random_case(1)
    assert "f1_ci" not in M.binary_metrics(y, prob)
    m = M.binary_metrics(y, prob, bootstrap=200)
    for key in ("f1", "mcc", "balanced_accuracy", "pr_auc"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi, key


# --- Wilson ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 30, 511, 1016])
def test_wilson_equals_scipy(n):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        for conf in (0.9, 0.95, 0.99):
            ci = binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
            assert M.wilson_interval(k, n, conf) == approx((ci.low, ci.high), abs=1e-12)


def test_wilson_published_examples_and_empty():
    # Newcombe (1998), Stat Med 17:857, Table I, method 3 (score interval without correction).
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                             (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        assert M.wilson_interval(k, n) == pytest.approx((lo, hi), abs=5e-5)
    assert all(math.isnan(v) for v in M.wilson_interval(0, 0))


# --- DeLong ----------------------------------------------------------------------------------

def delong_direct(y, rows):
    """DeLong et al. (1988) from the pairwise kernel, O(m*n): the reference for the midrank version."""
    rows = np.atleast_2d(rows)
    pos, neg = rows[:, y == 1][:, :, None], rows[:, y == 0][:, None, :]
    psi = (pos > neg) + 0.5 * (pos == neg)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]
    return psi.mean(axis=(1, 2)), cov


@pytest.mark.parametrize("seed", range(10))
def test_delong_matches_sklearn_and_direct_formula(seed):
    y, prob, _ = random_case(seed)
    if min(y.sum(), len(y) - y.sum()) < 2:
        y[2:4] = [0, 1]
    other = np.clip(prob + np.random.default_rng(seed).normal(0, 0.2, len(y)), 0, 1)
    auc, cov = delong_direct(y, np.vstack([prob, other]))
    got, lo, hi = M.delong_auc(y, prob)
    assert got == pytest.approx(skm.roc_auc_score(y, prob)) and got == pytest.approx(auc[0])
    half = Z95 * math.sqrt(cov[0, 0])
    assert (lo, hi) == pytest.approx((max(auc[0] - half, 0), min(auc[0] + half, 1)))
    z = (auc[0] - auc[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert M.delong_test(y, prob, other) == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))


def test_delong_hanley_mcneil_example():
    # Hanley & McNeil (1982), Radiology 143:29: 109 CT images rated 1-5; published AUC 0.893 and
    # SE 0.032 (their approximation, so DeLong's SE agrees only roughly).
    normal, abnormal = np.repeat(range(1, 6), [33, 6, 6, 11, 2]), np.repeat(range(1, 6), [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    auc, lo, hi = M.delong_auc(y, np.r_[normal, abnormal])
    assert round(auc, 3) == 0.893
    assert (hi - lo) / (2 * Z95) == pytest.approx(0.032, rel=0.1)


def test_delong_se_agrees_with_bootstrap():
    rng = np.random.default_rng(7)
    y = np.r_[np.zeros(180, int), np.ones(120, int)]
    prob = 1 / (1 + np.exp(-rng.normal(1.2 * y, 1.0)))
    auc, lo, hi = M.delong_auc(y, prob)
    neg, pos = prob[y == 0], prob[y == 1]
    boot_pos = pos[rng.integers(0, len(pos), (2000, len(pos)))]
    boot_neg = neg[rng.integers(0, len(neg), (2000, len(neg)))]
    boot_auc = mannwhitneyu(boot_pos, boot_neg, axis=1).statistic / (len(pos) * len(neg))
    assert (hi - lo) / (2 * Z95) == pytest.approx(boot_auc.std(ddof=1), rel=0.1)
    # bootstrap_ci with an AUC metric gives nearly the same interval as DeLong.
    def fast_auc(yy, pp):
        return mannwhitneyu(pp[yy == 1], pp[yy == 0]).statistic / (yy.sum() * (1 - yy).sum())
    assert M.bootstrap_ci(y, prob, fast_auc, n_boot=1000) == pytest.approx((lo, hi), abs=0.015)


def test_delong_test_behaviour():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    good, noise = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1), rng.random(200)
    assert M.delong_test(y, good, good) == 1.0
    assert M.delong_test(y, good, good ** 3) == 1.0  # same ranking, same AUC
    assert M.delong_test(y, good, noise) < 0.001
    assert M.delong_test(y, good, noise) == pytest.approx(M.delong_test(y, noise, good))
    assert math.isnan(M.delong_test(np.zeros(5, int), good[:5], noise[:5]))


# --- McNemar and bootstrap -------------------------------------------------------------------

def test_mcnemar_hand_worked():
    # 10 cases only model A gets right, 2 only model B, 8 both, 5 neither.
    y = np.ones(25, int)
    a = np.r_[np.ones(10), np.zeros(2), np.ones(8), np.zeros(5)]
    b = np.r_[np.zeros(10), np.ones(2), np.ones(8), np.zeros(5)]
    expected = 2 * binom.cdf(2, 12, 0.5)
    assert expected == pytest.approx(79 / 2048)
    assert M.mcnemar_test(y, a, b) == pytest.approx(expected)
    assert M.mcnemar_test(y, b, a) == pytest.approx(expected)
    assert M.mcnemar_test(y, a, a) == 1.0
    assert M.mcnemar_test(np.r_[y, 0], np.r_[a, 1], np.r_[b, 0]) == pytest.approx(2 * binom.cdf(3, 13, 0.5))


def test_bootstrap_is_seeded_and_stratified():
    y, prob, _ = random_case(4)
    n_pos = int(y.sum())
    assert M.bootstrap_ci(y, prob, lambda yy, pp: yy.sum(), n_boot=50) == (n_pos, n_pos)
    def mean(yy, pp):
        return pp.mean()
    assert M.bootstrap_ci(y, prob, mean, seed=1) == M.bootstrap_ci(y, prob, mean, seed=1)
    assert M.bootstrap_ci(y, prob, mean, seed=1) != M.bootstrap_ci(y, prob, mean, seed=2)
    lo, hi = M.bootstrap_ci(y, prob, mean, n_boot=400)
    assert lo < prob.mean() < hi
    assert all(math.isnan(v) for v in M.bootstrap_ci(np.ones(5, int), prob[:5], mean))


# --- study B's confusion matrices and the published figures ----------------------------------

B = PUBLISHED["B"]


def test_study_b_matrices_recomputed():
    vgg = M.from_confusion(**B["confusion"]["VGG16"])
    assert vgg["accuracy"] == 989 / 1016 and vgg["sensitivity"] == 1.0
    assert vgg["specificity"] == 379 / 406 and vgg["f1"] == 2 * 610 / (2 * 610 + 27)
    assert vgg["precision"] == 610 / 637 and vgg["npv"] == 1.0
    mcc = (610 * 379 - 27 * 0) / math.sqrt(637 * 610 * 406 * 379)
    assert vgg["mcc"] == pytest.approx(mcc)
    resnet, mobile = M.from_confusion(**B["confusion"]["ResNet"]), M.from_confusion(**B["confusion"]["MobileNet"])
    assert (resnet["sensitivity"], resnet["specificity"]) == (1.0, 403 / 406)
    assert (mobile["sensitivity"], mobile["specificity"]) == (606 / 610, 405 / 406)
    for name, cm in B["confusion"].items():
        assert sum(cm.values()) == B["test_set"]["n"] and cm["tp"] + cm["fn"] == B["test_set"]["hemorrhage"]


def test_study_b_published_figures_disagree_with_its_matrices():
    recomputed = {name: M.from_confusion(**cm) for name, cm in B["confusion"].items()}
    for name, published in B["models"].items():
        # The accuracy column is consistent with the matrices...
        assert round(recomputed[name]["accuracy"], 4) == published["accuracy"]
        # ...but neither sensitivity nor specificity is.
        assert abs(recomputed[name]["sensitivity"] - published["sensitivity"]) > 0.02, name
        assert abs(recomputed[name]["specificity"] - published["specificity"]) > 0.01, name
    order = ("VGG16", "ResNet", "MobileNet")
    assert [round(recomputed[n]["sensitivity"], 4) for n in order] == [1.0, 1.0, 0.9934]
    assert [round(recomputed[n]["specificity"], 4) for n in order] == [0.9335, 0.9926, 0.9975]
    assert round(recomputed["VGG16"]["f1"], 4) == 0.9783 != B["models"]["VGG16"]["f1"]


def test_study_a_inception_report_implies_one_matrix():
    # Every (TN, TP) on 194 normals / 317 hemorrhages that reproduces the printed report.
    report = PUBLISHED["A"]["per_class"]["Inception"]
    tn, tp = np.meshgrid(np.arange(195), np.arange(318), indexing="ij")
    fp, fn = 194 - tn, 317 - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        fits = ((np.round(tn / (tn + fn), 2) == report["normal"]["precision"])
                & (np.round(tn / 194, 2) == report["normal"]["recall"])
                & (np.round(tp / (tp + fp), 2) == report["hemorrhage"]["precision"])
                & (np.round(tp / 317, 2) == report["hemorrhage"]["recall"])
                & (np.round((tn + tp) / 511, 4) == report["accuracy"]))
    assert [(int(a), int(b)) for a, b in zip(*np.nonzero(fits))] == [(186, 317)]
    y = np.r_[np.zeros(194, int), np.ones(317, int)]
    pred = np.r_[np.zeros(186, int), np.ones(8 + 317, int)]
    table = M.per_class_report(y, pred).round(2)
    assert table.loc["normal", ["precision", "recall"]].tolist() == [1.00, 0.96]
    assert table.loc["hemorrhage", ["precision", "recall"]].tolist() == [0.98, 1.00]
    # Its summary "recall 96%" is the normal class's recall, not hemorrhage recall or an average.
    assert PUBLISHED["A"]["models"]["Inception"]["recall"] == table.loc["normal", "recall"]
    assert table.loc["macro avg", "recall"] == 0.98 and table.loc["hemorrhage", "recall"] == 1.0


def test_published_rows_label_recomputed_figures():
    rows = published_rows()
    assert set(rows["figures"]) == {"published", RECOMPUTED}
    vgg = rows[(rows["study"] == "B") & (rows["model"] == "VGG16")].set_index("figures")
    assert vgg.loc["published", "f1"] == 0.9777
    assert vgg.loc[RECOMPUTED, "f1"] == M.from_confusion(379, 27, 0, 610)["f1"]
    assert len(rows[rows["figures"] == "published"]) == 8


# --- operating points ------------------------------------------------------------------------

def rates(y, prob, t):
    pred = prob >= t
    return pred[y == 1].mean(), 1 - pred[y == 0].mean()


def exact_95_case():
    """20 hemorrhages and 20 normals, so 95% sensitivity and specificity are reached exactly."""
    return np.r_[np.ones(20, int), np.zeros(20, int)], np.r_[np.linspace(0.3, 0.99, 20), np.linspace(0.01, 0.7, 20)]


@pytest.mark.parametrize("case", [*(random_case(seed + 100) for seed in range(8)), exact_95_case()])
def test_choose_thresholds(case):
    y, prob = case[:2]
    points = M.choose_thresholds(y, prob)
    assert points["default"] == 0.5 and all(0 <= t <= 1 for t in points.values())
    candidates = np.unique(prob)[::-1]  # falling, as a search from strict to lenient
    youden = [sum(rates(y, prob, t)) - 1 for t in candidates]
    assert points["youden"] == candidates[int(np.argmax(youden))]
    assert M.binary_metrics(y, prob, points["sens95"])["sensitivity"] >= 0.95
    assert points["sens95"] == max(t for t in candidates if rates(y, prob, t)[0] >= 0.95)
    assert M.binary_metrics(y, prob, points["spec95"])["specificity"] >= 0.95 or points["spec95"] == 1.0
    passing = [t for t in candidates if rates(y, prob, t)[1] >= 0.95]
    assert points["spec95"] == (min(passing) if passing else 1.0)


def test_choose_thresholds_edge_cases():
    y, prob = exact_95_case()
    points = M.choose_thresholds(y, prob)
    assert M.binary_metrics(y, prob, points["sens95"])["sensitivity"] == 0.95
    assert M.binary_metrics(y, prob, points["spec95"])["specificity"] == 0.95
    # Youden ties (J = 0.5 at 0.4 and at 0.2) go to the higher threshold.
    assert M.choose_thresholds([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])["youden"] == 0.4
    assert M.choose_thresholds([1, 1, 1], [0.2, 0.4, 0.9]) == {"default": 0.5, "youden": 0.5, "sens95": 0.5,
                                                               "spec95": 0.5}
    inverted = M.choose_thresholds([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])
    assert inverted["youden"] == 1.0  # no threshold beats chance: sklearn's "call nothing" point, clipped


# --- prevalence, calibration, reports, curves ------------------------------------------------

@pytest.mark.parametrize("sens,spec,prev", [(0.9, 0.95, 0.061), (0.978, 0.995, 0.2), (0.5, 0.5, 0.5)])
def test_ppv_npv_at_prevalence_matches_a_population(sens, spec, prev):
    n = 1_000_000
    pos = round(n * prev)
    tp, tn = round(pos * sens), round((n - pos) * spec)
    population = M.from_confusion(tn=tn, fp=n - pos - tn, fn=pos - tp, tp=tp)
    assert M.ppv_npv_at_prevalence(sens, spec, prev) == pytest.approx((population["precision"], population["npv"]))


def test_ppv_npv_at_prevalence_limits():
    assert M.ppv_npv_at_prevalence(0.9, 0.9, 1.0) == (1.0, pytest.approx(0.0))
    assert math.isnan(M.ppv_npv_at_prevalence(0.0, 1.0, 0.3)[0])
    with pytest.raises(ValueError):
        M.ppv_npv_at_prevalence(0.9, 0.9, 1.5)


@pytest.mark.parametrize("seed", range(5))
def test_reliability_bins_match_calibration_curve(seed):
    y, prob, _ = random_case(seed)
    bins = M.reliability_bins(y, prob)
    assert len(bins) == 10 and bins["count"].sum() == len(y)
    seen = bins[bins["count"] > 0]
    frac_pos, mean_prob = calibration_curve(y, prob, n_bins=10, strategy="uniform")
    assert seen["frac_pos"].to_numpy() == pytest.approx(frac_pos)
    assert seen["mean_prob"].to_numpy() == pytest.approx(mean_prob)
    ece = float(np.sum(seen["count"].to_numpy() * np.abs(frac_pos - mean_prob)) / len(y))
    assert M.binary_metrics(y, prob)["ece"] == pytest.approx(ece)


def test_ece_hand_worked():
    # Bin (0, 0.1]: mean 0.05, half positive; bin (0.9, 1]: mean 0.95, all positive.
    m = M.binary_metrics([0, 1, 1, 1], [0.05, 0.05, 0.95, 0.95])
    assert m["ece"] == pytest.approx((2 * 0.45 + 2 * 0.05) / 4)
    bins = M.reliability_bins([0, 1, 1], [0.0, 0.1, 1.0])
    assert bins["count"].tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # 0.1 closes the first bin
    assert M.binary_metrics([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0])["ece"] == 0.0


def test_per_class_report_matches_sklearn():
    y, prob, t = random_case(2)
    pred = (prob >= t).astype(int)
    table = M.per_class_report(y, pred)
    assert list(table.index) == ["normal", "hemorrhage", "accuracy", "macro avg", "weighted avg"]
    assert list(table.columns) == ["precision", "recall", "f1-score", "support"]
    ref = skm.classification_report(y, pred, output_dict=True, zero_division=np.nan)
    assert table.loc["hemorrhage", "recall"] == pytest.approx(ref["1"]["recall"])
    assert table.loc["normal", "precision"] == pytest.approx(ref["0"]["precision"])
    assert table.loc["macro avg", "f1-score"] == pytest.approx(ref["macro avg"]["f1-score"])
    assert table.loc["accuracy", "f1-score"] == pytest.approx(skm.accuracy_score(y, pred))
    assert table["support"].tolist() == [(y == 0).sum(), y.sum(), len(y), len(y), len(y)]


def test_curve_points():
    y, prob, _ = random_case(5)
    roc = M.roc_points(y, prob)
    fpr, tpr, _ = skm.roc_curve(y, prob)
    assert roc["fpr"].tolist() == fpr.tolist() and roc["tpr"].tolist() == tpr.tolist()
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(skm.roc_auc_score(y, prob))
    pr = M.pr_points(y, prob)
    assert pr["recall"].iloc[-1] == 0 and math.isnan(pr["threshold"].iloc[-1])
    assert pr["threshold"].iloc[:-1].tolist() == skm.precision_recall_curve(y, prob)[2].tolist()
    assert M.roc_points([0, 0], [0.1, 0.2]).empty and M.pr_points([1, 1], [0.1, 0.2]).empty
    assert isinstance(roc, pd.DataFrame)


def test_auc_or_nan_and_card_metrics():
    rng = np.random.default_rng(7)
    y, p = rng.integers(0, 2, 60), rng.random(60)
    assert M.auc_or_nan(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert np.isnan(M.auc_or_nan(np.ones(5), p[:5]))
    card = M.card_metrics(y[:30], p[:30], y[30:], p[30:])
    assert card["thresholds"] == M.choose_thresholds(y[:30], p[:30])
    assert card["metrics"]["test"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[30:], p[30:]))
    for point, t in card["thresholds"].items():
        assert card["metrics_at_thresholds"][point]["threshold"] == t and card["metrics_at_thresholds"][point]["n"] == 30


def test_one_class_call_names_the_only_call_made():
    y, p = np.array([0, 1, 0, 1]), np.array([0.2, 0.9, 0.6, 0.7])
    assert M.one_class_call(M.binary_metrics(y, p, 0.1)) == "hemorrhage"
    assert M.one_class_call(M.binary_metrics(y, p, 0.95)) == "normal"
    assert M.one_class_call(M.binary_metrics(y, p, 0.5)) is None


# --- scan level -------------------------------------------------------------------------------

def test_a_scan_is_its_most_suspicious_slice():
    scans = ["a", "a", "a", "b", "b", None, "c", "c", "d", float("nan")]
    y = [0, 1, 0, 0, 0, 1, 0, 0, 1, 1]
    p = [0.1, 0.3, 0.8, 0.4, 0.2, 0.99, 0.6, 0.7, 0.5, 0.0]
    labels, scores = M.scan_scores(scans, y, p)   # slices without a scan key are left out
    assert labels.tolist() == [1, 0, 0, 1] and scores.tolist() == [0.8, 0.4, 0.7, 0.5]
    scan = M.scan_metrics(scans, y, p, {"default": 0.5, "strict": 0.75})
    assert (scan["n"], scan["n_pos"]) == (4, 2)
    assert scan["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores))   # 0.5: a (0.8) over c, b over d
    assert scan["roc_auc_ci"] == M.delong_auc(labels, scores)[1:]
    assert scan["at"]["default"] == {"threshold": 0.5, "sensitivity": 1.0, "specificity": 0.5, "tp": 2, "fn": 0,
                                     "tn": 1, "fp": 1, "sensitivity_ci": M.wilson_interval(2, 2),
                                     "specificity_ci": M.wilson_interval(1, 2)}
    assert scan["at"]["strict"]["sensitivity"] == 0.5 and scan["at"]["strict"]["specificity"] == 1.0


def test_scan_metrics_need_scans_and_two_of_each_class():
    y, p = [1, 0, 1, 0, 0], [0.9, 0.1, 0.8, 0.2, 0.3]
    assert M.scan_metrics(None, y, p, {"default": 0.5}) is None
    assert M.scan_metrics(["a", "b", "c", "d", "e"], y, p, {"default": 0.5})["n"] == 5
    assert M.scan_metrics(["a", "b", "a", "d", "e"], y, p, {"default": 0.5}) is None   # one hemorrhage scan
    card = M.card_metrics(y, p, y, p, scans_test=["a", "b", "c", "d", "e"])
    assert card["metrics"]["test"]["scan"] == M.scan_metrics(["a", "b", "c", "d", "e"], y, p, card["thresholds"])
    assert "scan" not in M.card_metrics(y, p, y, p)["metrics"]["test"]
