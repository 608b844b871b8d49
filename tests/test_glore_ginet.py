"""GloRe and GINet: the graph units against independent einsum re-computations, GINet's class
embeddings (file or learned) and semantic context loss, and training runs through the launcher."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segzoo.models import build_model
from segzoo.models.heads import class_presence
from segzoo.models.ginet import GraphTransfer
from segzoo.models.glore import GloReUnit
from segzoo.runtime.errors import UserError, flag_message
from tests.helpers import TINY_CLASSES, TINY_RUN, logged_values, read_json, run_launcher

K = 5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_glore_unit_matches_the_paper_formula():
    unit = GloReUnit(16, num_states=8, num_nodes=4).eval()
    with torch.no_grad():
        unit.norm.running_mean.uniform_(-1, 1)
        x = torch.randn(2, 16, 5, 7)
        w = lambda conv: conv.weight.flatten(1)  # noqa: E731 -- 1x1 / kernel-1 convs as matrices
        states = torch.einsum("sc,nchw->nshw", w(unit.state), x) + unit.state.bias[:, None, None]
        proj = torch.einsum("mc,nchw->nmhw", w(unit.project), x) + unit.project.bias[:, None, None]
        nodes = torch.einsum("nshw,nmhw->nsm", states, proj) / 35
        gcn = unit.gcn
        relation = torch.einsum("ij,nsj->nsi", w(gcn.node_conv), nodes) + gcn.node_conv.bias + nodes
        reasoned = torch.einsum("ts,nsm->ntm", w(gcn.state_conv), relation.relu())
        back = torch.einsum("nsm,nmhw->nshw", reasoned, proj)
        expected = x + unit.norm(torch.einsum("cs,nshw->nchw", w(unit.extend), back))
        torch.testing.assert_close(unit(x), expected, rtol=1e-4, atol=1e-5)


def test_graph_transfer_directions():
    transfer = GraphTransfer(8)
    classes, visual = torch.randn(2, 8, K), torch.randn(2, 8, 6)
    to_classes, to_visual = transfer(classes, visual)
    w = lambda conv: conv.weight.flatten(1)  # noqa: E731
    q = torch.einsum("ds,nsk->ndk", w(transfer.query), classes) + transfer.query.bias[:, None]
    k = torch.einsum("ds,nsm->ndm", w(transfer.key), visual) + transfer.key.bias[:, None]
    energy = torch.einsum("ndk,ndm->nkm", q, k)
    v_vis = torch.einsum("ts,nsm->ntm", w(transfer.value_visual), visual) + transfer.value_visual.bias[:, None]
    v_cls = torch.einsum("ts,nsk->ntk", w(transfer.value_class), classes) + transfer.value_class.bias[:, None]
    # each class node: a convex combination of visual values, and vice versa
    torch.testing.assert_close(to_classes, torch.einsum("ntm,nkm->ntk", v_vis, energy.softmax(-1)))
    torch.testing.assert_close(to_visual, torch.einsum("ntk,nkm->ntm", v_cls, energy.softmax(-2)))


def _ginet(**options):
    return build_model("ginet", K, backbone="resnet18", output_stride=32, **options)


def test_ginet_semantic_context_loss():
    model = _ginet(sc_weight=0.5).train()
    outputs = model(torch.randn(2, 3, 32, 32))
    assert outputs["sc"].shape == (2, K)
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[0, :4] = 3
    target[1, :, :2] = 255  # ignored pixels do not make a class present
    losses = model.extra_losses(outputs, target)
    presence = torch.tensor([[1.0, 0, 0, 1, 0], [1.0, 0, 0, 0, 0]])
    torch.testing.assert_close(class_presence(target, K), presence)
    expected = 0.5 * F.binary_cross_entropy_with_logits(outputs["sc"], presence)
    torch.testing.assert_close(losses["sc"], expected)
    assert set(_ginet(sc_weight=0.0).train()(torch.randn(2, 3, 32, 32))) == {"out", "aux"}


def test_ginet_learns_embeddings_without_a_file():
    model = _ginet().train()
    embeddings = model.decode_head.embeddings
    assert isinstance(embeddings, torch.nn.Parameter) and embeddings.shape == (K, 300)
    outputs = model(torch.randn(2, 3, 32, 32))
    (outputs["out"].mean() + outputs["sc"].mean()).backward()
    assert embeddings.grad is not None and torch.any(embeddings.grad != 0)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_ginet_class_embeddings_from_file(suffix, tmp_path):
    table = np.random.default_rng(0).standard_normal((K, 12)).astype(np.float32)
    path = tmp_path / f"emb{suffix}"
    np.save(path, table) if suffix == ".npy" else torch.save(torch.from_numpy(table), path)
    head = _ginet(class_embeddings=str(path)).decode_head
    assert not isinstance(head.embeddings, torch.nn.Parameter)  # frozen, as the authors' code
    assert "embeddings" in dict(head.named_buffers())
    torch.testing.assert_close(head.embeddings, torch.from_numpy(table))


@pytest.mark.parametrize("shape", [(K + 1, 12), (K,), (1, K, 12)])
def test_ginet_class_embeddings_of_wrong_shape(shape, tmp_path):
    path = tmp_path / "emb.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    with pytest.raises(UserError) as err:
        _ginet(class_embeddings=str(path))
    message = flag_message(err.value)
    assert message.startswith(f"--class_embeddings {path}") and str(shape) in message and f"({K}, D)" in message


def test_ginet_class_embeddings_missing_file(tmp_path):
    with pytest.raises(UserError) as err:
        _ginet(class_embeddings=str(tmp_path / "none.npy"))
    assert re.match(r"--class_embeddings .*no such file", flag_message(err.value))


def _train(tmp_path, data, *flags, timeout=300):
    work = tmp_path / "work"
    res = run_launcher(*TINY_RUN, "--dataset_path", data, "--work_dir", work, "--epoch", "1", "--val_epoch", "1",
                       "--print_interval", "1", *flags, timeout=timeout)
    assert res.rc == 0, res.describe()
    losses = [v for _, v in logged_values(work / "train_log.json", "train.loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("model", ["glore", "ginet"])
def test_graph_models_train_on_demo_data(model, tmp_path):
    # --dataset demo writes its own data into a fresh folder (not the shared tiny fixture).
    root = tmp_path / "demo"
    work = _train(tmp_path, root, "--model_name", model, "--dataset", "demo")
    val_images = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    metrics = read_json(work / "metrics" / "epoch_001.json")
    assert metrics["images"] == len(val_images) > 0 and len(metrics["per_class_iou"]) == TINY_CLASSES
    assert 0.0 <= metrics["mean_iou"] <= 1.0


@pytest.mark.slow
def test_ginet_trains_with_an_embedding_file_and_refuses_a_wrong_one(tiny_dataset, tmp_path):
    good, bad = tmp_path / "good.npy", tmp_path / "bad.npy"
    np.save(good, np.ones((TINY_CLASSES, 8), dtype=np.float32))
    np.save(bad, np.ones((TINY_CLASSES - 1, 8), dtype=np.float32))
    _train(tmp_path / "ok", tiny_dataset, "--model_name", "ginet", "--class_embeddings", good)
    work = tmp_path / "bad_run"
    res = run_launcher(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--epoch", "1",
                       "--model_name", "ginet", "--class_embeddings", bad, timeout=120)
    assert res.rc != 0 and len(res.stderr_lines) == 1, res.describe()
    assert "--class_embeddings" in res.stderr and f"({TINY_CLASSES}, D)" in res.stderr
    assert not work.exists() or not any(work.rglob("*.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["glore", "ginet"])
def test_graph_models_train_on_camvid(model, camvid_root, tmp_path):
    # Real data (Cityscapes-style street scenes, 11 classes); tiny crops keep it to minutes.
    work = _train(tmp_path, camvid_root, "--model_name", model, "--batch_size", "8", "--crop_val", "True",
                  "--scale_min", "0.25", "--scale_max", "0.5", timeout=600)
    metrics = read_json(work / "metrics" / "epoch_001.json")
    assert metrics["images"] == 233 and len(metrics["per_class_iou"]) == 11
