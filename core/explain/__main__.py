"""Scores every CNN of a run on hemorrhagic phantoms or a dataset's real slices with known bleeds; draws a gallery.
`python -m core.explain --run RUN --out DIR [--data DIR [--bhx CSV ...]]` writes DIR/localization.csv and
DIR/gallery.png; with --data, DIR/slices.csv names the slices scored."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from core.cli import (Parser, existing_file, folder, name_list, non_negative_float, non_negative_int, positive_int,
                      unit_range)
from core.data.discover import DatasetError
from core.data.splits import read_manifest, seen_in_training
from core.data.truth import masked_slices
from core.explain.cam import (DEFAULT_TOLERANCE_PX, METHOD_NAMES, overlay, phantom_cases, phantom_images,
                              score_localization)
from core.io import store as ckpt
from core.io.atomic import atomic_path, atomic_write
from core.nets.build import load_network
from core.io.framing import framing_of
from core.io.imaging import windows_of
from core.registry import CNN_NAMES

TRUTHS = {"bhx": "BHX boxes", "mask": "stored masks"}   # core.data.truth's sources, as printed


def _gallery(path: Path, images, masks, subtypes, panels: dict, method: str, tile: int = 192) -> None:
    """Rows = models, columns = the first slices scored: overlays with the bleed outlined in green."""
    head = 18   # a text line above every row, and one for the column titles
    sheet = Image.new("RGB", (len(images) * tile, head + len(panels) * (tile + head)), "black")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=12)
    for c, subtype in enumerate(subtypes):
        draw.text((c * tile + 3, 3), subtype, fill="white", font=font)
    for r, (model, (probs, maps)) in enumerate(panels.items()):
        y0 = head + r * (tile + head)
        draw.text((3, y0 + 3), f"{model}, {method} (hemorrhage target)", fill="yellow", font=font)
        for c, (image, mask) in enumerate(zip(images, masks)):
            rgb = Image.fromarray(overlay(image, maps[c], mask=mask)).resize((tile, tile), Image.Resampling.BILINEAR)
            sheet.paste(rgb, (c * tile, y0 + head))
            draw.text((c * tile + 3, y0 + head + tile - 16), f"p = {probs[c]:.2f}", fill="white", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def run_difficulty(run: Path, default=(0.2, 0.8)) -> tuple[float, float]:
    """The difficulty range of the phantoms a run was trained on (their labels.csv), else `default`."""
    facts = ckpt.run_facts(run)
    labels = [root / "labels.csv" for root in ckpt.data_roots(facts) if (root / "labels.csv").is_file()]
    table = pd.concat(map(pd.read_csv, labels)) if facts and labels else pd.DataFrame()
    if "difficulty" not in table:   # not a phantom set
        return default
    return float(table["difficulty"].min()), float(table["difficulty"].max())


def _arguments(argv) -> tuple:
    ap = Parser(prog="python -m core.explain", description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="run folder (checkpoints/RUN)")
    ap.add_argument("--phantoms", type=positive_int, default=40,
                    help="number of hemorrhagic phantom slices (without --data)")
    ap.add_argument("--data", type=Path, help="score a dataset's hemorrhage slices that have a bleed mask instead: "
                    "CT-ICH's masks/ volumes, a class-folder set's masks/<stem>.png, CQ500 slices with BHX boxes; "
                    "slices the run trained or chose thresholds on are left out")
    ap.add_argument("--bhx", type=existing_file, nargs="+", help="BHX box CSV(s) joined to --data's DICOM slices by "
                    "SOPInstanceUID (default: 1_Initial_Manual_Labeling.csv and the other BHX files in --data)")
    ap.add_argument("--max-slices", type=positive_int, help="with --data: at most this many slices, drawn with --seed")
    ap.add_argument("--out", required=True, type=folder)
    ap.add_argument("--methods", type=name_list, default=",".join(m for m in METHOD_NAMES if m != "scorecam"),
                    help=f"comma-separated, from {', '.join(METHOD_NAMES)} (default: all but the slow scorecam)")
    ap.add_argument("--models", type=name_list, help="comma-separated models of the run (default: every CNN in it)")
    ap.add_argument("--size", type=positive_int, default=256, help="phantom size in px, or with --data the side "
                    "slices and their masks are decoded to (framed, padded, resized as in training)")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--tolerance", type=non_negative_float, default=DEFAULT_TOLERANCE_PX, help="pointing-game "
                    "slack in px of the --size image, the same for every model (0: the peak must be inside the bleed)")
    ap.add_argument("--difficulty", type=unit_range, help="phantom difficulty range lo,hi (default: that of the "
                    "run's own phantoms, else 0.2,0.8)")
    ap.add_argument("--faithfulness", action="store_true", help="add ROAD and confidence-drop columns (slower)")
    ap.add_argument("--gallery-columns", type=positive_int, default=5)
    args = ap.parse_args(argv)
    in_run = [m for m in ckpt.list_models(args.run) if m in CNN_NAMES]
    models = args.models or in_run
    bad = [m for m in args.methods if m not in METHOD_NAMES] + [m for m in models if m not in in_run]
    if bad or not models:
        ap.error(f"unknown method(s) or model(s) not in {args.run}: {', '.join(bad) or 'no CNN models'}")
    if args.data is None and (args.bhx or args.max_slices):
        ap.error("--bhx and --max-slices choose real slices: give --data too")
    return args, models


def _phantom_truth(args, framing: str, windows: str) -> tuple[list, list, list[str], str]:
    """(images, masks, column titles, what they are) of fresh hemorrhagic phantoms."""
    difficulty = args.difficulty or run_difficulty(args.run)
    cases = phantom_cases(args.phantoms, args.size, args.seed, difficulty)
    images, masks = phantom_images(cases, framing, windows)
    return images, masks, [c.subtype for c in cases], (f"{args.phantoms} phantoms at difficulty "
                                                      f"{difficulty[0]:g}-{difficulty[1]:g}")


def _data_truth(args, framing: str, windows: str) -> tuple[list, list, list[str], str]:
    """(images, masks, column titles, what they are) of --data's hemorrhage slices with a mask (core.data.truth)."""
    seen = seen_in_training(read_manifest(args.run / ckpt.SPLIT))
    found = masked_slices(args.data, args.size, framing, args.bhx, seen, args.max_slices, args.seed, windows)
    if not found.images:
        raise DatasetError(f"no hemorrhage slice of {args.data} that the run has not trained on has a bleed mask or "
                           "BHX box (give BHX CSVs with --bhx, or keep them in the folder).")
    atomic_write(Path(args.out) / "slices.csv", found.rows[["id", "path", "subtype", "truth"]].to_csv(index=False))
    truths = ", ".join(f"{n} with {TRUTHS[kind]}" for kind, n in found.rows["truth"].value_counts().items())
    left_out = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in found.skipped.items())
    return found.images, found.masks, [s or "hemorrhage" for s in found.rows["subtype"]], (
        f"{len(found.images)} hemorrhage slices of {args.data} ({truths}) at {args.size} px; left out: {left_out}")


