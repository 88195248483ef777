"""Phantom public API, dataset writer and preview grid; labels come from each slice's own bleed mask."""
from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from tqdm import tqdm

from core.cli import Parser, folder, int_at_least, non_negative_int, positive_int, unit_float
from core.io.atomic import atomic_write
from core.io.imaging import MASK_COLOUR, WINDOW_SETS, WINDOWS, apply_window
from core.phantom.anatomy import BLOOD, FOV_MM, HARD_NEGATIVES, SLICE_MM, TISSUES, sample_patient
from core.phantom.scanner import DEFAULT, SCANNERS, Scanner, scan_slice
from core.subtypes import INTRAPARENCHYMAL, SUBTYPES

__all__ = ["SUBTYPES", "FOV_MM", "SLICE_MM", "TISSUES", "HARD_NEGATIVES", "LABEL_COLUMNS", "PhantomSlice",
           "Scanner", "SCANNERS", "generate_slice", "generate_stack", "generate_twins", "render", "write_dataset",
           "write_grid", "main"]
LABEL_COLUMNS = ["id", "label", "subtype", "bleed_area_mm2", "difficulty", "stack_id", "slice_index",
                 "pixel_spacing_mm"]


@dataclass
class PhantomSlice:
    hu: np.ndarray            # float32 HxW, Hounsfield units
    mask: np.ndarray          # bool HxW, blood
    label: int                # 1 when the mask is not empty
    subtype: str              # "" for a normal slice
    difficulty: float
    bleed_area_mm2: float
    stack_id: int
    slice_index: int
    tissue: np.ndarray | None = field(default=None, repr=False)  # uint8 HxW, index into TISSUES
    fov_mm: float = FOV_MM    # the scanner's field of view across the image

    @property
    def pixel_spacing_mm(self) -> float:
        return self.fov_mm / self.hu.shape[1]


def generate_stack(rng: np.random.Generator, size: int = 256, k: int = 5, subtype: str | None = None,
                   difficulty: float = 0.5, stack_id: int = 0, *, hard_negatives=None,
                   scanner: Scanner = DEFAULT) -> list[PhantomSlice]:
    """k adjacent slices of one patient (bleed over a contiguous run); higher difficulty = smaller, fainter bleeds."""
    return _paint_stack(_patient(rng, subtype, difficulty, k, hard_negatives), rng, size, k, stack_id, scanner)


def generate_twins(rng: np.random.Generator, size: int = 256, k: int = 5, subtype: str = INTRAPARENCHYMAL,
                   difficulty: float = 0.5, stack_id: int = 0,
                   scanner: Scanner = DEFAULT) -> tuple[list[PhantomSlice], list[PhantomSlice]]:
    """One patient's stack with its bleed and the same stack without it (same anatomy, same noise):
    a pair whose only difference is the bleed."""
    p = _patient(rng, subtype, difficulty, k, None)
    state = rng.bit_generator.state
    with_bleed = _paint_stack(p, rng, size, k, stack_id, scanner)
    rng.bit_generator.state = state
    without = _paint_stack({**p, "bleed": None, "subtype": ""}, rng, size, k, stack_id, scanner)
    return with_bleed, without


def _patient(rng, subtype, difficulty, k, hard_negatives) -> dict:
    if subtype not in (None, "", *SUBTYPES):
        raise ValueError(f"unknown subtype {subtype!r}; choose from {', '.join(SUBTYPES)}")
    return sample_patient(rng, subtype, float(np.clip(difficulty, 0, 1)), k, hard_negatives)


def _paint_stack(p: dict, rng: np.random.Generator, size: int, k: int, stack_id: int,
                 scanner: Scanner) -> list[PhantomSlice]:
    spacing = scanner.fov_mm / size
    slices = []
    for j in range(k):
        hu, tissue = scan_slice(p, j, size, rng, scanner)
        mask = tissue == BLOOD
        label = int(mask.any())
        slices.append(PhantomSlice(hu=hu, mask=mask, label=label, subtype=p["subtype"] if label else "",
                                   difficulty=p["difficulty"], bleed_area_mm2=float(mask.sum()) * spacing ** 2,
                                   stack_id=stack_id, slice_index=j, tissue=tissue, fov_mm=scanner.fov_mm))
    return slices


