"""tools/compare_numerics.py and segzoo/runtime/numerics.py: figures, a planted fault found at
its layer, a clean comparison at zero, the two-machine dump round trip, and bad input."""
import json
import sys
from pathlib import Path

import pytest
import torch

from segzoo.models import build_model
from segzoo.runtime import numerics
from tests.helpers import REPO, run_process
from tools.compare_numerics import main

TOOL = str(REPO / "tools" / "compare_numerics.py")
MODEL_FLAGS = ["--model_name", "pspnet", "--backbone", "resnet18", "--num_classes", "5", "--crop_size", "32",
               "--batch_size", "2"]
FAULTY_LAYER = "backbone.layer2.0.conv1"


def test_figures_of_known_tensors():
    ref = torch.tensor([1.0, -2.0, 4.0, 0.5], dtype=torch.float64)
    same = numerics.compare(ref.clone(), ref)
    assert (same.cosine, same.max_abs, same.within_1pm) == (1.0, 0.0, 1.0)
    scaled = numerics.compare(ref * 1.002, ref)  # 2 per mille everywhere: outside 1, inside 5
    assert scaled.within_1pm == 0.0 and scaled.within_5pm == 1.0
    assert scaled.cosine == pytest.approx(1.0) and scaled.max_abs == pytest.approx(0.008)
    assert scaled.max_rel == pytest.approx(0.002, rel=1e-3)
    flipped = numerics.compare(-ref, ref)
    assert flipped.cosine == pytest.approx(-1.0) and not flipped.passes(numerics.THRESHOLDS["bfloat16"])
    assert not numerics.compare(torch.tensor([float("nan"), 1.0]), torch.ones(2)).passes(numerics.THRESHOLDS["float32"])


def test_capture_records_outputs_in_execution_order_and_gradients():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(inplace=True), torch.nn.Linear(4, 1))
    result = numerics.capture(model, torch.randn(2, 3), lambda out: out.sum())
    assert [n for n, _ in result.outputs] == ["0", "1", "2", "<model>"]
    assert [n for n, _ in result.grads] == ["2.weight", "2.bias", "0.weight", "0.bias"]  # backward order
    # The Linear's output was recorded before the in-place ReLU changed it.
    assert (result.outputs[0][1] < 0).any()


def _checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(3)
    state = build_model("pspnet", 5, backbone="resnet18", crop_size=32).state_dict()
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    torch.save(state, good)
    state = {k: v.clone() for k, v in state.items()}
    state[FAULTY_LAYER + ".weight"] *= 1.01
    torch.save(state, bad)
    return good, bad


def test_planted_fault_is_named_first(tmp_path, capsys):
    good, bad = _checkpoints(tmp_path)
    out = tmp_path / "report"
    rc = main([*MODEL_FLAGS, "--ckpt", str(good), "--ckpt_b", str(bad), "--allow_different_weights", "True",
               "--a", "cpu:float32", "--b", "cpu:float32", "--out_dir", str(out)])
    assert rc == 1
    report = json.loads((out / "compare.json").read_text())
    assert report["first_failing_output"] == FAULTY_LAYER
    names = [r["name"] for r in report["rows"] if r["kind"] == "output"]
    before = [r for r in report["rows"] if r["kind"] == "output"][:names.index(FAULTY_LAYER)]
    assert before and all(r["max_abs"] == 0.0 for r in before)
    assert f"first failing module output: {FAULTY_LAYER}" in capsys.readouterr().out
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.csv").is_file()


