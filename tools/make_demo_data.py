"""Write the small synthetic VOC-format demo dataset (see datasets/demo.py).

    python tools/make_demo_data.py --root data/demo [--num_train 48] [--num_val 17] \\
        [--size 96 128] [--seed 0]

Does nothing if a complete demo dataset with the same parameters is already there.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segzoo.datasets.demo import DEMO_CLASSES, make_demo_dataset  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/demo"),
                        help="folder to write (default: data/demo)")
    parser.add_argument("--num_train", type=int, default=48)
    parser.add_argument("--num_val", type=int, default=17)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        written = make_demo_dataset(args.root, args.num_train, args.num_val, args.size, args.seed)
    except UserError as e:
        exit_with(e)
    if written:
        print(f"wrote {args.num_train} train + {args.num_val} val images "
              f"({args.size[0]}x{args.size[1]}, {len(DEMO_CLASSES)} classes) to {args.root} "
              f"in {time.perf_counter() - start:.1f}s")
    else:
        print(f"demo dataset already complete in {args.root}; nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