def generate_slice(rng: np.random.Generator, size: int = 256, subtype: str | None = None,
                   difficulty: float = 0.5, *, hard_negatives=None, scanner: Scanner = DEFAULT) -> PhantomSlice:
    """One axial slice; a hemorrhagic one always shows its bleed."""
    return generate_stack(rng, size, 1, subtype, difficulty, hard_negatives=hard_negatives, scanner=scanner)[0]


def render(hu: np.ndarray, windows: str = "brain", brain: tuple[float, float] = WINDOWS["brain"]) -> np.ndarray:
    """uint8 display image through the brain window (`brain`: a site's own centre and width), as real scans are
    rendered; (H, W, C) through a run's window set (core.io.imaging.WINDOW_SETS)."""
    images = [(apply_window(hu, *(brain if w == "brain" else WINDOWS[w])) * 255 + 0.5).astype(np.uint8)
              for w in WINDOW_SETS[windows]]
    return images[0] if len(images) == 1 else np.stack(images, -1)


def write_png(path: Path, image: np.ndarray) -> None:
    # Temp then rename: no half PNGs. No fsync (docs/NOTES.md, "Phantom writer").
    tmp = path.with_name(f".{path.name}.partial")
    Image.fromarray(image).save(tmp, format="PNG", compress_level=3)  # no metadata: same bytes every run
    os.replace(tmp, path)


