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

from segzoo.datasets import DATASETS
from segzoo.engine.evaluate import add_eval_args, eval_settings
from segzoo.engine.outputs import add_output_args
from segzoo.engine.schedule import add_schedule_args, finalize_schedule
from segzoo.models import MODELS
from segzoo.models.backbones import BACKBONES
from segzoo.registry import Registry
from segzoo.runtime.config_types import crop_size, non_negative_float, non_negative_int, positive_int, str2bool
from segzoo.runtime.errors import UserError
from segzoo.runtime.losses import LOSS_TYPES


def _registered(registry: Registry):
    """An argparse type accepting the registry's names (the message lists them)."""
    def check(text):
        if text not in registry:
            raise argparse.ArgumentTypeError(f"{text!r} is not a known {registry.kind}; use one of "
                                             f"{', '.join(registry.names())}")
        return text
    check.__name__ = f"{registry.kind}_name"
    return check


model_name, backbone_name, dataset_name = _registered(MODELS), _registered(BACKBONES), _registered(DATASETS)


def add_component_options(p: argparse.ArgumentParser) -> None:
    """One flag per option a model, backbone or dataset declares (see segzoo.registry), grouped
    by kind; the help names the components that use it."""
    for registry in (MODELS, BACKBONES, DATASETS):
        g = p.add_argument_group(f"{registry.kind} options")
        for option, owners in registry.all_options():
            users = ", ".join(owners) if len(owners) <= 4 else f"{len(owners)} {registry.kind}s"
            g.add_argument(f"--{option.name}", type=option.type, default=option.default, choices=option.choices,
                           help=f"{option.help} [{users}]")


def component_options(args: argparse.Namespace, registry: Registry, name: str) -> dict:
    """The options component ``name`` of ``registry`` declares, with this run's values."""
    return {o.name: getattr(args, o.name) for o in registry.get(name).options}

class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of the whole usage block."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def add_train_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("run")
    g.add_argument("--config", default=None, help="YAML file of defaults (keys are flag names); the command line overrides it")
    g.add_argument("--work_dir", "--save_dir", default="experiments/pspnet",
                   help="checkpoints, logs, metrics and plots go here (--save_dir: PaddleSeg's name)")
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
    g.add_argument("--print_interval", "--log_iter", type=positive_int, default=10,
                   help="iterations between log lines (--log_iter: PaddleSeg's name)")
    g.add_argument("--do_eval", action="store_true",
                   help="accepted from PaddleSeg commands: evaluation during training is always on "
                        "(its cadence is --val_epoch or --val_interval)")
    g.add_argument("--val_epoch", type=positive_int, default=5, help="evaluate every N epochs (and after the last)")
    g.add_argument("--workers", type=non_negative_int, default=None,
                   help="data-loader workers per process (default: the machine's cores shared among the processes, at most 8)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="voc", type=dataset_name, metavar="NAME",
                   help="dataset layout: " + "; ".join(f"{e.name}: {e.summary}" for e in DATASETS.entries()))
    g.add_argument("--dataset_path", default=None, help="dataset root (demo: where to write it, default data/demo)")
    g.add_argument("--num_classes", type=positive_int, default=None,
                   help="classes of the protocol (VOC 21 or 20, Pascal Context 60 or 59; "
                        "default: the dataset's, class_names.txt's length for custom VOC-format data)")
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
    g.add_argument("--model_name", default="pspnet", type=model_name, metavar="NAME",
                   help="decode head: " + ", ".join(MODELS.names()))
    g.add_argument("--backbone", default="resnet50", type=backbone_name, metavar="NAME",
                   help="backbone: " + ", ".join(BACKBONES.names()))
    g.add_argument("--aux_weight", type=non_negative_float, default=0.4,
                   help="weight of the auxiliary FCN head's loss (0 = no aux head)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout before the classifier")
    g.add_argument("--align_corners", type=str2bool, default=False,
                   help="bilinear resizing in the heads and of the output: False as mmseg/torchvision, "
                        "True as hszhao/semseg (to evaluate its checkpoints to the same outputs)")
    add_component_options(p)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epoch", type=positive_int, default=100, help="epochs to train")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"],
                   help="SGD with momentum (the seeds' choice) or Adam/AdamW (the primary seed's commands)")
    g.add_argument("--lr", type=float, default=None, help="base learning rate (default: sgd 0.01, adam/adamw 1e-4)")
    g.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    g.add_argument("--weight_decay", type=non_negative_float, default=1e-4, help="L2 weight decay of every parameter")
    g.add_argument("--head_lr_mult", type=float, default=None,
                   help="lr multiplier of the heads over the backbone (default: 10 for sgd, 1 for adam/adamw)")
    g.add_argument("--lr_policy", default="poly", choices=["poly", "step", "cosine"], help="stepped per iteration")
    g.add_argument("--step", type=positive_int, default=None,
                   help="--lr_policy step: multiply the lr by 0.1 every STEP epochs (default: epoch // 3)")
    g.add_argument("--poly_power", type=non_negative_float, default=0.9,
                   help="--lr_policy poly: lr = base * (1 - it / total) ** power")
    g.add_argument("--warmup_iters", type=non_negative_int, default=0, help="linear lr warm-up iterations")
    g.add_argument("--loss_type", default="cross_entropy", choices=list(LOSS_TYPES),
                   help="pixel loss of the main and auxiliary heads (255 ignored)")
    g.add_argument("--focal_gamma", type=non_negative_float, default=2.0, help="focusing parameter of --loss_type focal_loss")

    add_schedule_args(p)
    add_eval_args(p)
    add_output_args(p)

    g = p.add_argument_group("speed")
    g.add_argument("--autocast", type=str2bool, default=False,
                   help="mixed precision: fp16 + GradScaler on cuda/sdaa, bf16 on cpu")
    g.add_argument("--amp_dtype", default="auto", choices=["auto", "float16", "bfloat16"],
                   help="autocast dtype (auto: float16 on cuda/sdaa, bfloat16 on cpu)")
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
    g.add_argument("--max_restarts", type=non_negative_int, default=0,
                   help="torchrun restarts of failed workers (needs --distributed True and --auto_resume True)")
    return p


