"""tools/plot_curve.py: parsing the log formats, rebuilding iterations, plotting, comparing."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segzoo.runtime.dllogger import JSONStreamBackend, Logger, Verbosity
from segzoo.runtime.errors import UserError
from tools.plot_curve import (Curve, Records, compare_loss, global_iterations, main, modelzoo_verdict,
                              moving_average, plot, read_log)

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Writers of the three JSON formats, as the real loggers write them


def _envelope(record_type: str, index: int) -> dict:
    stamp = 1_700_000_000.0 + index
    return {"timestamp": str(stamp), "datetime": f"2023-11-14 22:13:{index % 60:02d}.000000",
            "elapsedtime": str(float(index)), "type": record_type}


def tcap_log_line(step, data: dict, index: int = 0) -> str:
    """tcap_dllogger: every value stringified, then the dict's repr stored as a string."""
    record = {**_envelope("LOG", index), "step": list(step) if isinstance(step, tuple) else step,
              "data": str({k: str(v) for k, v in data.items()})}
    return "TCAPPDLL " + json.dumps(record)


def tcap_metadata_line(metric: str) -> str:
    record = {**_envelope("METADATA", 0), "metric": metric, "metadata": {"format": ":.4f"}}
    return "TCAPPDLL " + json.dumps(record)


def nvidia_log_line(step, data: dict, index: int = 0) -> str:
    record = {**_envelope("LOG", index), "step": list(step) if isinstance(step, tuple) else step,
              "data": data}
    return "DLLL " + json.dumps(record)


def write_our_log(path: Path, losses, epochs: int = 1, miou=None) -> Path:
    """A log written by segzoo.runtime.dllogger, steps (epoch, global iteration) from 1."""
    logger = Logger([JSONStreamBackend(Verbosity.VERBOSE, path)])
    logger.metadata("train.loss", {"format": ":.4f"})
    logger.log("PARAMETER", {"lr": 0.01})
    per_epoch = len(losses) // epochs
    for i, loss in enumerate(losses):
        epoch = i // per_epoch + 1
        logger.log((epoch, i + 1), {"train.loss": float(loss), "train.lr": 0.01})
        if miou is not None and (i + 1) % per_epoch == 0:
            logger.log((epoch, i + 1), {"val.mIoU": miou[epoch - 1], "val.loss": 0.5})
    logger.close()
    return path


