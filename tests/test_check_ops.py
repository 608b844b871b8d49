"""tools/check_ops.py and segzoo/ops/check.py: the cpu check passes, and a wrong implementation
injected through the dispatch makes it fail."""
import sys

import pytest
import torch

import segzoo.ops.criss_cross as criss_cross_module
import segzoo.ops.psamask as psamask_module
from segzoo.ops import check
from tests.helpers import REPO, run_process
from tools.check_ops import main


def test_cpu_check_passes_for_every_op_and_dtype(capsys):
    assert main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("psa_mask", "criss_cross"))]
    assert {(r[0], r[1] if r[0] == "psa_mask" else "") for r in rows} == {
        ("psa_mask", "collect"), ("psa_mask", "distribute"), ("criss_cross_attention", "")}
    assert {d for d in check.DTYPES} <= {word for r in rows for word in r}
    assert "0 failed" in out


def _wrong(select, scale):
    """A dispatch that hands out the chosen implementation with its output scaled."""
    def wrong_select(op, device, impl, portable):
        chosen = select(op, device, impl, portable)
        return lambda *args: chosen(*args) * scale
    return wrong_select


def test_wrong_psa_mask_implementation_fails(monkeypatch, capsys):
    monkeypatch.setattr(psamask_module, "select", _wrong(psamask_module.select, 1.0 + 2 ** -6))
    assert main(["--device", "cpu", "--dtype", "float32"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert all(" NO " in line for line in lines if line.startswith("psa_mask"))
    assert all(" yes " in line for line in lines if line.startswith("criss_cross"))


def test_slightly_wrong_criss_cross_fails_in_float32(monkeypatch):
    monkeypatch.setattr(criss_cross_module, "select", _wrong(criss_cross_module.select, 1.0 + 1e-4))
    rows = check.run_checks(torch.device("cpu"), ["float32"], ["small"])
    failed = {r.op for r in rows if not r.passed}
    assert failed == {"criss_cross_attention"}


def test_absent_device_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a cuda device is present here, so asking for it is not a mistake")
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda"])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--device cuda" in err[0]


@pytest.mark.slow
def test_triton_kernels_through_the_interpreter_pass():
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    result = run_process([sys.executable, str(REPO / "tools" / "check_ops.py"), "--device", "cpu",
                          "--dtype", "float32"], timeout=300, env={"TRITON_INTERPRET": "1"})
    assert result.rc == 0, result.describe()
    kernel_rows = [line for line in result.stdout.splitlines() if " kernel " in line]
    assert len(kernel_rows) == 5 and all(" yes " in line for line in kernel_rows), result.stdout
