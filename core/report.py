"""Evaluation report files: predictions.csv, report.json, leaderboard.csv, report.md."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.families import family_of_card
from core.io import store as ckpt
from core.io.atomic import atomic_write
from core.metrics.labels import METRIC_LABELS, PRESETS
from core.metrics.published import ci_text
from core.subtypes import SUBTYPES

LEADERBOARD_METRICS = list(METRIC_LABELS)


def _fmt(value, ci=None) -> str:
    if value is None or value != value:
        return "n/a"
    text = f"{value:.3f}"
    if ci and ci[0] is not None and ci[0] == ci[0]:
        text += f" ({ci[0]:.3f}-{ci[1]:.3f})"
    return text


def subtype_cell(entry: dict | None) -> str:
    """One subtype's AUC as cards and reports print it: AUC (DeLong 95% CI), labelled cases and positives."""
    if not entry:
        return "n/a (one class)"
    return f"{_fmt(entry['roc_auc'], entry['roc_auc_ci'])}, n {entry['n']} ({entry.get('n_pos', '?')} positive)"


def leaderboard(report: dict, threshold: str = "default") -> pd.DataFrame:
    rows = []
    for name, m in report["models"].items():
        met = m["metrics"][threshold]
        row = {"model": name, "display_name": m["display_name"], "threshold": m["thresholds"][threshold]}
        for key in LEADERBOARD_METRICS:
            row[key] = met[key]
            lo, hi = met.get(f"{key}_ci") or (None, None)
            row[f"{key}_lo"], row[f"{key}_hi"] = lo, hi
        row["delong_p_vs_best"] = m["delong_p_vs_best"]
        scan = m.get("scan") or {}
        row["scan_roc_auc"], row["scan_n"] = scan.get("roc_auc"), scan.get("n")
        row["latency_ms_p50"] = (m.get("latency") or {}).get("batch1_ms_p50")
        row["params"] = m.get("params")
        rows.append(row)
    return pd.DataFrame(rows).sort_values("roc_auc", ascending=False, na_position="last")


def misclassified(report: dict, threshold: str = "youden") -> pd.DataFrame:
    preds = report["predictions"]
    cut = preds["model"].map({n: m["thresholds"][threshold] for n, m in report["models"].items()})
    wrong = preds[(preds["prob"] >= cut).astype(int) != preds["label"]]
    return wrong.assign(error=wrong["label"].map({1: "false negative", 0: "false positive"}))


