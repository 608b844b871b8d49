#!/usr/bin/env python
"""Compare one training step of a model on two sides (device:dtype), layer by layer.

    python tools/compare_numerics.py --model_name pspnet --backbone resnet50 --num_classes 21 \\
        --crop_size 128 --batch_size 2 --a cpu:float32 --b cpu:bfloat16
    python tools/compare_numerics.py --model_name pspnet --ckpt best.pth --a cuda:float32 --dump side_a.pt
    python tools/compare_numerics.py --model_name pspnet --ckpt best.pth --b sdaa:float32 --against side_a.pt

Both sides build the same model (the train.py flags: --model_name, --backbone, --num_classes,
--crop_size, --batch_size, model options), load the same weights (--ckpt, or the same seeded
random init from --random_seed), and run one forward and backward on one fixed batch: the first
training batch of --dataset_path (its seeded augmentation, as train.py draws it) or a seeded
synthetic one. Every module's output (execution order) and every parameter's gradient
(backward order) is compared: cosine similarity, max abs and rel error, share of elements
within 1 and 5 per mille (segzoo/runtime/numerics.py). The first module whose figures cross the threshold is named.

Mode: train mode (BatchNorm normalises with the batch's statistics, so BN's training kernels
are exercised) with every Dropout switched to eval, because dropout masks come from each
device's own random generator and would differ for reasons that are not arithmetic. The loss
is cross entropy of the main output plus --aux_weight times the auxiliary one, in float32.

Dtype of a side: the model and the batch are cast to it (model.to(dtype)), not autocast. Casting
runs every layer in that dtype, so the error a layer adds shows up at that layer; under autocast
some layers stay float32 and the error appears only where a cast happens.

Default thresholds (the lower precision of the two sides decides; override with --min_cosine,
--tolerance, --min_share, --min_grad_cosine): module outputs, float32: cosine >= 0.99999 and 90%
of elements within 1 per mille; float16: cosine >= 0.999; bfloat16: cosine >= 0.99 (for these
two the share within 5 per mille is reported, not judged: one rounding of a convolution's input
and weights already moves about a third of its outputs beyond it). Gradients, by cosine only:
float32 >= 0.999, float16 and bfloat16 >= 0.99. Reasons in segzoo/runtime/numerics.py. Writes compare.csv, compare.json and compare.png (error by layer, thresholds drawn)
into --out_dir. Exit status: 0 all pass, 1 a comparison fails, 2 bad input.

Two machines: --dump FILE runs side --a only and saves its capture together with the batch and
weight hashes and the environment (torch and plugin versions, device name); --against FILE on
the other machine runs side --b and compares with it. Different models, batches or weights are
refused (weights only allowed with --allow_different_weights True, e.g. to bisect a suspected
fault with --ckpt_b holding one changed layer).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import copy  # noqa: E402
import csv  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from segzoo.engine.config import OneLineParser, parse_train_args  # noqa: E402
from segzoo.engine.setup import model_from_args  # noqa: E402
from segzoo.runtime import numerics  # noqa: E402
from segzoo.runtime.checkpoint import check_compatible, load_checkpoint, load_model_weights  # noqa: E402
from segzoo.runtime.config_types import str2bool  # noqa: E402
from segzoo.runtime.device import Device  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402

DUMP_FORMAT = "segzoo-numerics-1"
IGNORE_INDEX = 255
# The model flags a dump must share with the comparing side.
MODEL_KEYS = ("model_name", "backbone", "num_classes", "crop_size", "batch_size", "output_stride", "aux_weight",
              "bins", "psa_type", "psa_compact", "recurrence", "num_codes", "stem", "contract_dilation")


@dataclass(frozen=True)
class Side:
    flag: str
    device: str
    dtype: str

    def __str__(self) -> str:
        return f"{self.device}:{self.dtype}"


def parse_side(flag: str, text: str) -> Side:
    """"cuda:bfloat16" -> Side; the device must be present and support the dtype."""
    device_name, _, dtype_text = text.partition(":")
    try:
        dtype = numerics.dtype_name(dtype_text or "float32")
    except ValueError as err:
        raise UserError(f"{flag} {text}: {err}") from None
    try:
        device = Device(device_name)
    except UserError as err:
        raise UserError(f"{flag} {text}: {err}") from None
    try:  # the smallest thing a segmentation model does in that dtype
        x = torch.ones(1, 1, 3, 3, device=device.torch_device, dtype=numerics.DTYPES[dtype])
        F.conv2d(x, x).sum().item()
    except (RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{flag} {text}: {device_name} cannot run {dtype} convolutions here ({first[:120]}); "
                        f"pick another dtype") from None
    return Side(flag, device_name, dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--a", default="cpu:float32", metavar="DEVICE:DTYPE",
                        help="reference side (default cpu:float32)")
    parser.add_argument("--b", default=None, metavar="DEVICE:DTYPE", help="side under test, e.g. cuda:bfloat16")
    parser.add_argument("--ckpt_b", default=None, metavar="PTH",
                        help="other weights for side B (needs --allow_different_weights True)")
    parser.add_argument("--allow_different_weights", type=str2bool, default=False)
    parser.add_argument("--dump", default=None, metavar="FILE", help="run side --a only and save it here")
    parser.add_argument("--against", default=None, metavar="FILE", help="compare side --b with this dump")
    parser.add_argument("--out_dir", default=None, help="where CSV, JSON and PNG go (default numerics_<model>)")
    parser.add_argument("--min_cosine", type=float, default=None, help="override the dtype's cosine bar")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="override the relative tolerance (0.001 or 0.005)")
    parser.add_argument("--min_share", type=float, default=None, help="override the share-within-tolerance bar")
    parser.add_argument("--min_grad_cosine", type=float, default=None, help="override the gradients' cosine bar")
    parser.add_argument("--max_rows", type=int, default=40, help="table rows to print around the first failure")
    return parser


# ---- the two sides ---------------------------------------------------------------------------------
def load_batch(args) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (N, 3, S, S), labels int64 (N, S, S)): the first training batch of
    --dataset_path as train.py's sampler orders and augments it, or a seeded synthetic batch."""
    if args.dataset_path_given:
        from segzoo.datasets.sampler import SeededDistributedSampler
        from segzoo.engine.data import build_datasets
        from segzoo.runtime.distributed import DistInfo
        train_set, _ = build_datasets(args, DistInfo())
        args.num_classes = train_set.num_classes  # the data's (build_datasets checked a given one)
        sampler = SeededDistributedSampler(len(train_set), 1, 0, shuffle=True, seed=args.random_seed)
        items = list(sampler)[:args.batch_size]
        if len(items) < args.batch_size:
            raise UserError(f"--batch_size {args.batch_size}: {args.dataset_path} has only {len(items)} "
                            f"training images")
        samples = [train_set[item] for item in items]
        return torch.stack([s[0] for s in samples]).float(), torch.stack([s[1] for s in samples]).long()
    generator = torch.Generator().manual_seed(args.random_seed)
    size = (args.batch_size, args.crop_size, args.crop_size)
    images = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size, generator=generator)
    labels = torch.randint(0, args.num_classes, size, generator=generator)
    return images, labels


