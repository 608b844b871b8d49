"""CPU smoke tests of tools/benchmark.py and of the shared training step (runtime/step.py).

Tiny sizes and one or two steps: these check that every mode runs and reports sane fields, and
that the FLOP count matches the model's convolutions; they never assert on speed.
"""
import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segzoo.datasets.demo import make_demo_dataset
from segzoo.models import build_model
from segzoo.runtime.device import Device
from segzoo.engine.step import make_train_step, to_device_batch
from tools import benchmark

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model_name", "pspnet", "--backbone", "resnet18", "--crop_size", "32", "--batch_size", "2"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, spinning OpenMP threads make tiny steps crawl."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_demo")
    make_demo_dataset(root, num_train=4, num_val=3, size=(48, 64))
    return root


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _conv_flops(model: torch.nn.Module, images: torch.Tensor) -> int:
    """2 * multiply-adds of every Conv2d in one forward pass, from the output shapes: an estimate
    independent of torch's FLOP counter (PSPNet's compute is all convolutions)."""
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        total += 2 * output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return total


@pytest.fixture(scope="module")
def all_modes(demo_root, tmp_path_factory):
    """One run of every mode over the demo data; the JSON lines it appended to --json."""
    out = tmp_path_factory.mktemp("bench_out") / "bench.jsonl"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = benchmark.main(["--device", "cpu", *TINY, "--steps", "2", "--warmup", "1",
                               "--mode", "train,infer,loader,e2e", "--dataset_path", str(demo_root),
                               "--workers", "1", "--decode_sample", "3", "--json", str(out)])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_every_mode_reports_positive_finite_fields(all_modes):
    assert [r["mode"] for r in all_modes] == ["train", "infer", "loader", "e2e"]
    for r in all_modes:
        assert r["device"] == "cpu" and r["device_name"] and r["torch"] == torch.__version__
        assert (r["model_name"], r["backbone"], r["batch_size"], r["crop_size"]) == ("pspnet", "resnet18", 2, 32)
        assert r["precision"] == "fp32" and r["num_classes"] == 6  # the demo data's classes
        assert r["settings"]["workers"] == 1 and r["settings"]["mode"] == "train,infer,loader,e2e"
        assert _positive(r["images_per_s"]) and _positive(r["ms_per_step"])
    train, infer, loader, e2e = all_modes
    for r in (train, infer, e2e):
        assert _positive(r["peak_memory_gib"]) and _positive(r["tflops_per_s"])
    assert set(train["phases_ms"]) == {"data", "forward", "backward", "optimizer"}
    assert all(_positive(ms) for ms in train["phases_ms"].values())
    assert train["loss_finite"] and _positive(train["final_loss"])
    assert _positive(loader["decode_ms_per_image"]) and _positive(loader["augment_ms_per_image"])
    assert loader["sample_images"] == 3 and _positive(loader["cpu_bound_images_per_s"])
    assert loader["batches"] >= 2 and loader["workers"] == 1
    assert _positive(e2e["vs_synthetic"]) and e2e["data_wait_ms_per_step"] >= 0
    # e2e also leaves out the batches the worker queued during warm-up (its prefetch queue).
    assert e2e["warmup_steps"] > 1 and e2e["loss_finite"]


def test_flop_count_matches_the_models_convolutions(all_modes):
    train, infer = all_modes[0], all_modes[1]
    model = build_model("pspnet", 6, backbone="resnet18")
    images = torch.randn(2, 3, 32, 32)
    forward_eval = _conv_flops(model.eval(), images)
    forward_train = _conv_flops(model.train(), images)  # adds the auxiliary head
    assert forward_train > forward_eval
    assert infer["flops_per_step"] == pytest.approx(forward_eval, rel=0.01)
    assert infer["flops_per_image"] == pytest.approx(forward_eval / 2, rel=0.01)
    # Backward costs about twice the forward (input and weight gradients), minus the input
    # gradient of the first convolution, which the image does not need.
    assert 2.5 * forward_train < train["flops_per_step"] <= 3.0 * forward_train * 1.01
    assert train["tflops_per_s"] == pytest.approx(train["flops_per_step"] / train["ms_per_step"] / 1e9, rel=1e-6)


