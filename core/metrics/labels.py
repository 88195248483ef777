"""What users read for core's names: the operating points (core.metrics.binary.choose_thresholds' keys, chosen on
validation) and the leaderboard's metrics. Plain data, so the pages that show stored numbers import no model code."""

PRESETS = {"default": "0.5", "youden": "Youden (val)", "sens95": "Sensitivity ≥ 95% (val)",
           "spec95": "Specificity ≥ 95% (val)"}
METRIC_LABELS = {"accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity",
                 "precision": "PPV", "npv": "NPV", "f1": "F1", "roc_auc": "AUC"}
