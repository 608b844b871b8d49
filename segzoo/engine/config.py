"""Command-line flags of the runner, shared by the launcher and train.py.

Two stages, as timm does it: an optional YAML `--config` supplies defaults, the command line
overrides them, and the resolved arguments are written next to the outputs (`args.yaml`).
Flag names and meanings follow the original ModelZoo launcher; booleans are the words
True/False (also true/false/1/0/yes/no).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from segzoo.runtime.errors import UserError

TRUE_WORDS = {"true", "1", "yes", "y", "on"}
FALSE_WORDS = {"false", "0", "no", "n", "off"}


def str2bool(text) -> bool:
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def positive_int(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def crop_size(text):
    """513 (square) or "512,1024" / "512x1024" (height, width): an int or a [h, w] list."""
    if isinstance(text, (list, tuple)):
        parts = [str(t) for t in text]
    else:
        parts = str(text).replace("x", ",").split(",")
    try:
        sizes = [positive_int(p.strip()) for p in parts]
    except argparse.ArgumentTypeError:
        sizes = []
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a positive integer or HEIGHT,WIDTH, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def non_negative_int(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of the whole usage block."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def add_train_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("run")
    g.add_argument("--config", default=None, help="YAML file of defaults (keys are flag names); the command line overrides it")
    g.add_argument("--work_dir", default="experiments/pspnet", help="checkpoints, logs, metrics and plots go here")
    g.add_argument("--device", default=None, help="cpu, cuda or sdaa (required)")
    g.add_argument("--default_rank", type=non_negative_int, default=0,
                   help="device index of a single-process run (under DDP each rank uses its LOCAL_RANK)")
    g.add_argument("--test_only", type=str2bool, default=False, help="evaluate --ckpt and exit")
    g.add_argument("--ckpt", default=None, help="checkpoint to resume (with --continue_training) or to load weights from")
    g.add_argument("--continue_training", type=str2bool, default=False, help="resume --ckpt at the next epoch")
    g.add_argument("--overwrite", type=str2bool, default=False,
                   help="allow training into a work dir that already holds another run's checkpoints")
    g.add_argument("--random_seed", type=int, default=0, help="seed; rank r uses seed + r")
    g.add_argument("--deterministic", type=str2bool, default=False, help="bitwise-repeatable runs (slower)")
    g.add_argument("--print_interval", type=positive_int, default=10, help="iterations between log lines")
    g.add_argument("--val_epoch", type=positive_int, default=5, help="evaluate every N epochs (and after the last)")
    g.add_argument("--workers", type=non_negative_int, default=None,
                   help="data-loader workers per process (default: the machine's cores shared among the processes, at most 8)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="voc", choices=["voc", "demo"],
                   help="voc: a VOC-format dataset at --dataset_path; demo: built-in synthetic data (written on first use)")
    g.add_argument("--dataset_path", default=None, help="dataset root (demo: where to write it, default data/demo)")
    g.add_argument("--num_classes", type=positive_int, default=None,
                   help="21: VOC with background; 20: the original protocol (background ignored); "
                        "default: the length of class_names.txt, else 20")
    g.add_argument("--crop_size", type=crop_size, default=513,
                   help="training crop (and eval crop with --crop_val): SIZE or HEIGHT,WIDTH (e.g. 512,1024)")
    g.add_argument("--crop_val", type=str2bool, default=False, help="evaluate on center crops instead of whole images")
    g.add_argument("--batch_size", type=positive_int, default=16, help="training batch per process")
    g.add_argument("--val_batch_size", type=positive_int, default=1, help="evaluation batch per process")
    g.add_argument("--scale_min", type=float, default=0.5, help="random-scale range, lower end")
    g.add_argument("--scale_max", type=float, default=2.0, help="random-scale range, upper end")
    g.add_argument("--rotate", type=float, default=0.0, help="random rotation range in degrees (0 = off)")
    g.add_argument("--blur", type=str2bool, default=False, help="random Gaussian blur")

    g = p.add_argument_group("model")
    g.add_argument("--model_name", default="pspnet", help="pspnet, psanet, ccnet, encnet, deeplabv3")
    g.add_argument("--backbone", default="resnet50", help="resnet18, resnet34, resnet50, resnet101")
    g.add_argument("--stem", default="deep", choices=["deep", "plain"],
                   help="deep: three 3x3 convs (semseg/mmseg v1c); plain: torchvision's 7x7")
    g.add_argument("--output_stride", type=int, default=8, choices=[8, 16, 32])
    g.add_argument("--pretrained", default=None, help="local backbone checkpoint (torchvision or semseg layout)")
    g.add_argument("--aux_weight", type=float, default=0.4, help="weight of the auxiliary FCN head on layer3 (0 = no aux head)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout before the classifier")
    g.add_argument("--ops_impl", default="auto", choices=["auto", "kernel", "portable"],
                   help="attention ops of PSANet/CCNet: vendor kernel, portable tensor version, or auto")
    g.add_argument("--psa_type", default="bi", choices=["collect", "distribute", "bi"], help="PSANet attention")
    g.add_argument("--psa_compact", type=str2bool, default=False, help="PSANet compact variant (no psamask op)")
    g.add_argument("--recurrence", type=positive_int, default=2, help="CCNet criss-cross recurrences")
    g.add_argument("--se_weight", type=float, default=0.2, help="EncNet semantic-encoding loss weight")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epoch", type=positive_int, default=100, help="epochs to train")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    g.add_argument("--lr", type=float, default=None, help="base learning rate (default: sgd 0.01, adam/adamw 1e-4)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight_decay", type=float, default=1e-4)
    g.add_argument("--head_lr_mult", type=float, default=None,
                   help="lr multiplier of the heads over the backbone (default: 10 for sgd, 1 for adam/adamw)")
    g.add_argument("--lr_policy", default="poly", choices=["poly", "step", "cosine"], help="stepped per iteration")
    g.add_argument("--step", type=positive_int, default=None,
                   help="--lr_policy step: multiply the lr by 0.1 every STEP epochs (default: epoch // 3)")
    g.add_argument("--poly_power", type=float, default=0.9)
    g.add_argument("--warmup_iters", type=non_negative_int, default=0, help="linear lr warm-up iterations")
    g.add_argument("--loss_type", default="cross_entropy", choices=["cross_entropy", "focal_loss"])
    g.add_argument("--focal_gamma", type=float, default=2.0)

    g = p.add_argument_group("speed")
    g.add_argument("--autocast", type=str2bool, default=False,
                   help="mixed precision: fp16 + GradScaler on cuda/sdaa, bf16 on cpu")
    g.add_argument("--amp_dtype", default="auto", choices=["auto", "float16", "bfloat16"])
    g.add_argument("--channels_last", type=str2bool, default=False, help="NHWC memory format (faster on tensor cores)")
    g.add_argument("--compile", type=str2bool, default=False, help="torch.compile the model")
    g.add_argument("--sync_bn", default="auto", choices=["auto", "True", "False", "true", "false"],
                   help="SyncBatchNorm under DDP (auto: on for cuda/sdaa, off for cpu where PyTorch has none)")
    return p


def add_launch_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("launch")
    g.add_argument("--distributed", type=str2bool, default=False, help="run through torchrun (DDP)")
    g.add_argument("--nproc_per_node", type=positive_int, default=1, help="processes (devices) per node")
    g.add_argument("--nnodes", type=positive_int, default=1, help="number of machines")
    g.add_argument("--node_rank", type=non_negative_int, default=0, help="this machine's rank, 0..nnodes-1")
    g.add_argument("--master_addr", default="127.0.0.1", help="address of the node_rank 0 machine")
    g.add_argument("--master_port", type=positive_int, default=29505, help="free TCP port on the master")
    g.add_argument("--dry_run", type=str2bool, default=False, help="print the command and exit")
    return p


def train_parser() -> OneLineParser:
    return add_train_args(OneLineParser(description="Train or evaluate a segmentation model.", allow_abbrev=False))


def launch_parser() -> OneLineParser:
    return add_launch_args(OneLineParser(add_help=False, allow_abbrev=False))


def load_config(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a mapping of flag names to values")
    return values


def parse_train_args(argv=None, defaults: dict | None = None) -> argparse.Namespace:
    """Parse train.py's flags: `defaults`, then YAML values, then the command line; then validate."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = train_parser()
    if defaults:
        parser.set_defaults(**defaults)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        values = load_config(pre.config)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"--config {pre.config}: unknown key(s) {', '.join(unknown)}")
        # Run YAML values through each flag's own type so "True" and 0.01 behave as on the command line.
        actions = {a.dest: a for a in parser._actions}
        typed = {k: (actions[k].type(v) if actions[k].type and v is not None else v) for k, v in values.items()}
        parser.set_defaults(**typed)
    args = parser.parse_args(argv)
    return finalize(args)


