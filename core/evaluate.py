"""Evaluate a run's models on its test split or an external set (train/val files dropped); card thresholds."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.cli import Parser, folder, name_list, non_negative_int
from core.io import store as ckpt
from core.metrics import binary as M
from core.data.discover import DatasetError
from core.data.decode import decode_images
from core.inference import domain_scores_all, load_predictor, predict_outputs_all
from core.report import write_report
from core.data.splits import prepare, read_manifest, seen_in_training
from core.io.framing import framing_of
from core.io.imaging import windows_of
from core.subtypes import flag_column

# Bleed area bands (mm2): triage sensitivity drops on small bleeds (docs/NOTES.md, "Evaluation").
AREA_BANDS = [(0, 100, "<100 mm2"), (100, 400, "100-400 mm2"), (400, float("inf"), ">=400 mm2")]


def evaluation_cases(run_dir: Path, data: str | None, size: int) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """(cases, images at `size`, facts about the set) for one image size."""
    manifest = read_manifest(run_dir / ckpt.SPLIT)
    facts = ckpt.run_facts(run_dir)
    own_roots = [r.resolve() for r in ckpt.data_roots(facts)]
    # The run's own: an external set is framed and windowed as the training data was.
    framing, windows = framing_of(facts), windows_of(facts)
    if data is None or Path(data).resolve() in own_roots:
        cases = manifest[manifest["split"] == "test"].reset_index(drop=True)
        decoded = decode_images(cases["path"].tolist(), size, framing=framing, windows=windows)
        if decoded.failed:
            raise DatasetError(f"{len(decoded.failed)} test images of {run_dir} can no longer be read "
                               f"(first: {next(iter(decoded.failed))}).")
        changed = [p for p, h, want in zip(decoded.paths, decoded.sha256, cases["sha256"]) if h != want]
        if changed:
            raise DatasetError(f"{len(changed)} test images changed since training (first: {changed[0]}).")
        facts = {"kind": "test split", "source": ", ".join(map(str, own_roots)) or "run split", "framing": framing,
                 "windows": windows}
        return cases, decoded.images, facts
    external = prepare(data, size, framing=framing, split=False, windows=windows)
    seen = seen_in_training(manifest)
    keep = ~external.manifest["sha256"].isin(seen).to_numpy()
    cases = external.manifest[keep].reset_index(drop=True)
    facts = {"kind": "external", "source": str(Path(data).resolve()), "dropped_seen_in_training": int((~keep).sum()),
             "skipped_unreadable": external.leakage["skipped_unreadable"], "framing": framing, "windows": windows}
    return cases, external.images[keep], facts


def subgroups(cases: pd.DataFrame, prob: np.ndarray, threshold: float) -> list[dict]:
    """Sensitivity per hemorrhage subtype and bleed-size band, specificity on normals, per source."""
    pred = prob >= threshold
    label = cases["label"].to_numpy()
    rows = []

    def add(kind, name, mask, positive=True):
        n = int(mask.sum())
        if n == 0:
            return
        hits = int((pred[mask] == positive).sum())
        lo, hi = M.wilson_interval(hits, n)
        rows.append({"subgroup": kind, "value": name, "metric": "sensitivity" if positive else "specificity",
                     "n": n, "estimate": hits / n, "ci_lo": lo, "ci_hi": hi})

    if "subtype" in cases and cases["subtype"].astype(str).str.len().gt(0).any():
        for subtype in sorted(set(cases.loc[label == 1, "subtype"].astype(str)) - {""}):
            add("subtype", subtype, (label == 1) & (cases["subtype"].astype(str) == subtype).to_numpy())
    if "bleed_area_mm2" in cases:
        area = pd.to_numeric(cases["bleed_area_mm2"], errors="coerce").to_numpy()
        for lo, hi, name in AREA_BANDS:
            add("bleed area", name, (label == 1) & (area >= lo) & (area < hi))
    if "source" in cases:
        for source in sorted(cases["source"].dropna().unique()):
            mask = (cases["source"] == source).to_numpy()
            add("source", source, mask & (label == 1))
            add("source", source, mask & (label == 0), positive=False)
    return rows


def subtype_aucs(cases: pd.DataFrame, outputs: np.ndarray, names: list[str]) -> dict:
    """A subtypes head's AUC per subtype on the cases labelled for it, its outputs named as its card names them
    (`names`, "any" first); {} for a one-output model or cases that carry no subtype flags."""
    subtypes = names[1:]
    columns = [flag_column(s) for s in subtypes]
    if not subtypes or not set(columns) <= set(cases.columns):
        return {}
    return M.auc_per_output(subtypes, cases[columns].to_numpy(dtype=float), outputs[:, 1:])


def domain_summary(predictor, scores: np.ndarray | None) -> dict | None:
    """The share of the cases out of a model's training domain (core.metrics.domain); None without a check."""
    if scores is None:
        return None
    unusual = predictor.domain.unusual(scores)
    return {"out_of_domain": float(unusual.mean()), "n_out": int(unusual.sum()), "n": int(len(scores)),
            "threshold": predictor.domain.threshold, "pass_rate": predictor.card["domain"]["pass_rate"]}


