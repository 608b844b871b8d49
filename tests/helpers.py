"""Shared helpers of the end-to-end tests: a tiny demo dataset, running the launcher or train.py
as a subprocess, free ports, reading the run's outputs, and hand-made checkpoints.

The tiny dataset (8 train / 5 val images of 48x64, an odd val count on purpose, so a 2-process
evaluation splits it unevenly) is written once per test session; use the `tiny_dataset` fixture
(defined in conftest.py) or `tiny_dataset_root(tmp_path_factory)`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "run_scripts" / "run_pspnet.py"
TRAIN_PY = REPO / "train.py"

TINY_TRAIN, TINY_VAL, TINY_SIZE = 8, 5, (48, 64)
TINY_CLASSES = 6  # the demo data's class_names.txt: background + 5 VOC classes

# Flags that keep a training run to a few seconds on 2 cpu cores.
TINY_RUN = ("--device", "cpu", "--backbone", "resnet18", "--crop_size", "32", "--batch_size", "4",
            "--workers", "0")

_tiny_root: Path | None = None


def tiny_dataset_root(tmp_path_factory) -> Path:
    """The session's tiny demo dataset, written on the first call (VOC layout, palette labels)."""
    global _tiny_root
    if _tiny_root is None:
        from segzoo.datasets.demo import make_demo_dataset
        root = tmp_path_factory.mktemp("tiny_voc")
        make_demo_dataset(root, num_train=TINY_TRAIN, num_val=TINY_VAL, size=TINY_SIZE)
        _tiny_root = root
    return _tiny_root


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy of a dataset, to break one file of it."""
    shutil.copytree(src, dst)
    return dst


class Result(NamedTuple):
    rc: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        """For assertion messages: the status and the tails of both streams."""
        return (f"rc={self.rc}\n--- stdout (tail) ---\n{self.stdout[-3000:]}\n"
                f"--- stderr (tail) ---\n{self.stderr[-3000:]}")


def run_process(cmd: list, timeout: float, env: dict | None = None, cwd: Path = REPO) -> Result:
    """Run a command, capture both streams, fail the test (not hang) past `timeout` seconds."""
    full_env = dict(os.environ)
    full_env.pop("RANK", None)  # a test run inside torchrun must not make the child think it is a worker
    full_env.pop("WORLD_SIZE", None)
    # One OpenMP thread per process: on a busy 2-core machine (the rest of the suite runs beside
    # these tests) two spinning OpenMP threads made a tiny forward pass 40x slower than one.
    full_env["OMP_NUM_THREADS"] = "1"
    full_env.update(env or {})
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"{' '.join(map(str, cmd))} did not finish in {timeout} s\n{out[-2000:]}\n{err[-2000:]}")
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_launcher(*flags, timeout: float = 180, env: dict | None = None) -> Result:
    """python run_scripts/run_pspnet.py FLAGS (the user's entry point)."""
    return run_process([sys.executable, LAUNCHER, *flags], timeout, env)


def run_train(*flags, timeout: float = 180, env: dict | None = None) -> Result:
    """python train.py FLAGS (what torchrun starts on every rank)."""
    return run_process([sys.executable, TRAIN_PY, *flags], timeout, env)


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of every file under `folder`, to prove a failed run wrote nothing."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def log_records(log_file: Path) -> list:
    """The LOG records of a run's train_log.json / test_log.json, in order."""
    records = []
    for line in Path(log_file).read_text().splitlines():
        if not line.startswith("TCAPPDLL {"):
            continue
        record = json.loads(line[len("TCAPPDLL "):])
        if record.get("type") == "LOG":
            records.append(record)
    return records


def logged_values(log_file: Path, key: str) -> list:
    """[(step, value)] of one metric (e.g. train.loss) in a run's log, in order."""
    return [(tuple(r["step"]), float(r["data"][key])) for r in log_records(log_file) if key in r["data"]]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def ckpt_name(kind: str, model: str = "pspnet", dataset: str = "voc") -> str:
    """latest_/best_ checkpoint file names, as segzoo.runtime.checkpoint.checkpoint_names makes them."""
    return f"{kind}_{model}_{dataset}.pth"


def assert_one_line_error(result: Result, *needles: str, status: int = 2) -> str:
    """A user mistake: exit status 2, one stderr line starting with 'error:' that holds every
    needle (the flag or file it names), and no traceback."""
    lines = result.stderr_lines
    assert result.rc == status, result.describe()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.describe()
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def expect_user_exit(capsys, argv: list, *needles: str) -> str:
    """In-process segzoo.engine.launch.main(argv): exit status 2 and one 'error:' line with every needle."""
    from segzoo.engine import launch
    with pytest.raises(SystemExit) as exc:
        launch.main(argv)
    captured = capsys.readouterr()
    return assert_one_line_error(Result(exc.value.code, captured.out, captured.err), *needles)


def run_main(main, capsys, *argv) -> Result:
    """A tool's main(argv) in-process: its exit status (also from SystemExit) and captured streams."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)
