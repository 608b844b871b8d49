"""tools/bench_ops.py: its comparison baselines are correct and a CPU smoke run works."""
import json

import pytest
import torch

from segzoo.ops.reference import criss_cross_reference, psa_mask_reference
from segzoo.runtime.errors import UserError
from tools import bench_ops


@pytest.mark.parametrize("mode", ["collect", "distribute"])
@pytest.mark.parametrize("hw,mask", [((3, 4), None), ((4, 3), (3, 2)), ((2, 3), (6, 7))])
def test_single_gather_baseline_matches_reference(hw, mask, mode):
    height, width = hw
    mask_h, mask_w = mask or (2 * height - 1, 2 * width - 1)
    x = torch.randn(2, mask_h * mask_w, height, width, dtype=torch.float64)
    got = bench_ops.psa_single_gather(x, mask_h, mask_w, mode == "collect")
    assert torch.equal(got, psa_mask_reference(x, mode, (mask_h, mask_w)))


def test_einsum_baseline_matches_reference():
    q, k = torch.randn(2, 3, 5, 7, dtype=torch.float64), torch.randn(2, 3, 5, 7, dtype=torch.float64)
    v = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(bench_ops.criss_cross_einsum(q, k, v), criss_cross_reference(q, k, v))


def test_cpu_smoke_run(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    bench_ops.main(["--device", "cpu", "--shape", "small", "--iters", "1", "--warmup", "0", "--dtypes", "fp32"])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # psa collect + distribute and criss-cross, each portable and baseline; no kernel on cpu
    assert sorted((r["op"], r["impl"]) for r in rows) == sorted(
        [("psa_mask", "portable"), ("psa_mask", "baseline")] * 2
        + [("criss_cross_attention", "portable"), ("criss_cross_attention", "baseline")])
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_GBps"] > 0 for r in rows)
    assert "kernel not timed: none for cpu" in out


def test_bad_flags_are_user_errors():
    with pytest.raises(UserError, match="--dtypes"):
        bench_ops.main(["--device", "cpu", "--dtypes", "fp8"])
    with pytest.raises(UserError, match="--ops"):
        bench_ops.main(["--device", "cpu", "--ops", "attention"])
