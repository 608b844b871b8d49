"""ConfusionMatrix and the metric report, checked against a plain-Python reference."""
import json
import math
import os
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segzoo.runtime.errors import UserError
from segzoo.runtime.metrics import ConfusionMatrix, format_table, results_to_json, save_json

NUM_CLASSES = 6


def random_batch(seed: int, shape=(3, 17, 19), dtype=torch.int64):
    """Targets with void (255) and out-of-range (7, and -1 when signed) pixels, and predictions
    that agree with the target about half the time so that every metric is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, shape, generator=g)
    noise = torch.rand(shape, generator=g)
    target[noise < 0.10] = 255
    target[(noise >= 0.10) & (noise < 0.13)] = 7
    if dtype.is_signed:
        target[(noise >= 0.13) & (noise < 0.15)] = -1
    pred = torch.where(torch.rand(shape, generator=g) < 0.5, target.clamp(0, NUM_CLASSES - 1),
                       torch.randint(0, NUM_CLASSES, shape, generator=g))
    return target.to(dtype), pred


def reference_confusion(target, pred, k):
    mat = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(target.reshape(-1).tolist(), pred.reshape(-1).tolist()):
        if 0 <= t < k:
            mat[t, p] += 1
    return mat


def reference_metrics(mat):
    """Per-class counts written out one class at a time (tp, fp, fn), independent of the
    vectorised implementation."""
    k = len(mat)
    total = mat.sum()
    iou, acc, freq_weighted = [], [], 0.0
    for c in range(k):
        tp = mat[c, c]
        fn = mat[c, :].sum() - tp
        fp = mat[:, c].sum() - tp
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        acc.append(tp / (tp + fn) if tp + fn else math.nan)
        if tp + fn:
            freq_weighted += (tp + fn) / total * iou[c]
    present_iou = [v for v in iou if not math.isnan(v)]
    present_acc = [v for v in acc if not math.isnan(v)]
    return {
        "overall_acc": np.trace(mat) / total,
        "mean_acc": sum(present_acc) / len(present_acc),
        "freqw_acc": freq_weighted,
        "mean_iou": sum(present_iou) / len(present_iou),
        "per_class_iou": iou,
        "per_class_acc": acc,
    }


def assert_results_close(got, want):
    for key in ("overall_acc", "mean_acc", "freqw_acc", "mean_iou"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    for key in ("per_class_iou", "per_class_acc"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, equal_nan=True, err_msg=key)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_with_ignored_pixels(device_name, seed, dtype):
    target, pred = random_batch(seed, dtype=dtype)
    cm = ConfusionMatrix(NUM_CLASSES, device=device_name)
    cm.update(target.to(device_name), pred.to(device_name))

    want_mat = reference_confusion(target, pred, NUM_CLASSES)
    assert cm.mat.dtype == torch.int64 and cm.mat.device.type == torch.device(device_name).type
    np.testing.assert_array_equal(cm.mat.cpu().numpy(), want_mat)
    # The ignored and out-of-range pixels really were in the batch and really were dropped.
    assert want_mat.sum() < target.numel()
    assert_results_close(cm.compute(), reference_metrics(want_mat))


def test_updates_accumulate_like_one_big_batch():
    (t1, p1), (t2, p2) = random_batch(2), random_batch(3, shape=(2, 5, 7))
    split = ConfusionMatrix(NUM_CLASSES)
    split.update(t1, p1)
    split.update(t2, p2)
    whole = ConfusionMatrix(NUM_CLASSES)
    whole.update(torch.cat([t1.reshape(-1), t2.reshape(-1)]),
                 torch.cat([p1.reshape(-1), p2.reshape(-1)]))
    assert torch.equal(split.mat, whole.mat)
    split.reset()
    assert split.mat.sum() == 0


def test_update_never_reads_values_back_to_the_host():
    # Meta tensors have shapes but no data: anything that needs the values on the host (.item(),
    # boolean-mask indexing, torch.bincount's output length) raises here. On an accelerator
    # that would be a device sync on every batch.
    cm = ConfusionMatrix(NUM_CLASSES, device="meta")
    target = torch.empty((2, 8, 8), dtype=torch.uint8, device="meta")
    pred = torch.empty((2, 8, 8), dtype=torch.int64, device="meta")
    cm.update(target, pred)
    assert cm.mat.shape == (NUM_CLASSES, NUM_CLASSES)


def test_all_ignored_gives_nan_without_warnings():
    target = torch.full((2, 4, 4), 255, dtype=torch.uint8)
    pred = torch.zeros((2, 4, 4), dtype=torch.int64)
    cm = ConfusionMatrix(NUM_CLASSES)
    cm.update(target, pred)
    assert cm.mat.sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = cm.compute()
        table = format_table(results)
    for key in ("overall_acc", "mean_acc", "freqw_acc", "mean_iou"):
        assert math.isnan(results[key]), key
    assert all(math.isnan(v) for v in results["per_class_iou"] + results["per_class_acc"])
    assert "nan" not in table.lower()
    as_json = results_to_json(results)
    assert as_json["mean_iou"] is None and set(as_json["per_class_iou"].values()) == {None}
    json.dumps(as_json, allow_nan=False)  # strict JSON


def test_perfect_prediction_scores_one_and_absent_classes_are_nan():
    target = torch.tensor([[0, 0, 1], [1, 3, 255]])
    cm = ConfusionMatrix(5)
    cm.update(target, target.clamp(max=4))  # the void pixel's prediction must not count
    results = cm.compute()
    for key in ("overall_acc", "mean_acc", "freqw_acc", "mean_iou"):
        assert results[key] == 1.0, key
    assert results["per_class_iou"][:2] == [1.0, 1.0] and results["per_class_iou"][3] == 1.0
    assert math.isnan(results["per_class_iou"][2]) and math.isnan(results["per_class_iou"][4])


def test_predicted_class_without_ground_truth_has_zero_iou_and_no_accuracy():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    results = cm.compute()
    assert results["per_class_iou"] == [0.5, 1.0, 0.0]
    assert results["per_class_acc"][:2] == [0.5, 1.0] and math.isnan(results["per_class_acc"][2])
    assert results["mean_iou"] == pytest.approx(0.5)  # the false-positive class counts
    assert results["mean_acc"] == pytest.approx(0.75)  # only classes with ground truth


def test_out_of_range_prediction_does_not_land_in_another_class_row():
    cm = ConfusionMatrix(3)
    # target*K + pred would put (0, 3) into cell (1, 0) if predictions were not range-checked.
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([3, 1, -1]))
    assert cm.mat.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(3).update(torch.zeros(2, 3, dtype=torch.int64),
                                  torch.zeros(3, 2, dtype=torch.int64))


def _parse_table(table: str):
    summary, classes = {}, {}
    head, body = table.split("\n\n")
    for line in head.splitlines():
        label, value = line.rsplit(maxsplit=1)
        summary[label] = value
    for line in body.splitlines()[1:]:
        name, iou, acc = line.split()
        classes[name] = (iou, acc)
    return summary, classes


def test_format_table_mean_iou_is_the_mean_of_the_printed_classes():
    target, pred = random_batch(4)
    target[target == 2] = 255  # class 2 absent from ground truth ...
    pred[pred == 2] = 0  # ... and never predicted: shown as "-"
    cm = ConfusionMatrix(NUM_CLASSES)
    cm.update(target, pred)
    names = ["sky", "building", "pole", "road", "car", "bicyclist"]
    summary, classes = _parse_table(format_table(cm.compute(), names))

    assert list(classes) == names
    assert classes["pole"] == ("-", "-")
    printed = [float(iou) for iou, _ in classes.values() if iou != "-"]
    assert len(printed) == NUM_CLASSES - 1
    # Each printed value is off by at most 0.005 from rounding, the printed mean too.
    assert float(summary["Mean IoU"]) == pytest.approx(sum(printed) / len(printed), abs=0.0101)
    assert float(summary["Mean IoU"]) == pytest.approx(100 * cm.compute()["mean_iou"], abs=0.0051)
    assert set(summary) == {"Overall Acc", "Mean Acc", "FreqW Acc", "Mean IoU"}


def test_results_to_json_keys_classes_by_name_and_checks_names():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    results = cm.compute()
    out = results_to_json(results, ["a", "b", "c"])
    assert out["per_class_iou"] == {"a": 0.5, "b": 0.5, "c": None}
    assert out["per_class_acc"] == {"a": 1.0, "b": 0.5, "c": None}
    assert out["overall_acc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 class names"):
        results_to_json(results, ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        format_table(results, ["a", "a", "b"])


def test_save_json_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    save_json(path, {"mean_iou": 0.5})
    save_json(path, {"mean_iou": 0.75})
    assert json.loads(path.read_text()) == {"mean_iou": 0.75}

    with pytest.raises(TypeError):  # unserialisable: the old file stays as it was
        save_json(path, {"mean_iou": object()})
    assert json.loads(path.read_text()) == {"mean_iou": 0.75}
    assert os.listdir(path.parent) == ["metrics.json"]  # no temp file left behind


def test_save_json_writes_strict_json(tmp_path):
    path = tmp_path / "metrics.json"
    save_json(path, {"loss": math.nan, "per_class": {"a": math.inf, "b": 0.5}, "m": [[1, 2]]})
    # json.loads would accept NaN; parse_constant rejects it, as strict JSON readers do.
    loaded = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))
    assert loaded == {"loss": None, "per_class": {"a": None, "b": 0.5}, "m": [[1, 2]]}


def test_save_json_to_an_unwritable_place_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        save_json(blocker / "metrics.json", {})
    assert os.listdir(tmp_path) == ["file"]


def test_reduce_without_distributed_is_a_no_op():
    assert not dist.is_initialized()
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    before = cm.mat.clone()
    cm.reduce_from_all_processes()
    assert torch.equal(cm.mat, before)


def _reduce_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=60))
    try:
        target, pred = random_batch(seed=10 + rank)  # every rank sees different pixels
        cm = ConfusionMatrix(NUM_CLASSES)
        cm.update(target, pred)
        cm.reduce_from_all_processes()
        torch.save(cm.mat, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_reduce_sums_the_matrices_of_two_gloo_processes(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    world_size = 2
    mp.spawn(_reduce_worker, args=(world_size, str(tmp_path / "init"), str(tmp_path)),
             nprocs=world_size, join=True)
    want = sum(reference_confusion(*random_batch(seed=10 + r), NUM_CLASSES)
               for r in range(world_size))
    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"rank {rank}")