def decaying_loss(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 2.0 * np.exp(-np.arange(n) / 40.0) + 0.3 + 0.05 * rng.standard_normal(n)


# ---------------------------------------------------------------------------------------------
# Parsing


def test_reads_tcap_log_with_repr_data_and_per_epoch_iterations(tmp_path):
    lines = [tcap_metadata_line("train.loss"), tcap_log_line("PARAMETER", {"lr": 0.01})]
    losses = {}
    for epoch in range(2):  # tcap-style: 0-based epoch, iteration restarting at 0
        for it in range(4):
            losses[(epoch, it)] = 2.0 - 0.1 * (4 * epoch + it)
            lines.append(tcap_log_line((epoch, it), {"rank": 0, "train.loss": losses[(epoch, it)],
                                                     "train.ips": 10.5}))
        lines.append(tcap_log_line((epoch,), {"val.mIoU": 0.25 * (epoch + 1)}))
    # tcap stringifies tensors as their repr
    lines.append(tcap_log_line((2, 0), {"train.loss":
                                        "tensor(0.9000, device='sdaa:0', grad_fn=<AddBackward0>)"}))
    path = tmp_path / "tcap.log"
    path.write_text("\n".join(lines) + "\n")

    records = read_log(path)
    assert records.iterations_rebuilt
    np.testing.assert_array_equal(records.train_loss.x, np.arange(1, 10))
    expected = [losses[(e, i)] for e in range(2) for i in range(4)] + [0.9]
    np.testing.assert_allclose(records.train_loss.y, expected)
    np.testing.assert_array_equal(records.val_miou.x, [1, 2])  # epochs shifted to count from 1
    np.testing.assert_allclose(records.val_miou.y, [0.25, 0.5])
    assert records.num_unparsable == 0
    assert records.num_log_records == 1 + 8 + 2 + 1


def test_reads_nvidia_dllogger_log(tmp_path):
    lines = [
        'DLLL {"timestamp": "1", "elapsedtime": "0", "datetime": "x", "type": "METADATA", '
        '"metric": "train.loss", "metadata": {"unit": null}}',
        nvidia_log_line("PARAMETER", {"batch_size": 8}),
    ]
    for it in range(1, 7):  # global iteration from 1, logged every iteration, 3 per epoch
        lines.append(nvidia_log_line(((it - 1) // 3 + 1, it), {"train.loss": 1.0 / it}))
    lines.append(nvidia_log_line((2,), {"val.mIoU": 0.4}))
    lines.append(nvidia_log_line((), {"train.loss": 123.0}))  # a run summary: not on the curve
    path = tmp_path / "nvidia.json"
    path.write_text("\n".join(lines) + "\n")

    records = read_log(path)
    assert not records.iterations_rebuilt
    np.testing.assert_array_equal(records.train_loss.x, np.arange(1, 7))
    np.testing.assert_allclose(records.train_loss.y, [1.0 / it for it in range(1, 7)])
    np.testing.assert_allclose(records.val_miou.y, [0.4])
    assert records.num_unparsable == 0


def test_reads_our_own_log_including_non_finite_losses(tmp_path):
    losses = [1.0, 0.9, math.nan, 0.8, math.inf, 0.7]
    path = write_our_log(tmp_path / "train_log.json", losses, epochs=2, miou=[0.3, 0.45])
    records = read_log(path)
    np.testing.assert_array_equal(records.train_loss.x, [1, 2, 4, 6])
    np.testing.assert_allclose(records.train_loss.y, [1.0, 0.9, 0.8, 0.7])
    assert records.num_nonfinite_loss == 2
    np.testing.assert_array_equal(records.val_miou.x, [1, 2])
    np.testing.assert_allclose(records.val_miou.y, [0.3, 0.45])
    assert records.num_unparsable == 0 and not records.iterations_rebuilt


def test_reads_tcap_stdout_lines_and_counts_unparsable_ones(tmp_path):
    text = "\n".join([
        "loading data ...",  # 1 unparsable
        "TCAPPDLL 2024-05-01 12:00:00.000001 - Epoch: 0 Iteration: 1  rank : 0  "
        "train.loss : 1.5  train.ips : 3.2 imgs/s",
        "INFO - base_task - TCAPPDLL 2024-05-01 12:00:01 - Epoch: 0 Iteration: 2  "
        "train.loss : 1.25",
        "TCAPPDLL 2024-05-01 12:00:02 - PARAMETER  lr : 0.1",  # 2: no step
        "TCAPPDLL {this is not json",  # 3
        'TCAPPDLL {"type": "LOG", "step": [0, 3], "data": "{broken repr"}',  # 4
        'DLLL ["a", "list"]',  # 5
        "",  # blank lines are not counted
        "TCAPPDLL 2024-05-01 12:00:03 - Epoch: 0 Iteration: 3  train.loss : 1.0",
    ])
    path = tmp_path / "stdout.log"
    path.write_text(text)
    records = read_log(path)
    np.testing.assert_array_equal(records.train_loss.x, [1, 2, 3])
    np.testing.assert_allclose(records.train_loss.y, [1.5, 1.25, 1.0])
    assert records.num_unparsable == 5


@pytest.mark.parametrize("epochs, iterations, expected, rebuilt", [
    # our logs: global from 1
    ([1, 1, 2, 2], [1, 2, 3, 4], [1, 2, 3, 4], False),
    # global from 0: shifted to start at 1
    ([0, 0, 1], [0, 1, 2], [1, 2, 3], False),
    # per-epoch from 0, every iteration logged
    ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], [1, 2, 3, 4, 5, 6], True),
    # per-epoch from 1, logged every 5 of 10 iterations, epochs counted from 1
    ([1, 1, 2, 2, 3], [5, 10, 5, 10, 5], [5, 10, 15, 20, 25], True),
    # global, resumed from the end of epoch 1 after a crash in epoch 2: logged values kept
    ([1, 1, 2, 2, 2, 2], [1, 2, 3, 4, 3, 4], [1, 2, 3, 4, 3, 4], False),
    # per-epoch, epoch 1 run again after a resume: still rebuilt
    ([0, 0, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1], [1, 2, 3, 4, 3, 4], True),
])
def test_global_iterations(epochs, iterations, expected, rebuilt):
    x, was_rebuilt = global_iterations(np.array(epochs), np.array(iterations))
    np.testing.assert_array_equal(x, expected)
    assert was_rebuilt == rebuilt


def test_resumed_run_appended_to_the_log_replaces_the_relogged_iterations(tmp_path):
    path = tmp_path / "train_log.json"
    first = Logger([JSONStreamBackend(Verbosity.VERBOSE, path)])
    for it in range(1, 7):  # 3 iterations per epoch; crashed after iteration 6
        first.log(((it - 1) // 3 + 1, it), {"train.loss": 10.0 + it})
    first.log((1, 3), {"val.mIoU": 0.1})
    first.close()
    resumed = Logger([JSONStreamBackend(Verbosity.VERBOSE, path, append=True)])
    for it in range(4, 10):  # resumed from the epoch-1 checkpoint
        resumed.log(((it - 1) // 3 + 1, it), {"train.loss": 20.0 + it})
    resumed.log((2, 6), {"val.mIoU": 0.2})
    resumed.close()

    records = read_log(path)
    np.testing.assert_array_equal(records.train_loss.x, np.arange(1, 10))
    np.testing.assert_allclose(records.train_loss.y, [11, 12, 13, 24, 25, 26, 27, 28, 29])
    assert records.num_superseded == 3 and not records.iterations_rebuilt
    np.testing.assert_allclose(records.val_miou.y, [0.1, 0.2])


def test_missing_log_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_log(tmp_path / "nope.log")


# ---------------------------------------------------------------------------------------------
# Smoothing and comparison


def test_moving_average_is_a_trailing_mean_with_a_short_start():
    y = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(moving_average(y, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(moving_average(y, 3), [1.0, 2.0, 3.0, 5.0])
    np.testing.assert_allclose(moving_average(y, 1), y)


def _records(x, y, path="mem") -> Records:
    empty = Curve(np.array([]), np.array([]))
    return Records(path, Curve(np.asarray(x, float), np.asarray(y, float)), empty,
                   num_log_records=len(x), num_unparsable=0, num_nonfinite_loss=0,
                   num_superseded=0, iterations_rebuilt=False)


def test_compare_interpolates_onto_the_common_iterations():
    # Log B is logged every 2nd iteration over a longer run; both losses are linear, so linear
    # interpolation is exact and B / A = 1.1 everywhere.
    xa = np.arange(1, 101)
    xb = np.arange(2, 121, 2)
    a = _records(xa, 5.0 - 0.01 * xa)
    b = _records(xb, 1.1 * (5.0 - 0.01 * xb))
    result = compare_loss(a, b, smooth_window=1)
    assert result.mean_relative_difference == pytest.approx(0.1, rel=1e-12)
    assert (result.first_iteration, result.last_iteration) == (2.0, 100.0)
    assert result.num_points == 99  # 2..100, every integer: A's points and B's coincide or fill
    assert compare_loss(a, _records(xa + 200, 5.0 - 0.01 * xa)) is None  # no overlap


def test_compare_uses_the_smoothed_curves():
    # A loss zig-zagging +-10% around a flat one: raw they differ by ~10% everywhere; smoothed
    # over 2 points they agree except at the first point (1.1 vs 1.0).
    x = np.arange(1, 101)
    zigzag = _records(x, np.tile([1.1, 0.9], 50))
    flat = _records(x, np.ones(100))
    result = compare_loss(zigzag, flat, smooth_window=2)
    assert result.mean_relative_difference == pytest.approx((0.1 / 1.1) / 100, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Plotting and the CLI


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_plot_one_log_with_validation_panel(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = write_our_log(tmp_path / "train_log.json", decaying_loss(60), epochs=3,
                        miou=[0.2, 0.3, 0.35])
    out = tmp_path / "plots" / "curve.png"
    assert plot([log], out) is None
    _assert_png(out)
    assert plt.get_fignums() == []  # no figure left open


def test_identical_logs_differ_by_zero(tmp_path, capsys):
    log = write_our_log(tmp_path / "a.json", decaying_loss(100))
    assert plot([log, log], tmp_path / "same.png", labels=["x", "y"], smooth=10) == 0.0
    assert ("mean relative difference of smoothed train loss: 0.00% over iterations 1..100"
            in capsys.readouterr().out)
    _assert_png(tmp_path / "same.png")


def test_scaled_copy_differs_by_the_scale(tmp_path, capsys):
    losses = decaying_loss(200)
    reference = write_our_log(tmp_path / "cuda.json", losses, epochs=4, miou=[.1, .2, .3, .4])
    scaled = write_our_log(tmp_path / "sdaa.json", 1.05 * losses, epochs=4, miou=[.1, .2, .3, .4])
    difference = plot([reference, scaled], tmp_path / "cmp.png", smooth=20)
    assert difference == pytest.approx(0.05, rel=1e-9)
    line = capsys.readouterr().out.strip()
    assert line == ("mean relative difference of smoothed train loss: 5.00% over iterations "
                    "1..200 (sdaa vs cuda, moving average of 20 points)")
    _assert_png(tmp_path / "cmp.png")


def test_log_without_train_loss_is_a_user_error(tmp_path):
    path = tmp_path / "val_only.json"
    path.write_text(nvidia_log_line((1,), {"val.mIoU": 0.5}) + "\n")
    with pytest.raises(UserError, match=r"no train\.loss records"):
        plot([path], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_writes_the_figure_and_reports(tmp_path, capsys):
    a = write_our_log(tmp_path / "a.json", decaying_loss(50), epochs=2, miou=[0.1, 0.2])
    b = write_our_log(tmp_path / "b.json", 0.9 * decaying_loss(50), epochs=2, miou=[0.1, 0.2])
    out = tmp_path / "cmp.png"
    assert main([str(a), str(b), "--out", str(out), "--labels", "ref", "new", "--smooth", "5"]) == 0
    printed = capsys.readouterr().out
    assert "smoothed train loss: 10.00% over iterations 1..50 (new vs ref" in printed
    assert f"wrote {out}" in printed
    _assert_png(out)


@pytest.mark.parametrize("extra", [["--labels", "only-one"], ["--smooth", "0"], ["third.log"]])
def test_cli_rejects_bad_arguments(tmp_path, extra):
    log = write_our_log(tmp_path / "a.json", decaying_loss(10))
    with pytest.raises(SystemExit) as exit_info:
        main([str(log), str(log), "--out", str(tmp_path / "x.png"), *extra])
    assert exit_info.value.code == 2


def _run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "tools" / "plot_curve.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    missing = _run_cli("missing.log", "--out", "x.png", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "error: log file not found: missing.log; pass the path of a training log")

    (tmp_path / "empty.log").write_text("nothing to see\n")
    empty = _run_cli("empty.log", "--out", "x.png", cwd=tmp_path)
    assert empty.returncode == 2
    assert len(empty.stderr.strip().splitlines()) == 1
    assert empty.stderr.startswith("error: empty.log: no train.loss records")
    assert not (tmp_path / "x.png").exists()


# ---- the ModelZoo's verdict and the two-sided figures ------------------------------------------------
def test_modelzoo_verdict_is_signed_as_the_modelzoo_computes_it():
    x = np.arange(1.0, 11.0)
    ref = _records(x, np.full(10, 2.0))
    higher = modelzoo_verdict(ref, _records(x, np.full(10, 2.2)))  # +10% everywhere
    assert higher.signed_relative == pytest.approx(0.1) and higher.signed_absolute == pytest.approx(0.2)
    assert not higher.passes_modelzoo and higher.two_sided_relative == pytest.approx(0.1)
    # Only the common iterations count: the port's extra iterations 11..20 are ignored.
    longer = modelzoo_verdict(ref, _records(np.arange(1.0, 21.0), np.full(20, 2.0)))
    assert longer.num_common == 10 and longer.two_sided_relative == 0.0 and longer.passes_modelzoo
    assert modelzoo_verdict(ref, _records(x + 100, np.full(10, 2.0))) is None


def _port_check(tmp_path, ref_loss, port_loss, capsys):
    ref = write_our_log(tmp_path / "ref.json", ref_loss)
    port = write_our_log(tmp_path / "port.json", port_loss)
    rc = main([str(ref), str(port), "--out", str(tmp_path / "c.png"), "--max_rel_diff", "0.05"])
    return rc, capsys.readouterr().out


def test_far_lower_loss_passes_the_modelzoo_but_fails_max_rel_diff(tmp_path, capsys):
    ref = decaying_loss(60)
    rc, out = _port_check(tmp_path, ref, 0.5 * ref, capsys)  # half the loss: a broken port
    assert "ModelZoo verdict" in out and ": PASS: signed mean relative error -50.00%" in out
    assert "two-sided: mean |port - ref| / ref 50.00% per iteration" in out
    assert rc == 1 and "FAIL: two-sided mean relative difference 50.00% exceeds --max_rel_diff 5%" in out


def test_cancelling_errors_pass_the_modelzoo_but_fail_max_rel_diff(tmp_path, capsys):
    ref = decaying_loss(60)
    sign = np.where(np.arange(60) % 2 == 0, 1.0, -1.0)
    rc, out = _port_check(tmp_path, ref, ref * (1.0 + 0.3 * sign), capsys)  # +30%, -30%, ...
    assert re.search(r": PASS: signed mean relative error [+-]0\.00%", out), out
    assert rc == 1 and "FAIL: two-sided mean relative difference 30.00%" in out


def test_close_port_passes_both(tmp_path, capsys):
    ref = decaying_loss(60)
    rc, out = _port_check(tmp_path, ref, ref * 1.01, capsys)
    assert rc == 0 and ": PASS" in out and "PASS: two-sided mean relative difference 1.00% <=" in out


def test_without_out_the_figure_goes_beside_the_log(tmp_path, capsys):
    log = write_our_log(tmp_path / "train.log", decaying_loss(20))
    assert main([str(log)]) == 0
    assert f"wrote {tmp_path / 'train.png'}" in capsys.readouterr().out
    _assert_png(tmp_path / "train.png")


def test_max_rel_diff_needs_two_logs(tmp_path):
    log = write_our_log(tmp_path / "a.json", decaying_loss(10))
    with pytest.raises(SystemExit) as exit_info:
        main([str(log), "--max_rel_diff", "0.1"])
    assert exit_info.value.code == 2