def test_same_side_twice_is_exactly_equal_and_passes(tmp_path):
    out = tmp_path / "report"
    assert main([*MODEL_FLAGS, "--a", "cpu:float32", "--b", "cpu:float32", "--out_dir", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert rows and all(r["max_abs"] == 0.0 and r["cosine"] == 1.0 for r in rows)
    assert {r["kind"] for r in rows} == {"output", "grad"}


def test_bfloat16_side_reports_the_rounding(tmp_path):
    out = tmp_path / "report"
    main([*MODEL_FLAGS, "--a", "cpu:float32", "--b", "cpu:bf16", "--out_dir", str(out)])
    rows = json.loads((out / "compare.json").read_text())["rows"]
    first = rows[0]  # the stem convolution: one rounding of input and weights
    assert first["name"] == "backbone.conv1" and 0 < first["max_abs"] and first["cosine"] > 0.999


@pytest.mark.slow
def test_dump_and_against_round_trip_across_processes(tmp_path):
    good, bad = _checkpoints(tmp_path)
    dump = tmp_path / "side_a.pt"
    made = run_process([sys.executable, TOOL, *MODEL_FLAGS, "--ckpt", str(good), "--a", "cpu:float32",
                        "--dump", str(dump)], timeout=300)
    assert made.rc == 0 and dump.is_file(), made.describe()
    same = run_process([sys.executable, TOOL, *MODEL_FLAGS, "--ckpt", str(good), "--b", "cpu:float32",
                        "--against", str(dump), "--out_dir", str(tmp_path / "r")], timeout=300)
    assert same.rc == 0 and "first failing module output: none" in same.stdout, same.describe()
    other_weights = run_process([sys.executable, TOOL, *MODEL_FLAGS, "--ckpt", str(bad), "--b", "cpu:float32",
                                 "--against", str(dump)], timeout=300)
    assert other_weights.rc == 2 and len(other_weights.stderr_lines) == 1, other_weights.describe()
    assert "other weights" in other_weights.stderr and "--allow_different_weights" in other_weights.stderr
    other_batch = run_process([sys.executable, TOOL, *MODEL_FLAGS, "--ckpt", str(good), "--b", "cpu:float32",
                               "--random_seed", "7", "--against", str(dump)], timeout=300)
    assert other_batch.rc == 2 and len(other_batch.stderr_lines) == 1, other_batch.describe()
    assert "another batch" in other_batch.stderr
    bisect = run_process([sys.executable, TOOL, *MODEL_FLAGS, "--ckpt", str(bad), "--b", "cpu:float32",
                          "--allow_different_weights", "True", "--against", str(dump),
                          "--out_dir", str(tmp_path / "r2")], timeout=300)
    assert bisect.rc == 1 and f"first failing module output: {FAULTY_LAYER}" in bisect.stdout, bisect.describe()


@pytest.mark.parametrize("extra, expected", [
    (["--b", "cuda:float32"], "--b cuda:float32"),
    (["--b", "cpu:float8"], "dtype 'float8' is not known"),
    (["--b", "cpu:float32", "--min_cosine", "high"], "--min_cosine"),
    (["--b", "cpu:float32", "--min_share", "2"], "--min_share 2.0 must lie in [0, 1]"),
    (["--b", "cpu:float32", "--against", "missing.pt"], "--against missing.pt: no such file"),
])
def test_bad_input_is_one_line(extra, expected, capsys):
    if extra[1] == "cuda:float32" and torch.cuda.is_available():
        pytest.skip("a cuda device is present here, so naming it is not a mistake")
    with pytest.raises(SystemExit) as exit_info:
        main([*MODEL_FLAGS, *extra])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err


def test_dump_of_another_model_is_refused(tmp_path, capsys):
    dump = tmp_path / "a.pt"
    assert main([*MODEL_FLAGS, "--dump", str(dump)]) == 0
    with pytest.raises(SystemExit):
        main([*MODEL_FLAGS[:-2], "--batch_size", "2", "--num_classes", "6", "--b", "cpu:float32",
              "--against", str(dump)])
    err = capsys.readouterr().err
    assert "dump of another model" in err and "num_classes 5 there, 6 here" in err


def test_batch_from_a_dataset_follows_the_training_sampler(tiny_dataset, tmp_path):
    from segzoo.datasets.sampler import SeededDistributedSampler
    from segzoo.engine.config import parse_train_args
    from segzoo.engine.data import build_datasets
    from segzoo.runtime.distributed import DistInfo

    flags = ["--model_name", "pspnet", "--backbone", "resnet18", "--crop_size", "32", "--batch_size", "2",
             "--dataset", "demo", "--dataset_path", str(tiny_dataset), "--random_seed", "4"]
    dump = tmp_path / "a.pt"
    assert main([*flags, "--dump", str(dump)]) == 0
    # The batch is the first one train.py's sampler deals out for this seed, augmentation included.
    args = parse_train_args(flags + ["--device", "cpu"])
    train_set, _ = build_datasets(args, DistInfo())
    items = list(SeededDistributedSampler(len(train_set), 1, 0, shuffle=True, seed=4))[:2]
    samples = [train_set[item] for item in items]
    expected = numerics.tensor_hash([torch.stack([s[0] for s in samples]).float(),
                                     torch.stack([s[1] for s in samples]).long()])
    assert torch.load(dump, weights_only=True)["meta"]["batch_hash"] == expected
