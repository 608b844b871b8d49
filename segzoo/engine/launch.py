"""The launcher behind run_scripts/run_*.py: original flags in, a train.py command out.

    --distributed False  ->  python train.py TRAIN_FLAGS
    --distributed True   ->  python run_scripts/torchrun.py --nproc_per_node N --nnodes M --node_rank R
                              --master_addr A --master_port P train.py TRAIN_FLAGS

`run_scripts/torchrun.py` is PyTorch's torchrun (torch.distributed.run) with a one-line failure
report. The command is printed, run as a child process that receives Ctrl-C/SIGTERM from the
launcher, and the launcher exits with the child's status. Flags are checked before anything
starts, so a bad flag, path or port is one line, not a crashed worker.

Single node, 4 devices:
    python run_scripts/run_pspnet.py --distributed True --nproc_per_node 4 --device cuda ...
Two nodes (run on each; NODE is 0 on the master, 1 on the other):
    python run_scripts/run_pspnet.py --distributed True --nnodes 2 --node_rank NODE --nproc_per_node 4 \\
        --master_addr MASTER_HOST --master_port 29505 --device cuda ...
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from segzoo.runtime.checkpoint import check_work_dir
from segzoo.engine.config import OneLineParser, add_launch_args, add_train_args, launch_parser, parse_train_args
from segzoo.engine.schedule import finalize_schedule
from segzoo.runtime.device import DEVICE_TYPES, device_count, device_type
from segzoo.runtime.errors import UserError, exit_with, flag_message

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "train.py"
TORCHRUN_PY = REPO / "run_scripts" / "torchrun.py"


def split_argv(argv: list) -> tuple:
    """Launch flags for the launcher, everything else forwarded to train.py unchanged."""
    launch, train_argv = launch_parser().parse_known_args(argv)
    return launch, train_argv


def build_command(launch, train_argv: list, python: str = sys.executable) -> list:
    if not launch.distributed:
        return [python, str(TRAIN_PY), *train_argv]
    restarts = ["--max_restarts", str(launch.max_restarts)] if getattr(launch, "max_restarts", 0) else []
    return [python, str(TORCHRUN_PY), *restarts,
            "--nproc_per_node", str(launch.nproc_per_node),
            "--nnodes", str(launch.nnodes),
            "--node_rank", str(launch.node_rank),
            "--master_addr", launch.master_addr,
            "--master_port", str(launch.master_port),
            str(TRAIN_PY), *train_argv]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def check_launch(launch, args) -> list:
    """Impossible flag combinations (UserError) and what this machine lacks to run the command
    (devices, a free port): a UserError too, except under --dry_run, which prints the command for
    any device and node layout and returns those problems as warning lines instead."""
    warnings = []

    def machine_problem(message: str) -> None:
        if not launch.dry_run:
            raise UserError(message)
        warnings.append(f"{message} (this machine could not run the command)")

    if not launch.distributed:
        if launch.nproc_per_node > 1 or launch.nnodes > 1:
            raise UserError(f"--nproc_per_node {launch.nproc_per_node} / --nnodes {launch.nnodes} need "
                            f"--distributed True")
        if launch.max_restarts:
            raise UserError(f"--max_restarts {launch.max_restarts} needs --distributed True (torchrun restarts "
                            f"the workers)")
    elif launch.node_rank >= launch.nnodes:
        raise UserError(f"--node_rank {launch.node_rank} must be below --nnodes {launch.nnodes}")
    if launch.max_restarts and not args.auto_resume:
        raise UserError(f"--max_restarts {launch.max_restarts} needs --auto_resume True, so that a restarted "
                        f"worker continues from the latest checkpoint instead of starting over")
    try:
        device_type(args.device)  # unknown device, missing plugin or no device: one line, before anything starts
        present = device_count(args.device) if launch.distributed and args.device != "cpu" else None
    except UserError as err:
        if args.device not in DEVICE_TYPES:  # a typo, not something this machine lacks
            raise
        machine_problem(flag_message(err))
        present = None
    if present is not None and launch.nproc_per_node > present:
        machine_problem(f"--nproc_per_node {launch.nproc_per_node} but only {present} {args.device} device(s) "
                        f"are present on this machine")
    if launch.distributed and launch.node_rank == 0 and not port_is_free(launch.master_port):
        machine_problem(f"--master_port {launch.master_port} is already in use on this machine; "
                        f"pick a free one with --master_port")
    return warnings


def check_paths(args) -> None:
    if args.dataset == "voc" and not Path(args.dataset_path).exists():
        raise UserError(f"--dataset_path {args.dataset_path}: no such directory")
    if args.ckpt and not Path(args.ckpt).is_file():
        raise UserError(f"--ckpt {args.ckpt}: no such file")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise UserError(f"--pretrained {args.pretrained}: no such file")
    check_work_dir(args, Path(args.work_dir))


def child_env(launch, args) -> dict:
    env = dict(os.environ)
    # train.py / torchrun.py then ask the kernel for SIGTERM when their parent dies (prctl), so a
    # kill -9 of this launcher stops them (they save `latest` on the way out) instead of orphaning them.
    env["SEGZOO_DIE_WITH_PARENT"] = "1"
    if launch.distributed and "OMP_NUM_THREADS" not in env:
        # torchrun would set 1 thread per worker; on cpu give each worker its share of the cores.
        share = (os.cpu_count() or 1) // launch.nproc_per_node if args.device == "cpu" else 1
        env["OMP_NUM_THREADS"] = str(max(1, share))
    return env


def run_child(cmd: list, env: dict) -> int:
    """Run the command in its own process group; the launcher forwards Ctrl-C and SIGTERM to it
    (so the child sees each signal once), waits for it, and returns its exit status."""
    # A separate process group keeps a terminal's Ctrl-C from reaching the child twice.
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen(cmd, env=env, **group)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code if code >= 0 else 128 - code


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with the examples as written and every flag's default."""


def main(argv=None, default_model: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        parser = OneLineParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                               allow_abbrev=False, formatter_class=HelpFormatter)
        add_train_args(add_launch_args(parser)).print_help()
        return 0
    try:
        launch, train_argv = split_argv(argv)
        # The alias's model is a default: --config and --model_name override it.
        args = parse_train_args(train_argv, defaults={"model_name": default_model} if default_model else None)
        finalize_schedule(args)  # --iters with --epoch: one line here, before anything starts
        if not any(a == "--model_name" or a.startswith("--model_name=") for a in train_argv):
            train_argv = ["--model_name", args.model_name, *train_argv]
        warnings = check_launch(launch, args)
        check_paths(args)
    except UserError as err:
        exit_with(err)
    cmd = build_command(launch, train_argv)
    print("+ " + shlex.join(cmd), flush=True)
    if launch.dry_run:
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr, flush=True)
        return 0
    return run_child(cmd, child_env(launch, args))
