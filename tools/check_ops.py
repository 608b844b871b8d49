#!/usr/bin/env python
"""Check every implementation of the attention ops on a device against a float64 CPU reference.

    python tools/check_ops.py --device cpu                      # small shapes, all dtypes
    python tools/check_ops.py --device cuda --dtype bfloat16    # small and production shapes
    python tools/check_ops.py --device sdaa --shapes production

Runs PSA mask (collect, distribute) and criss-cross attention, forward and backward, with every
implementation segzoo.ops.available_impls offers on the device (the vendor kernel on sdaa, the
Triton kernel on cuda, the portable tensor-op version everywhere), and prints one row per
(op, impl, dtype, shape): the forward and backward error as max |out - ref| / max |ref|, the
forward's max absolute error, the tolerance of that dtype, pass/fail and the time of one
forward + backward. Cases, reference and tolerances live in segzoo/ops/check.py (the tests use
the same code). Exit status: 0 all pass, 1 a row fails, 2 bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
from typing import Sequence  # noqa: E402

from segzoo.engine.config import OneLineParser  # noqa: E402
from segzoo.ops import check  # noqa: E402
from segzoo.runtime.device import Device  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", required=True, help="cpu, cuda or sdaa")
    parser.add_argument("--dtype", default="all", choices=("all",) + check.DTYPES,
                        help="dtype to check (default all)")
    parser.add_argument("--shapes", default=None, choices=("small", "production", "all"),
                        help="default: small on cpu (the production shapes take minutes there), all elsewhere")
    return parser


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    device = Device(args.device)
    shapes = args.shapes or ("small" if args.device == "cpu" else "all")
    sizes = ("small", "production") if shapes == "all" else (shapes,)
    dtypes = check.DTYPES if args.dtype == "all" else (args.dtype,)
    print(f"device {device.torch_device} ({device.description}); shapes {shapes}; reference: float64 on the cpu")
    print(check.HEADER)
    rows = check.run_checks(device.torch_device, dtypes, sizes, sync=device.synchronize,
                            on_row=lambda row: print(check.format_row(row), flush=True))
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows)} checks, {len(failed)} failed")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except UserError as err:
        exit_with(err)


if __name__ == "__main__":
    sys.exit(main())