def markdown(report: dict, board: pd.DataFrame, wrong: pd.DataFrame) -> str:
    ds = report["dataset"]
    lines = [f"# Evaluation of {report['run']}", "",
             f"Dataset: {ds['kind']} ({ds['source']}), {report['n_cases']} cases, {report['n_hemorrhage']} hemorrhage.",
             *([f"Dropped {ds['dropped_seen_in_training']} files also present in the run's train/val split."]
               if ds.get("dropped_seen_in_training") else []),
             "Research and teaching tool, not for clinical use.", "",
             "## Leaderboard (threshold 0.5; 95% intervals: Wilson for proportions, DeLong for AUC)", "",
             "| model | " + " | ".join(LEADERBOARD_METRICS) + " | DeLong p vs best |",
             "|---" * (len(LEADERBOARD_METRICS) + 2) + "|"]
    for _, r in board.iterrows():
        cells = [_fmt(r[k], (r[f"{k}_lo"], r[f"{k}_hi"])) for k in LEADERBOARD_METRICS]
        p = "best" if r["model"] == report["best_model"] else _fmt(r["delong_p_vs_best"])
        lines.append(f"| {r['display_name']} | " + " | ".join(cells) + f" | {p} |")
    lines += ["", "## Operating points chosen on validation, applied here", "",
              "| model | point | threshold | sensitivity | specificity | PPV | NPV |", "|---|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        for point, t in m["thresholds"].items():
            met = m["metrics"][point]
            lines.append(f"| {m['display_name']} | {point} | {t:.3f} | " + " | ".join(
                _fmt(met[k], met.get(f"{k}_ci")) for k in ("sensitivity", "specificity", "precision", "npv")) + " |")
    lines += ["", "## Calibration", "", "| model | Brier | ECE |", "|---|---|---|"]
    for name, m in report["models"].items():
        lines.append(f"| {m['display_name']} | {_fmt(m['metrics']['default']['brier'])} | "
                     f"{_fmt(m['metrics']['default']['ece'])} |")
    lines += _scan_lines(report)
    sub = [dict(model=m["display_name"], **row) for m in report["models"].values() for row in m["subgroups"]]
    if sub:
        lines += ["", "## Subgroups (Youden threshold)", "", "| model | subgroup | value | metric | n | estimate |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['subgroup']} | {r['value']} | {r['metric']} | {r['n']} | "
                  f"{_fmt(r['estimate'], (r['ci_lo'], r['ci_hi']))} |" for r in sub]
    subtyped = {m["display_name"]: m["subtypes"] for m in report["models"].values() if m.get("subtypes")}
    if subtyped:
        lines += ["", "## Subtypes (AUC, DeLong 95% CI, on the cases labelled for each)", "",
                  "| model | subtype | AUC |", "|---|---|---|"]
        lines += [f"| {model} | {s} | {subtype_cell(e)} |" for model, aucs in subtyped.items() for s, e in aucs.items()]
    lines += ["", f"## Misclassified cases (Youden threshold): {len(wrong)}", ""]
    for name, rows in wrong.groupby("model"):
        fn, fp = (rows["error"] == "false negative").sum(), (rows["error"] == "false positive").sum()
        lines.append(f"- {report['models'][name]['display_name']}: {fn} false negatives, {fp} false positives")
    return "\n".join(lines) + "\n"


def _scan_lines(report: dict) -> list[str]:
    """report.md's scan-level section (none when no model has scan metrics)."""
    scans = {m["display_name"]: m["scan"] for m in report["models"].values() if m.get("scan")}
    if not scans:
        return []
    lines = ["", "## Scan level (a scan scores its most suspicious slice; thresholds chosen on validation slices)", "",
             "| model | scans | hemorrhage | AUC | point | threshold | sensitivity | specificity |",
             "|---|---|---|---|---|---|---|---|"]
    for name, scan in scans.items():
        lines += [f"| {name} | {scan['n']} | {scan['n_pos']} | {_fmt(scan['roc_auc'], scan['roc_auc_ci'])} | {point} | "
                  f"{met['threshold']:.3f} | {_fmt(met['sensitivity'], met['sensitivity_ci'])} | "
                  f"{_fmt(met['specificity'], met['specificity_ci'])} |" for point, met in scan["at"].items()]
    return lines


def write_report(report: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    board, wrong = leaderboard(report), misclassified(report)
    paths = {name: out / name for name in ("predictions.csv", "report.json", "leaderboard.csv", "report.md")}
    ckpt.write_csv(paths["predictions.csv"], report["predictions"])
    ckpt.write_csv(paths["leaderboard.csv"], board)
    ckpt.write_json(paths["report.json"], {**{k: v for k, v in report.items() if k != "predictions"},
                                           "misclassified": wrong.to_dict("records")})
    atomic_write(paths["report.md"], markdown(report, board, wrong))
    return paths


def training_line(card: dict) -> str:
    """The card's training facts in words: epochs and starting weights for a network, a fit for the others."""
    tr = card.get("training", {})
    fitted = f"in {tr.get('seconds', float('nan')):.0f} s on {tr.get('device')}, seed {tr.get('seed')}"
    if not family_of_card(card).is_network:
        return f"- Training: fitted once {fitted}"
    epochs = tr.get("epochs")
    return (f"- Training: {epochs} epoch{'' if epochs == 1 else 's'} {fitted}; started from "
            + ("ImageNet weights" if tr.get("pretrained") else "the weights of " + tr["init_from"]["run"]
               if tr.get("init_from") else "scratch"))


def card_markdown(card: dict) -> str:
    """A model card as readable Markdown (the JSON download carries everything)."""
    t, lat, tr, ds = card["thresholds"], card.get("latency", {}), card.get("training", {}), card.get("dataset", {})
    lines = [f"# {card.get('display_name', card['model'])} (`{card['model']}`)", "",
             "Research and teaching tool, not for clinical use.", "",
             f"- Family: {family_of_card(card).key}; reference: {card.get('reference', '')}",
             family_of_card(card).describe_input(card),
             f"- Parameters: {card['params']:,}"
             + (f"; GMACs at input size: {card['gmacs']:.3f}" if card.get("gmacs") is not None else "")
             + f"; weights: {card['size_bytes'] / 1e6:.2f} MB, sha256 `{card['weights_sha256']}`",
             f"- Latency ({lat.get('device', '?')}, batch 1): p50 {lat.get('batch1_ms_p50', float('nan')):.1f} ms, "
             f"p95 {lat.get('batch1_ms_p95', float('nan')):.1f} ms; throughput "
             f"{lat.get('throughput_img_s', float('nan')):.0f} img/s",
             training_line(card),
             f"- Data: {ds.get('source', '?')}; " + ", ".join(
                 f"{s} {c['n']} ({c['hemorrhage']} hemorrhage)" for s, c in ds.get("counts", {}).items()),
             f"- Created: {card.get('created_at', '?')}", "",
             "## Operating points (chosen on validation)", "", "| point | threshold |", "|---|---|",
             *[f"| {PRESETS.get(k, k)} | {v:.4f} |" for k, v in t.items()], "",
             "## Metrics at threshold 0.5 (95% intervals)", "",
             "| metric | validation | test |", "|---|---|---|"]
    for key, label in {**METRIC_LABELS, "balanced_accuracy": "Balanced accuracy", "mcc": "MCC", "pr_auc": "PR AUC",
                       "brier": "Brier", "ece": "ECE"}.items():
        cells = []
        for split in ("val", "test"):
            met = card["metrics"][split]
            value, ci = met.get(key), ci_text(met.get(f"{key}_ci"))
            cells.append("n/a" if value is None else f"{value:.3f}" + (f" ({ci})" if ci else ""))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    scan = card["metrics"]["test"].get("scan")
    if scan:
        lines += ["", f"Scan level (test split: {scan['n']} scans, {scan['n_pos']} with hemorrhage; a scan scores its "
                      f"most suspicious slice): AUC {_fmt(scan['roc_auc'], scan['roc_auc_ci'])}."]
    return "\n".join(lines + subtype_lines(card)) + "\n"


def subtype_lines(card: dict) -> list[str]:
    """A subtypes head's table of per-subtype AUCs on validation and test (none for a one-output model)."""
    val, test = (card["metrics"][s].get("subtypes") or {} for s in ("val", "test"))
    if "subtypes" not in card["metrics"]["test"]:
        return []
    lines = ["", "## Subtypes (AUC, DeLong 95% CI, on the slices labelled for each; n/a: one class there)", "",
             "| subtype | validation | test |", "|---|---|---|"]
    return lines + [f"| {flag} | {subtype_cell(val.get(flag))} | {subtype_cell(test.get(flag))} |"
                    for flag in SUBTYPES]