def base_state(args, ckpt_path: Optional[str], flag: str) -> dict:
    """float32 cpu state dict: --ckpt's weights, or the seeded random init."""
    torch.manual_seed(args.random_seed)
    model = model_from_args(args, args.num_classes, pretrained=args.pretrained)
    if ckpt_path:
        ckpt = load_checkpoint(ckpt_path)
        check_compatible(ckpt, ckpt_path, args.model_name, args.num_classes, args.backbone)
        load_model_weights(model, ckpt["model"], f"{flag} {ckpt_path}" if flag != "--ckpt" else ckpt_path)
    return model.state_dict()


def run_side(args, side: Side, state: dict, batch) -> numerics.Capture:
    device = Device(side.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    device.configure_backends(deterministic=True)  # repeatable kernels, true float32 (no TF32 on cuda)
    try:
        return _run_side(args, side, state, batch, device)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)  # process-wide: leave it as found


def _run_side(args, side: Side, state: dict, batch, device: Device) -> numerics.Capture:
    dtype = numerics.DTYPES[side.dtype]
    model = model_from_args(args, args.num_classes)
    model.load_state_dict(copy.deepcopy(state))
    model.to(device.torch_device, dtype)
    model.train()
    for module in model.modules():  # see the module docstring: dropout masks are per-device RNG
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.eval()
    images = batch[0].to(device.torch_device, dtype)
    labels = batch[1].to(device.torch_device)

    def loss_fn(outputs):
        loss = F.cross_entropy(outputs["out"].float(), labels, ignore_index=IGNORE_INDEX)
        if "aux" in outputs:
            loss = loss + args.aux_weight * F.cross_entropy(outputs["aux"].float(), labels, ignore_index=IGNORE_INDEX)
        return loss

    result = numerics.capture(model, images, loss_fn)
    device.synchronize()
    return result