def train_parser() -> OneLineParser:
    examples = ("examples:\n"
                "  python train.py --device cpu --dataset demo --backbone resnet18 --crop_size 96 --epoch 20\n"
                "  torchrun --nproc_per_node 4 train.py --device cuda --config configs/pspnet50_voc2007.yaml "
                "--dataset_path /data/voc\n"
                "  python train.py --device cuda --dataset_path /data/voc --test_only True --ckpt best_pspnet_voc.pth")
    return add_train_args(OneLineParser(description="Train or evaluate a segmentation model.", epilog=examples,
                                        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False))


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


def yaml_to_argv(values: dict, path: str) -> list:
    """A config mapping as command-line words, so every YAML value is checked exactly as the
    flag it sets (type, range, choices): no silent truncation of 2.9 into an integer flag."""
    argv = []
    for key, value in values.items():
        if value is None:
            raise UserError(f"--config {path}: {key} is empty (null); give it a value or remove the line")
        if isinstance(value, bool):
            word = str(value)
        elif isinstance(value, (list, tuple)):
            word = ",".join(str(v) for v in value)
        elif isinstance(value, (int, float, str)):
            word = str(value)
        else:
            raise UserError(f"--config {path}: {key} must be a single value or a list, got {type(value).__name__}")
        argv += [f"--{key}", word]
    return argv


def parse_train_args(argv=None, defaults: dict | None = None) -> argparse.Namespace:
    """Parse train.py's flags: `defaults`, then YAML values, then the command line; then validate."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = train_parser()
    if defaults:
        parser.set_defaults(**defaults)
    pre, _ = parser.parse_known_args(argv)
    yaml_argv = []
    if pre.config:
        values = load_config(pre.config)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known - {"config"})
        if unknown:
            raise UserError(f"--config {pre.config}: unknown key(s) {', '.join(unknown)}")
        yaml_argv = yaml_to_argv({k: v for k, v in values.items() if k != "config"}, pre.config)
        try:
            parser.parse_args(yaml_argv)
        except UserError as err:
            raise UserError(f"--config {pre.config}: {err}") from None
    args = parser.parse_args(yaml_argv + argv)
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
    finalize_schedule(args)
    eval_settings(args)  # bad evaluation flags are refused here, before any process starts
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
    if not args.dataset_path:
        default_path = DATASETS.get(args.dataset).extra.get("default_path")
        if default_path is None:
            raise UserError(f"--dataset_path is required for --dataset {args.dataset} (or use --dataset demo)")
        args.dataset_path = default_path
    args.sync_bn = args.sync_bn.lower()
    return args


def default_workers(local_processes: int) -> int:
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_processes)))


def save_args(args: argparse.Namespace, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(vars(args), sort_keys=False))
