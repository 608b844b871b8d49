"""tools/export.py: ONNX (checked by ONNX Runtime) and TorchScript exports of tiny checkpoints,
at sizes other than the one traced; unknown models and disagreeing exports are refused."""
from __future__ import annotations

import re

import pytest
import torch

from segzoo.engine.config import parse_train_args
from segzoo.engine.setup import model_from_args
from segzoo.runtime.checkpoint import FORMAT
from tests.helpers import Result, assert_one_line_error, run_main
from tools import export

NUM_CLASSES = 3


def make_checkpoint(path, model_name: str, stored_args: dict | None = None) -> torch.nn.Module:
    """A checkpoint as train.py's checkpoint_state writes it (model weights + run args), of a tiny
    randomly initialised model whose BatchNorm statistics are perturbed so outputs are not flat."""
    args = parse_train_args(["--device", "cpu", "--dataset", "demo", "--model_name", model_name,
                             "--backbone", "resnet18", "--crop_size", "32"])
    torch.manual_seed(0)
    model = model_from_args(args, NUM_CLASSES)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {"format": FORMAT, "model": model.state_dict(), "model_name": model_name, "num_classes": NUM_CLASSES,
             "backbone": "resnet18", "epoch": 1, "args": dict(vars(args), **(stored_args or {}))}
    torch.save(state, path)
    return model.eval()


def run_export(capsys, *argv) -> Result:
    return run_main(export.main, capsys, *argv)


def printed_errors(stdout: str) -> dict:
    """{'HxW': max abs error} from the tool's lines."""
    return {m[0]: float(m[1]) for m in re.findall(r"at (\d+x\d+): max abs error (\S+)", stdout)}


@pytest.mark.parametrize("model_name", ["pspnet", "ccnet"])
def test_onnx_export_matches_pytorch_at_two_sizes(tmp_path, capsys, model_name):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[onnx])")
    pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[onnx])")
    ckpt, out = tmp_path / "best.pth", tmp_path / "model.onnx"
    model = make_checkpoint(ckpt, model_name)
    result = run_export(capsys, "--ckpt", ckpt, "--format", "onnx", "--out", out, "--height", 32, "--width", 48)
    assert result.rc == 0, result.describe()
    errors = printed_errors(result.stdout)
    assert len(errors) == 2 and "32x48" in errors and all(e <= 1e-3 for e in errors.values()), result.stdout
    assert out.is_file() and not list(tmp_path.glob(".model.onnx.*"))
    # An independent check at a third size, batch 2: ONNX Runtime against the checkpoint's model.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = torch.rand(2, 3, 40, 24) * 255
    got = torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
    from segzoo.datasets.transforms import normalize
    with torch.inference_mode():
        want = model(normalize(image))["out"]
    assert got.shape == want.shape == (2, NUM_CLASSES, 40, 24)
    assert (got - want).abs().max().item() <= 1e-3


def test_torchscript_export_loads_back_and_matches(tmp_path, capsys):
    ckpt, out = tmp_path / "best.pth", tmp_path / "model.pt"
    model = make_checkpoint(ckpt, "pspnet")
    result = run_export(capsys, "--ckpt", ckpt, "--format", "torchscript", "--out", out)
    assert result.rc == 0, result.describe()
    assert len(printed_errors(result.stdout)) == 2, result.stdout
    loaded = torch.jit.load(str(out))
    image = torch.rand(1, 3, 36, 52) * 255
    from segzoo.datasets.transforms import normalize
    with torch.inference_mode():
        assert (loaded(image) - model(normalize(image))["out"]).abs().max().item() <= 1e-3


def test_size_generic_pooling_equals_adaptive_pooling():
    x = torch.randn(2, 4, 13, 7)
    for bins in (1, 2, 3, 6):
        want = torch.nn.AdaptiveAvgPool2d(bins)(x)
        assert torch.allclose(export.SizeGenericAdaptiveAvgPool2d(bins)(x), want, atol=1e-6)


def test_unknown_model_is_one_clear_line(tmp_path, capsys):
    ckpt, out = tmp_path / "best.pth", tmp_path / "model.onnx"
    make_checkpoint(ckpt, "pspnet", {"model_name": "nosuchnet"})
    result = run_export(capsys, "--ckpt", ckpt, "--format", "onnx", "--out", out)
    assert_one_line_error(result, str(ckpt), "nosuchnet")
    assert not out.exists()


def test_a_disagreeing_export_fails_and_writes_nothing(tmp_path, capsys):
    ckpt, out = tmp_path / "best.pth", tmp_path / "model.pt"
    out.write_bytes(b"an older export")
    make_checkpoint(ckpt, "pspnet")
    # A negative tolerance no error can meet: the failure path, exit 1, old file untouched.
    result = run_export(capsys, "--ckpt", ckpt, "--format", "torchscript", "--out", out, "--tolerance", "-1")
    assert result.rc == 1 and "disagrees with PyTorch" in result.stderr, result.describe()
    assert out.read_bytes() == b"an older export" and not list(tmp_path.glob(".model.pt.*"))


def test_help_states_the_example_opset_and_dynamic_axes():
    import subprocess
    import sys
    from tests.helpers import REPO
    out = subprocess.run([sys.executable, REPO / "tools" / "export.py", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "python tools/export.py --ckpt" in out.stdout and f"opset {export.OPSET}" in out.stdout
    assert "dynamic" in out.stdout and "axes N, H and W" in out.stdout


@pytest.mark.parametrize("mode", ["collect", "distribute"])
def test_gather_psa_mask_equals_the_portable_op(mode):
    from segzoo.ops.psamask import psa_mask
    for height, width, mask_h, mask_w in [(5, 7, 9, 13), (4, 6, 7, 11), (5, 7, 3, 5), (6, 4, 4, 6)]:
        x = torch.randn(2, mask_h * mask_w, height, width)
        want = psa_mask(x, mode, (mask_h, mask_w), impl="portable")
        assert torch.equal(export.gather_psa_mask(x, mode, (mask_h, mask_w)), want)


def test_psanet_onnx_export_matches_pytorch(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[onnx])")
    pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[onnx])")
    ckpt, out = tmp_path / "best.pth", tmp_path / "psanet.onnx"
    make_checkpoint(ckpt, "psanet")
    result = run_export(capsys, "--ckpt", ckpt, "--format", "onnx", "--out", out)
    assert result.rc == 0, result.describe()
    errors = printed_errors(result.stdout)
    assert len(errors) == 2 and all(e <= 1e-3 for e in errors.values()), result.stdout