def _score(args, models: list[str], images, masks) -> tuple[pd.DataFrame, dict]:
    """localization.csv's rows (model x method) and the gallery's panels (the first method's maps)."""
    k = min(args.gallery_columns, len(images))
    rows, panels = [], {}
    with tqdm(total=len(models) * len(args.methods), desc="CAMs", unit="map set") as bar:
        for name in models:
            loaded = load_network(args.run / name)
            for method in args.methods:
                bar.set_postfix(model=name, method=method)
                scores, probs, maps = score_localization(loaded, images, masks, method, args.faithfulness,
                                                         args.tolerance)
                rows.append({"model": name, "method": method, **scores})
                if method == args.methods[0]:
                    panels[name] = (probs[:k], maps[:k])
                bar.update()
    table = pd.DataFrame(rows)
    first = ["model", "method", "pointing_game", "energy_in_mask", "iou", "n"]
    return table[first + [c for c in table.columns if c not in first]], panels


def main(argv=None) -> int:
    args, models = _arguments(argv)
    out, facts = Path(args.out), ckpt.run_facts(args.run)
    try:
        images, masks, titles, what = (_data_truth if args.data else _phantom_truth)(args, framing_of(facts),
                                                                                     windows_of(facts))
    except DatasetError as err:
        print(f"hemolens: {err}", file=sys.stderr)
        return 2
    print(f"{what}, pointing-game tolerance {args.tolerance:g} px", flush=True)
    table, panels = _score(args, models, images, masks)
    atomic_write(out / "localization.csv", table.assign(source=str(args.data or "phantoms")).to_csv(index=False))
    k = min(args.gallery_columns, len(images))
    _gallery(out / "gallery.png", images[:k], masks[:k], titles[:k], panels, args.methods[0])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written: {out / 'localization.csv'}, {out / 'gallery.png'}" + (", slices.csv" if args.data else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