@pytest.mark.parametrize("amp_dtype,scaled", [("float16", True), ("bfloat16", False)])
def test_mixed_precision_train_step_runs(amp_dtype, scaled):
    """fp16 trains through a GradScaler, bf16 without one (fp32 runs in the all-modes test)."""
    args = benchmark.parse_args(["--device", "cpu", *TINY, "--steps", "1", "--warmup", "0", "--mode", "train",
                                 "--autocast", "True", "--amp_dtype", amp_dtype])
    bench = benchmark.setup(args)
    assert bench.step.scaler.is_enabled() is scaled
    record = benchmark.measure_train(bench)
    assert record["loss_finite"] and _positive(record["images_per_s"]) and _positive(record["flops_per_step"])
    assert benchmark.precision_label(args, bench.device) == {"float16": "fp16", "bfloat16": "bf16"}[amp_dtype]


@pytest.mark.parametrize("argv,names", [
    (["--mode", "train,bogus"], "--mode"),
    (["--mode", "loader"], "--dataset_path"),
    (["--steps", "0"], "--steps"),
    (["--config", "x.yaml"], "--config"),
    (["--json", "/no/such/folder/out.jsonl"], "--json"),
    (["--model_name", "segformer"], "--model_name"),
])
def test_bad_flags_are_user_errors(argv, names):
    with pytest.raises(benchmark.UserError, match=names):
        benchmark.parse_args(["--device", "cpu", *argv])


def test_default_modes_follow_the_data(demo_root):
    assert benchmark.parse_args(["--device", "cpu"]).mode == "train,infer"
    with_data = benchmark.parse_args(["--device", "cpu", "--dataset_path", str(demo_root)])
    assert with_data.mode == "train,infer,loader,e2e" and with_data.dataset == "voc"


def test_script_reports_a_bad_flag_in_one_line_and_exits_2():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "--device", "cpu",
                             "--mode", "fastest"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--mode 'fastest'" in result.stderr


def test_train_step_is_one_sgd_step_of_the_criterion():
    """One TrainStep call = gradients of CE(out) + 0.4 CE(aux) (written out here, not taken from the
    criterion), one SGD step with weight decay at the group's lr (10x for the heads), and one
    poly-schedule step of the lr (computed here from the formula)."""
    args = benchmark.parse_args(["--device", "cpu", *TINY, "--momentum", "0.9", "--weight_decay", "1e-4",
                                 "--lr", "0.01"])
    device = Device("cpu")
    torch.manual_seed(0)
    model = build_model("pspnet", 5, backbone="resnet18", dropout=0.0)  # no dropout: no RNG to align
    model.train()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 5, (2, 32, 32), dtype=torch.uint8)
    x, y = to_device_batch(images, labels, device, channels_last=False)
    reference = copy.deepcopy(model)
    out = reference(x)
    loss = F.cross_entropy(out["out"], y, ignore_index=255) + 0.4 * F.cross_entropy(out["aux"], y, ignore_index=255)
    grads = dict(zip([n for n, _ in reference.named_parameters()],
                     torch.autograd.grad(loss, list(reference.parameters()))))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backbone = {n for n, _ in model.backbone.named_parameters(prefix="backbone")}

    step = make_train_step(model, model, args, 5, device, iters_per_epoch=4)
    step(x, y)
    for name, p in model.named_parameters():
        lr = 0.01 if name in backbone else 0.1
        expected = before[name] - lr * (grads[name] + 1e-4 * before[name])  # first SGD step: buffer = d_p
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)
    total = args.epoch * 4
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 1 / total) ** 0.9)
    assert step.optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * (1 - 1 / total) ** 0.9)
