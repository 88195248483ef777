"""Scores every CNN of a run on hemorrhagic phantoms with known bleed masks and draws a gallery.
`python -m core.explain --run RUN --out DIR` writes DIR/localization.csv and DIR/gallery.png."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from core.cli import Parser, folder, name_list, non_negative_float, non_negative_int, positive_int, unit_range
from core.explain.cam import (DEFAULT_TOLERANCE_PX, METHOD_NAMES, overlay, phantom_cases, phantom_images,
                              score_localization)
from core.io import store as ckpt
from core.io.atomic import atomic_path, atomic_write
from core.nets.build import load_network
from core.io.framing import framing_of
from core.io.imaging import windows_of
from core.registry import CNN_NAMES


def _gallery(path: Path, images, masks, subtypes, panels: dict, method: str, tile: int = 192) -> None:
    """Rows = models, columns = phantom slices: overlays with the bleed outlined in green."""
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
    labels = Path(facts.get("data_root", "")) / "labels.csv"
    table = pd.read_csv(labels) if facts and labels.is_file() else pd.DataFrame()
    if "difficulty" not in table:   # not a phantom set
        return default
    return float(table["difficulty"].min()), float(table["difficulty"].max())


def main(argv=None) -> int:
    ap = Parser(prog="python -m core.explain", description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="run folder (checkpoints/RUN)")
    ap.add_argument("--phantoms", type=positive_int, default=40, help="number of hemorrhagic phantom slices")
    ap.add_argument("--out", required=True, type=folder)
    ap.add_argument("--methods", type=name_list, default=",".join(m for m in METHOD_NAMES if m != "scorecam"),
                    help=f"comma-separated, from {', '.join(METHOD_NAMES)} (default: all but the slow scorecam)")
    ap.add_argument("--models", type=name_list, help="comma-separated models of the run (default: every CNN in it)")
    ap.add_argument("--size", type=positive_int, default=256, help="phantom size in px (models resize as in training)")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--tolerance", type=non_negative_float, default=DEFAULT_TOLERANCE_PX, help="pointing-game "
                    "slack in px of the phantom image, the same for every model (0: the peak must be inside the bleed)")
    ap.add_argument("--difficulty", type=unit_range, help="phantom difficulty range lo,hi (default: that of the "
                    "run's own phantoms, else 0.2,0.8)")
    ap.add_argument("--faithfulness", action="store_true", help="add ROAD and confidence-drop columns (slower)")
    ap.add_argument("--gallery-columns", type=positive_int, default=5)
    args = ap.parse_args(argv)
    methods, out = args.methods, Path(args.out)
    in_run = [m for m in ckpt.list_models(args.run) if m in CNN_NAMES]
    models = args.models or in_run
    bad = [m for m in methods if m not in METHOD_NAMES] + [m for m in models if m not in in_run]
    if bad or not models:
        ap.error(f"unknown method(s) or model(s) not in {args.run}: {', '.join(bad) or 'no CNN models'}")

    difficulty = args.difficulty or run_difficulty(args.run)
    print(f"{args.phantoms} phantoms at difficulty {difficulty[0]:g}-{difficulty[1]:g}, "
          f"pointing-game tolerance {args.tolerance:g} px", flush=True)
    cases = phantom_cases(args.phantoms, args.size, args.seed, difficulty)
    facts = ckpt.run_facts(args.run)
    images, masks = phantom_images(cases, framing_of(facts), windows_of(facts))
    k = min(args.gallery_columns, len(cases))
    rows, panels = [], {}
    with tqdm(total=len(models) * len(methods), desc="CAMs", unit="map set") as bar:
        for name in models:
            loaded = load_network(args.run / name)
            for method in methods:
                bar.set_postfix(model=name, method=method)
                scores, probs, maps = score_localization(loaded, images, masks, method, args.faithfulness,
                                                           args.tolerance)
                rows.append({"model": name, "method": method, **scores})
                if method == methods[0]:
                    panels[name] = (probs[:k], maps[:k])
                bar.update()
    table = pd.DataFrame(rows)
    first = ["model", "method", "pointing_game", "energy_in_mask", "iou", "n"]
    table = table[first + [c for c in table.columns if c not in first]]
    atomic_write(out / "localization.csv", table.to_csv(index=False))
    _gallery(out / "gallery.png", images[:k], masks[:k], [c.subtype for c in cases[:k]], panels, methods[0])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written: {out / 'localization.csv'}, {out / 'gallery.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