def environment(side: Side) -> dict:
    env = {"side": str(side), "torch": str(torch.__version__), "python": platform.python_version(),
           "device": Device(side.device).description}
    for plugin in ("torch_sdaa", "triton"):
        try:
            env[plugin] = str(getattr(importlib.import_module(plugin), "__version__", "unknown"))
        except ImportError:
            pass
    return env


# ---- comparison --------------------------------------------------------------------------------------
def threshold_for(args, dtype_a: str, dtype_b: str) -> numerics.Threshold:
    default = numerics.THRESHOLDS[numerics.lower_precision(dtype_a, dtype_b)]
    return numerics.Threshold(
        args.min_cosine if args.min_cosine is not None else default.min_cosine,
        args.tolerance if args.tolerance is not None else default.tolerance,
        args.min_share if args.min_share is not None else default.min_share,
        args.min_grad_cosine if args.min_grad_cosine is not None else default.min_grad_cosine)


def compare_captures(a: numerics.Capture, b: numerics.Capture, threshold: numerics.Threshold) -> list[dict]:
    """One row per module output (execution order), then per parameter gradient."""
    rows = []
    for kind, left, right in (("output", a.outputs, b.outputs), ("grad", a.grads, b.grads)):
        others = dict(right)
        if [n for n, _ in left] != [n for n, _ in right]:
            raise UserError(f"the two sides recorded different {kind}s (the models differ): "
                            f"{len(left)} vs {len(right)}; use the same model flags on both")
        for index, (name, tensor) in enumerate(left):
            fig = numerics.compare(others[name], tensor)
            rows.append({"kind": kind, "index": index, "name": name, "shape": "x".join(map(str, tensor.shape)),
                         **fig.as_dict(), "passed": fig.passes(threshold, gradient=kind == "grad")})
    return rows