def write_dataset(out: Path, n: int, size: int = 256, seed: int = 0, stack_size: int = 5,
                  hemorrhage_fraction: float = 0.5, difficulty=(0.2, 0.8), twins: bool = False,
                  scanner: Scanner = DEFAULT) -> pd.DataFrame:
    """Write n slices as stacks into OUT/{hemorrhage,normal,masks}/<id>.png plus OUT/labels.csv. With
    `twins`, every patient is written twice, with its bleed (ids ..._s<j>) and without it (..._t<j>),
    in one group, so that the bleed is all that separates the classes. `scanner`: how the slices are imaged
    and exported (core.phantom.scanner); the same seed gives the same heads on every scanner."""
    if n < 1 or stack_size < 1:
        raise ValueError("need n >= 1 slices and stack_size >= 1")
    out, sp = Path(out), scanner.fov_mm / size
    for folder in ("hemorrhage", "normal", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    copies = 2 if twins else 1
    n_stacks = -(-n // (stack_size * copies))
    n_hem = n_stacks if twins else round(hemorrhage_fraction * n_stacks)
    # Hemorrhagic stacks spread evenly over the stack ids, cycling through the subtypes.
    subtype_of = {int(s): SUBTYPES[i % len(SUBTYPES)]
                  for i, s in enumerate(np.arange(n_hem) * n_stacks // max(n_hem, 1))}
    rows, written = [], set()
    with tqdm(total=n, unit="slice", desc="phantoms", leave=False) as bar:
        for sid in range(n_stacks):
            rng = np.random.default_rng(np.random.SeedSequence([seed, sid]))  # order-independent
            d = float(rng.uniform(*difficulty))
            k = min(stack_size, -(-(n - sid * stack_size * copies) // copies))  # the last stack may be shorter
            stacks = (zip("st", generate_twins(rng, size, k, subtype_of[sid], d, sid, scanner)) if twins
                      else [("s", generate_stack(rng, size, k, subtype_of.get(sid), d, sid, scanner=scanner))])
            for tag, stack in stacks:
                for s in stack:
                    slice_id = f"ph{sid:06d}_{tag}{s.slice_index:02d}"
                    folder = "hemorrhage" if s.label else "normal"
                    write_png(out / folder / f"{slice_id}.png", render(s.hu, brain=scanner.window))
                    write_png(out / "masks" / f"{slice_id}.png", s.mask.astype(np.uint8) * 255)
                    written |= {(folder, slice_id), ("masks", slice_id)}
                    rows.append((slice_id, s.label, s.subtype, round(s.bleed_area_mm2, 2), round(d, 4), sid,
                                 s.slice_index, round(sp, 6)))
                    bar.update()
    _remove_unwritten(out, written)
    table = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    atomic_write(out / "labels.csv", table.to_csv(index=False))
    return table


def _remove_unwritten(out: Path, written: set) -> None:
    """A rerun must not leave an earlier run's slices or a killed run's temp files."""
    for folder in ("hemorrhage", "normal", "masks"):
        for f in [*(out / folder).glob("ph*_[st]*.png"), *(out / folder).glob(".ph*.partial")]:
            if (folder, f.stem) not in written:
                f.unlink()


def write_grid(path: Path, size: int = 256, seed: int = 0) -> None:
    """A labelled preview: one slice per subtype and three normals, bleeds outlined in MASK_COLOUR, as on every page."""
    rng = np.random.default_rng(seed)
    tiles = [(s, generate_slice(rng, size, s, 0.25, hard_negatives=())) for s in SUBTYPES]
    tiles += [("normal", generate_slice(rng, size, hard_negatives=())),
              ("normal: calcifications", generate_slice(rng, size, hard_negatives=("pineal", "choroid"))),
              ("normal: streaks, skull base",
               generate_slice(rng, size, hard_negatives=("streaks", "skull_base")))]
    text = int(np.clip(size // 18, 8, 14))  # labels must fit their tile at small sizes too
    head, cols = text + 6, 4
    grid = Image.new("RGB", (cols * size, 2 * (size + head)), "black")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=text)
    for i, (name, s) in enumerate(tiles):
        rgb = np.repeat(render(s.hu)[..., None], 3, axis=2)
        rgb[s.mask & ~ndimage.binary_erosion(s.mask)] = MASK_COLOUR
        x0, y0 = (i % cols) * size, (i // cols) * (size + head)
        grid.paste(Image.fromarray(rgb), (x0, y0 + head))
        draw.text((x0 + 4, y0 + 2), name, fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    grid.save(buf, format="PNG", optimize=True)
    atomic_write(path, buf.getvalue())


def main(argv=None) -> None:
    ap = Parser(prog="python -m core.phantom", description="Write a synthetic head CT dataset.")
    ap.add_argument("--out", type=folder, help="dataset folder to write")
    ap.add_argument("--n", type=positive_int, default=400, help="number of slices")
    ap.add_argument("--size", type=int_at_least(32), default=256, help="image size in pixels")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--stack-size", type=positive_int, default=5, help="slices per patient stack")
    ap.add_argument("--hemorrhage-fraction", type=unit_float, default=0.5, help="share of hemorrhagic stacks")
    ap.add_argument("--difficulty", type=unit_float, nargs=2, default=(0.2, 0.8), metavar=("LO", "HI"))
    ap.add_argument("--twins", action="store_true", help="write every patient with and without its bleed")
    ap.add_argument("--scanner", choices=list(SCANNERS), default=DEFAULT.name,
                    help="how the heads are imaged: the default, or another site's noise, kernel, slice thickness, "
                         "field of view and window (core.phantom.scanner)")
    ap.add_argument("--grid", type=Path, help="also write a labelled preview grid PNG here")
    args = ap.parse_args(argv)
    lo, hi = args.difficulty
    if args.out is None and args.grid is None:
        ap.error("give --out DIR and/or --grid PATH")
    if lo > hi:
        ap.error(f"--difficulty LO HI needs LO <= HI, got {lo:g} {hi:g}")
    if args.grid:
        write_grid(args.grid, args.size, args.seed)
        print(f"grid written to {args.grid}")
    if args.out:
        start = time.perf_counter()
        table = write_dataset(args.out, args.n, args.size, args.seed, args.stack_size,
                              args.hemorrhage_fraction, (lo, hi), args.twins, SCANNERS[args.scanner])
        seconds = time.perf_counter() - start
        counts = table[table.label == 1].subtype.value_counts()
        per_subtype = ", ".join(f"{s} {counts.get(s, 0)}" for s in SUBTYPES)
        print(f"{len(table)} slices ({args.size} px) in {args.out}: hemorrhage {int(table.label.sum())} "
              f"({per_subtype}), normal {int((table.label == 0).sum())}; "
              f"{seconds:.1f} s, {len(table) / seconds:.0f} slices/s")