def evaluate_run(run_dir: str | Path, data: str | None = None, models: list[str] | None = None,
                 bootstrap: int = 1000, device: str = "cpu") -> dict:
    """Predictions and a metrics report for every model of a run (see module docstring)."""
    run_dir = Path(run_dir)
    names = models or ckpt.list_models(run_dir)
    if not names:
        raise ckpt.CheckpointError(f"{run_dir} holds no completed model (no */card.json).")
    predictors = {name: load_predictor(run_dir / name, device) for name in names}
    for p in list(predictors.values()):   # an ensemble is combined from its members' predictions
        for member in set(p.members) - set(predictors):   # loaded once, not again for each ensemble
            predictors[member] = load_predictor(run_dir / member, device)
    by_size: dict[int, tuple] = {}

    def images_at(size: int) -> np.ndarray:
        if size not in by_size:
            by_size[size] = evaluation_cases(run_dir, data, size)
        return by_size[size][1]

    sizes = sorted({p.input_size for p in predictors.values() if p.input_size})
    images_at(sizes[0])
    cases, _, facts = by_size[sizes[0]]
    outputs = predict_outputs_all(predictors, images_at, manifest=cases)
    probs = {name: o[:, 0] for name, o in outputs.items()}
    domain = domain_scores_all({n: predictors[n] for n in names}, images_at, cases)
    y = cases["label"].to_numpy()
    per_model, predictions = {}, []
    for name in names:
        card, prob = predictors[name].card, probs[name]
        per_model[name] = {
            "display_name": card["display_name"], "family": predictors[name].family.key,
            "thresholds": card["thresholds"],
            "metrics": {k: M.binary_metrics(y, prob, threshold=t, bootstrap=bootstrap if k == "default" else 0)
                        for k, t in card["thresholds"].items()},
            "calibration": M.reliability_bins(y, prob).to_dict("records"),
            "subgroups": subgroups(cases, prob, card["thresholds"]["youden"]),
            # Per scan (the manifest's series): max over its slices, at every card threshold; None without scans.
            "scan": M.scan_metrics(cases.get("series"), y, prob, card["thresholds"]),
            "subtypes": subtype_aucs(cases, outputs[name], predictors[name].outputs),
            "latency": card.get("latency"), "params": card.get("params"),
            "domain": domain_summary(predictors[name], domain.get(name)),
        }
        scored = cases.assign(model=name, prob=prob, domain_score=domain.get(name, np.nan))
        predictions.append(scored[["model", "split", "id", "path", "label", "prob", "domain_score"]
                                  + [c for c in ("subtype", "bleed_area_mm2", "source", "series") if c in cases]])
    preds = pd.concat(predictions, ignore_index=True)
    best = max(per_model, key=lambda m: np.nan_to_num(per_model[m]["metrics"]["default"]["roc_auc"], nan=-1))
    wide = preds.pivot_table(index="path", columns="model", values="prob")
    truth = preds.drop_duplicates("path").set_index("path")["label"].reindex(wide.index).to_numpy()
    for name in per_model:
        per_model[name]["delong_p_vs_best"] = (None if name == best else
                                               M.delong_test(truth, wide[best].to_numpy(), wide[name].to_numpy()))
    return {"run": str(run_dir), "dataset": facts, "n_cases": int(len(truth)), "n_hemorrhage": int(truth.sum()),
            "best_model": best, "models": per_model, "predictions": preds}


def main(argv=None) -> int:
    p = Parser(description="Evaluate every model of a run; writes predictions.csv, report.json, leaderboard.csv "
                           "and report.md into --out, or without it stores them with the run in "
                           "RUN/evaluations/NAME (NAME: the --data folder's name), where the dashboard lists them.")
    p.add_argument("--run", required=True, help="run folder, e.g. checkpoints/demo")
    p.add_argument("--data", help="dataset folder (default: the run's own test split; required without --out)")
    p.add_argument("--out", type=folder, help="output folder (default: RUN/evaluations/NAME)")
    p.add_argument("--models", type=name_list, help="comma-separated subset of the run's models")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="resamples for F1/MCC/PR-AUC intervals (0: none)")
    args = p.parse_args(argv)
    if args.out is None and args.data is None:
        p.error("--data is required without --out: the evaluations stored with a run are of other datasets "
                "(its own test split is in its model folders already)")
    try:
        report = evaluate_run(args.run, args.data, args.models, args.bootstrap)
        if args.out is None and report["dataset"]["kind"] != "external":
            raise DatasetError(f"{args.data} is the run's own dataset: its test split is in the model folders "
                               "already; give --out to evaluate it again.")
    except (DatasetError, ckpt.CheckpointError) as err:
        print(f"hemolens: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        where = ckpt.store_evaluation(args.run, args.data, lambda tmp: write_report(report, tmp))
    else:
        where = write_report(report, Path(args.out))["report.md"].parent
    print((where / "report.md").read_text())
    outside = [f"{m['display_name']} {m['domain']['out_of_domain']:.0%}" for m in report["models"].values()
               if m.get("domain")]
    if outside:
        print("Cases outside each model's training domain (core.metrics.domain): " + ", ".join(outside) + ".")
    print(f"Stored the evaluation in {where}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