def _table(rows: list[dict], first: Optional[dict], max_rows: int) -> str:
    """The rows up to a little past the first failure (or the last ones when all pass)."""
    header = f"{'kind':6} {'#':>4} {'module / parameter':44} {'cosine':>10} {'max_abs':>10} {'max_rel':>10} " \
             f"{'<=1pm':>7} {'<=5pm':>7}  ok"
    if first is not None:
        end = rows.index(first) + 1
        shown = rows[max(0, end - max_rows + 3):end + 3]
    else:
        shown = [r for r in rows if r["kind"] == "output"][-max_rows // 2:] + \
                [r for r in rows if r["kind"] == "grad"][:max_rows // 2]
    lines = [header]
    for r in shown:
        lines.append(f"{r['kind']:6} {r['index']:>4} {r['name'][-44:]:44} {r['cosine']:10.7f} {r['max_abs']:10.3e} "
                     f"{r['max_rel']:10.3e} {100 * r['within_1pm']:6.2f}% {100 * r['within_5pm']:6.2f}%  "
                     f"{'yes' if r['passed'] else 'NO'}")
    return "\n".join(lines)


def write_reports(rows: list[dict], meta: dict, threshold: numerics.Threshold, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "compare.json").write_text(json.dumps({**meta, "threshold": threshold.__dict__, "rows": rows}, indent=1))
    plot(rows, threshold, meta, out_dir / "compare.png")


def plot(rows: list[dict], threshold: numerics.Threshold, meta: dict, path: Path) -> None:
    """Share of elements outside the tolerance and 1 - cosine, by layer, thresholds dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1)
    tol_key = "within_1pm" if threshold.tolerance <= 0.001 else "within_5pm"
    floor = 1e-12  # log axes: exact agreement drawn at the floor
    for ax, kind in zip(axes, ("output", "grad")):
        part = [r for r in rows if r["kind"] == kind]
        x = [r["index"] for r in part]
        ax.semilogy(x, [max(1 - r[tol_key], floor) for r in part], ".-", lw=0.8,
                    label=f"share of elements outside {1000 * threshold.tolerance:g} per mille")
        ax.semilogy(x, [max(1 - r["cosine"], floor) for r in part], ".-", lw=0.8, label="1 - cosine similarity")
        ax.axhline(1 - threshold.min_share, color="C0", ls="--", lw=1)
        ax.axhline(max(1 - threshold.min_cosine, floor), color="C1", ls="--", lw=1)
        failed = next((r for r in part if not r["passed"]), None)
        if failed is not None:
            ax.axvline(failed["index"], color="red", lw=1, label=f"first failure: {failed['name']}")
        ax.set(xlabel="module output, execution order" if kind == "output" else
               "parameter gradient, backward order", ylabel="error")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{meta['model']}: {meta['a']} vs {meta['b']} (dashed: thresholds)")
    fig.savefig(path, dpi=100)


# ---- main ------------------------------------------------------------------------------------------
def _model_meta(args) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k in MODEL_KEYS}


def _check_dump(dump: dict, path: str, args, batch_hash: str, weights_hash: str) -> None:
    meta = dump["meta"]
    ours = _model_meta(args)
    diffs = [f"{k} {meta['model'].get(k)!r} there, {ours[k]!r} here" for k in ours if meta["model"].get(k) != ours[k]]
    if diffs:
        raise UserError(f"--against {path} is a dump of another model ({'; '.join(diffs)}); run with the same flags")
    if meta["batch_hash"] != batch_hash:
        raise UserError(f"--against {path} was made on another batch (hash {meta['batch_hash']} there, {batch_hash} "
                        f"here); use the same --dataset_path, --batch_size, --crop_size and --random_seed")
    if meta["weights_hash"] != weights_hash and not args.allow_different_weights:
        raise UserError(f"--against {path} was made with other weights (hash {meta['weights_hash']} there, "
                        f"{weights_hash} here); use the same --ckpt, or --allow_different_weights True to bisect")


def load_dump(path: str) -> dict:
    if not Path(path).is_file():
        raise UserError(f"--against {path}: no such file")
    try:
        dump = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user mistake here
        raise UserError(f"--against {path} is not a readable dump ({type(exc).__name__})") from None
    if not isinstance(dump, dict) or dump.get("format") != DUMP_FORMAT:
        raise UserError(f"--against {path} is not a compare_numerics --dump file")
    return dump


def run(argv: Sequence[str]) -> int:
    own, rest = build_parser().parse_known_args(argv)
    if own.dump and own.against:
        raise UserError("--dump and --against exclude each other: dump on the reference machine, compare on the other")
    if own.ckpt_b and not own.allow_different_weights:
        raise UserError("--ckpt_b gives side B other weights; add --allow_different_weights True to compare them")
    if not own.dump and own.b is None:
        raise UserError("--b is required (the side under test, e.g. --b cpu:bfloat16), unless --dump")
    for flag in ("min_cosine", "min_share", "tolerance", "min_grad_cosine"):
        value = getattr(own, flag)
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"--{flag} {value} must lie in [0, 1]")
    defaults = {"device": "cpu", "batch_size": 2, "crop_size": 128}
    dataset_path_given = any(a == "--dataset_path" or a.startswith("--dataset_path=") for a in rest)
    if not dataset_path_given:  # parsed only; the batch is synthetic, with 21 classes unless told
        defaults.update(dataset="demo", num_classes=21)
    args = parse_train_args(rest, defaults=defaults)
    args.dataset_path_given = dataset_path_given
    for flag in ("dump", "against", "allow_different_weights", "ckpt_b"):
        setattr(args, flag, getattr(own, flag))

    side_a = parse_side("--a", own.a) if not own.against else None
    side_b = parse_side("--b", own.b) if not own.dump else None
    batch = load_batch(args)
    batch_hash = numerics.tensor_hash(batch)
    state_a = base_state(args, args.ckpt, "--ckpt")
    weights_hash = numerics.state_hash(state_a)

    if own.dump:
        capture = run_side(args, side_a, state_a, batch)
        meta = {"model": _model_meta(args), "batch_hash": batch_hash, "weights_hash": weights_hash,
                "environment": environment(side_a), "side": str(side_a)}
        torch.save({"format": DUMP_FORMAT, "meta": meta, "outputs": capture.outputs, "grads": capture.grads,
                    "loss": capture.loss}, own.dump)
        print(f"side A {side_a} on {meta['environment']['device']}: loss {capture.loss:.6f}, "
              f"{len(capture.outputs)} module outputs, {len(capture.grads)} gradients; "
              f"batch {batch_hash}, weights {weights_hash}; wrote {own.dump}")
        return 0

    state_b = base_state(args, own.ckpt_b, "--ckpt_b") if own.ckpt_b else state_a
    if own.against:
        dump = load_dump(own.against)
        _check_dump(dump, own.against, args, batch_hash, numerics.state_hash(state_b))
        capture_a = numerics.Capture(dump["outputs"], dump["grads"], dump["loss"])
        env_a, name_a = dump["meta"]["environment"], dump["meta"]["side"]
        dtype_a = name_a.split(":")[1]
    else:
        capture_a = run_side(args, side_a, state_a, batch)
        env_a, name_a, dtype_a = environment(side_a), str(side_a), side_a.dtype
    capture_b = run_side(args, side_b, state_b, batch)
    threshold = threshold_for(own, dtype_a, side_b.dtype)
    rows = compare_captures(capture_a, capture_b, threshold)
    first_out = numerics.first_failure([r for r in rows if r["kind"] == "output"])
    first_grad = numerics.first_failure([r for r in rows if r["kind"] == "grad"])
    meta = {"model": f"{args.model_name}-{args.backbone}", "a": name_a, "b": str(side_b),
            "environment_a": env_a, "environment_b": environment(side_b), "batch_hash": batch_hash,
            "loss_a": capture_a.loss, "loss_b": capture_b.loss,
            "first_failing_output": first_out["name"] if first_out else None,
            "first_failing_grad": first_grad["name"] if first_grad else None}
    out_dir = Path(own.out_dir or f"numerics_{args.model_name}_{name_a}_vs_{side_b}".replace(":", "-"))
    write_reports(rows, meta, threshold, out_dir)

    print(f"A {name_a} ({env_a['device']}, torch {env_a['torch']})  vs  B {side_b} "
          f"({meta['environment_b']['device']}, torch {meta['environment_b']['torch']})")
    print(f"loss A {capture_a.loss:.6f}  B {capture_b.loss:.6f}; threshold: {threshold.describe()}")
    print(_table(rows, first_out or first_grad, own.max_rows))
    n_out = sum(r["kind"] == "output" for r in rows)
    bad_out = sum(not r["passed"] for r in rows if r["kind"] == "output")
    bad_grad = sum(not r["passed"] for r in rows if r["kind"] == "grad")
    print(f"{n_out} module outputs, {bad_out} fail; {len(rows) - n_out} gradients, {bad_grad} fail")
    print(f"first failing module output: {first_out['name'] if first_out else 'none'}")
    print(f"first failing gradient: {first_grad['name'] if first_grad else 'none'}")
    print(f"wrote {out_dir}/compare.csv, compare.json, compare.png")
    return 1 if first_out or first_grad else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except UserError as err:
        exit_with(err)


if __name__ == "__main__":
    sys.exit(main())