def finalize(args: argparse.Namespace) -> argparse.Namespace:
    """Fill flag defaults that depend on other flags and reject impossible combinations."""
    if args.device is None:
        raise UserError("--device is required: cpu, cuda or sdaa")
    if args.lr is None:
        args.lr = 0.01 if args.optimizer == "sgd" else 1e-4
    if args.head_lr_mult is None:
        args.head_lr_mult = 10.0 if args.optimizer == "sgd" else 1.0
    if args.step is None:
        args.step = max(1, args.epoch // 3)
    if args.lr <= 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if not 0 < args.scale_min <= args.scale_max:
        raise UserError(f"--scale_min/--scale_max must satisfy 0 < min <= max, got {args.scale_min}, {args.scale_max}")
    if args.continue_training and not args.ckpt:
        raise UserError("--continue_training True needs --ckpt FILE (the checkpoint to resume)")
    if args.continue_training and args.test_only:
        raise UserError("--continue_training and --test_only exclude each other")
    if args.test_only and not args.ckpt:
        raise UserError("--test_only True needs --ckpt FILE (the weights to evaluate)")
    if args.dataset == "voc" and not args.dataset_path:
        raise UserError("--dataset_path is required for --dataset voc (or use --dataset demo)")
    if args.dataset == "demo" and not args.dataset_path:
        args.dataset_path = "data/demo"
    args.sync_bn = args.sync_bn.lower()
    check_names(args)
    return args


def check_names(args: argparse.Namespace) -> None:
    """Unknown model/backbone names fail here, before data loading or process start-up."""
    from segzoo.models import MODELS
    from segzoo.models.resnet import ARCHS
    if args.model_name not in MODELS:
        raise UserError(f"--model_name {args.model_name!r} is not known; use one of {', '.join(MODELS)}")
    if args.backbone not in ARCHS:
        raise UserError(f"--backbone {args.backbone!r} is not known; use one of {', '.join(ARCHS)}")


def default_workers(local_processes: int) -> int:
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_processes)))


def save_args(args: argparse.Namespace, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(vars(args), sort_keys=False))
