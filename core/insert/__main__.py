"""`python -m core.insert --normals DIR --out DIR [--n N] [--seed K]`: paint hemorrhages into the normal slices of
DIR and write a dataset (core.insert.write) that train.py --data reads as it is."""
from __future__ import annotations

import sys

from core.cli import Parser, folder, name_list, non_negative_int, positive_int, unit_range
from core.data.discover import DatasetError
from core.insert.write import write_grid, write_painted
from core.subtypes import SUBTYPES


def main(argv=None) -> int:
    p = Parser(prog="python -m core.insert", description=__doc__.splitlines()[0])
    p.add_argument("--normals", required=True, help="dataset folder; its normal slices are painted into")
    p.add_argument("--out", required=True, type=folder)
    p.add_argument("--n", type=positive_int, help="painted slices, spread over the normals (default: one each)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--difficulty", type=unit_range, default=(0.0, 1.0),
                   help="lo,hi: higher is smaller and fainter (default 0,1)")
    p.add_argument("--subtypes", type=name_list, default=list(SUBTYPES), help=f"from {', '.join(SUBTYPES)}")
    p.add_argument("--copies", type=positive_int, default=1, help="painted copies of each normal (without --n)")
    p.add_argument("--real-bleeds", action="store_true", help="also write the folder's own hemorrhage slices")
    p.add_argument("--grid", help="also write a PNG: per subtype a normal, its painted copy and the outlined bleed")
    args = p.parse_args(argv)
    unknown = [s for s in args.subtypes if s not in SUBTYPES]
    if unknown:
        p.error(f"unknown subtype(s) {', '.join(unknown)}; choose from {', '.join(SUBTYPES)}")
    try:
        labels = write_painted(args.normals, args.out, args.n, args.seed, args.difficulty, args.subtypes,
                               args.copies, args.real_bleeds)
    except DatasetError as err:
        print(f"hemolens: {err}", file=sys.stderr)
        return 2
    if args.grid:
        write_grid(args.out, args.grid)
    painted, normal = labels[labels["bleed_area_mm2"] > 0], labels[labels["label"] == 0]
    real = len(labels) - len(painted) - len(normal)
    print(f"{len(normal)} normal slices, {len(painted)} painted copies and {real} real hemorrhage slices written to "
          f"{args.out}: " + ", ".join(f"{s} {c}" for s, c in painted["subtype"].value_counts().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
