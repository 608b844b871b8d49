"""The user's two commands (`make demo`, `make test`) and the packaging behind them.

Nothing is installed here: `make` runs with PIP replaced by `echo`, against a stand-in
environment whose `python` either can or cannot import torch, so the one decision the
setup makes (keep an importable torch, else install TORCH_SPEC) is checked both ways.
"""
from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO, run_process

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed on this machine")


def fake_env(root: Path, python_flags: str = "") -> Path:
    """A directory laid out like a virtual environment whose bin/python runs this interpreter
    (with `-S` no site-packages, so torch cannot be imported)."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" {python_flags} "$@"\n')
    wrapper.chmod(0o755)
    return root


def make(*args: str, timeout: float = 60):
    return run_process(["make", "--no-print-directory", *args], timeout)


@needs_make
def test_make_demo_plan_lists_venv_torch_install_and_the_demo_run(tmp_path):
    venv = tmp_path / "venv"
    result = make("-n", "demo", f"VENV={venv}")
    assert result.rc == 0, result.describe()
    out = result.stdout
    steps = [f"-m venv  {venv}", 'import torch', f"{venv}/bin/python -m pip install -q -e .",
             f"{venv}/bin/python run_scripts/run_pspnet.py --config configs/demo.yaml --device cpu"]
    positions = [out.find(step) for step in steps]
    assert all(p >= 0 for p in positions), f"missing step in:\n{out}"
    assert positions == sorted(positions), f"steps out of order:\n{out}"


@needs_make
@pytest.mark.parametrize("target, extra", [("test", '-e ".[dev]"'), ("test-fast", '-m "not slow"')])
def test_make_test_installs_the_dev_group_and_runs_pytest(tmp_path, target, extra):
    result = make("-n", target, f"VENV={tmp_path / 'venv'}")
    assert result.rc == 0, result.describe()
    assert extra in result.stdout and "-m pytest -q" in result.stdout, result.stdout


@needs_make
def test_an_importable_torch_is_kept(tmp_path):
    env = fake_env(tmp_path / "env")
    result = make("torch", f"VENV={env}", "PIP=echo PIP")
    assert result.rc == 0, result.describe()
    import torch
    assert f"keeping torch {torch.__version__}" in result.stdout, result.stdout
    assert "PIP" not in result.stdout.replace("keeping", ""), result.stdout


@needs_make
def test_torch_is_installed_where_none_is_importable(tmp_path):
    env = fake_env(tmp_path / "env", python_flags="-S")
    result = make("torch", f"VENV={env}", "PIP=echo PIP", "TORCH_SPEC=torch==9.9 torchvision==9.9")
    assert result.rc == 0, result.describe()
    assert "PIP install -q torch==9.9 torchvision==9.9" in result.stdout, result.stdout


@needs_make
def test_torch_spec_skip_never_installs_torch(tmp_path):
    env = fake_env(tmp_path / "env", python_flags="-S")
    result = make("torch", f"VENV={env}", "PIP=echo PIP", "TORCH_SPEC=skip")
    assert result.rc == 0, result.describe()
    assert "TORCH_SPEC=skip" in result.stdout and "PIP install" not in result.stdout, result.stdout


def test_pyproject_declares_the_library_only_and_the_optional_groups():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    from setuptools import find_packages
    packages = find_packages(where=str(REPO), include=config["tool"]["setuptools"]["packages"]["find"]["include"])
    assert "segzoo" in packages and "segzoo.datasets" in packages
    assert all(p == "segzoo" or p.startswith("segzoo.") for p in packages), packages
    deps = " ".join(config["project"]["dependencies"])
    for name in ("torch>=2.4", "numpy", "opencv-python-headless", "matplotlib", "pyyaml", "pillow"):
        assert name in deps, name
    groups = config["project"]["optional-dependencies"]
    assert {"dev", "timm", "tensorboard", "onnx"} <= set(groups)
    dev = " ".join(groups["dev"])
    for name in ("pytest", "triton", "timm", "tensorboard", "onnx", "onnxruntime"):
        assert name in dev, name
    # requirements*.txt only point at pyproject.toml: one source of truth.
    assert [l for l in (REPO / "requirements.txt").read_text().splitlines() if not l.startswith("#")] == ["-e ."]
    assert [l for l in (REPO / "requirements-dev.txt").read_text().splitlines()
            if not l.startswith("#")] == ["-e .[dev]"]


def test_ci_runs_make_test():
    script = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script and "\nmake test\n" in script


def test_a_top_level_datasets_package_is_neither_shadowed_nor_shadowing(tmp_path):
    """A user's Hugging Face `datasets` (simulated by a fake one first on sys.path) and ours coexist."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARKER = 'not segzoo'\n")
    (tmp_path / "site" / "models").mkdir()
    (tmp_path / "site" / "models" / "__init__.py").write_text("MARKER = 'not segzoo either'\n")
    code = ("import datasets, models, segzoo.datasets, segzoo.models; "
            "assert datasets.MARKER == 'not segzoo' and models.MARKER == 'not segzoo either'; "
            "assert 'demo' in segzoo.datasets.DATASETS.names() and 'pspnet' in segzoo.models.MODELS.names(); "
            "print('ok')")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    result = run_process([sys.executable, "-c", code], 120, env=env)
    assert result.rc == 0 and result.stdout.strip() == "ok", result.describe()
    helped = run_process([sys.executable, REPO / "train.py", "--help"], 120, env=env)
    assert helped.rc == 0 and "--model_name" in helped.stdout, helped.describe()


@pytest.mark.slow
@needs_make
def test_make_demo_trains_on_the_demo_data(tmp_path):
    """`make demo` end to end in this environment (PIP=true: nothing installed), one tiny epoch."""
    env = fake_env(tmp_path / "env")
    work = tmp_path / "work"
    flags = (f"--epoch 1 --val_epoch 1 --crop_size 32 --batch_size 4 --workers 0 "
             f"--work_dir {work} --dataset_path {tmp_path / 'demo'}")
    result = make("demo", f"VENV={env}", "PIP=true", f"DEMO_FLAGS={flags}", timeout=400)
    assert result.rc == 0, result.describe()
    assert (work / "best_pspnet_demo.pth").is_file(), result.describe()
    assert "mIoU" in result.stdout + result.stderr, result.describe()
