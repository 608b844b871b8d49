"""GINet: Graph Interaction Network for Scene Parsing (Wu et al., ECCV 2020), following the
authors' code: a visual graph (pixels softly projected onto region nodes, as GloRe), a semantic
graph (one node per class, from class-name word embeddings), and the graph interaction unit
that lets each graph reason with the other; the class nodes also predict which classes occur
in the image, trained with the semantic context (SC) loss, a binary cross-entropy on class
presence (as EncNet's SE loss).

Semantic nodes: the paper embeds the class names with GloVe/word2vec (300-d). Nothing is
downloaded here: ``--class_embeddings FILE`` gives a (num_classes, D) array (.npy or .pt),
used frozen as in the authors' code; without it the embeddings are learned from a random start.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segzoo.models import MODELS
from segzoo.models.glore import GCN
from segzoo.models.heads import ConvBNReLU, DecodeHead, main_input, presence_loss
from segzoo.registry import Option
from segzoo.runtime.config_types import non_negative_float, positive_int
from segzoo.runtime.errors import UserError

RANDOM_EMBED_DIM = 300  # the paper's word-vector size, for the learned random start


def load_class_embeddings(path: str | Path, num_classes: int) -> torch.Tensor:
    """The (num_classes, D) float tensor stored in ``path`` (.npy, or .pt/.pth holding a tensor);
    a ``UserError`` naming ``--class_embeddings`` when the file is missing, unreadable or of
    another shape."""
    path = Path(path)
    flag = f"‹class_embeddings› {path}"
    if not path.is_file():
        raise UserError(f"{flag}: no such file; give a num_classes x D array saved as .npy or .pt")
    try:
        if path.suffix == ".npy":
            array = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            array = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any failure to read means "not an array file"
        raise UserError(f"{flag}: cannot be read as an array ({type(err).__name__}); "
                        "save a num_classes x D array with numpy.save (.npy) or torch.save (.pt)") from None
    if not isinstance(array, torch.Tensor):
        raise UserError(f"{flag}: holds a {type(array).__name__}, not an array; save the tensor itself")
    if array.dim() != 2 or array.shape[0] != num_classes or not array.is_floating_point():
        raise UserError(f"{flag}: has shape {tuple(array.shape)} ({array.dtype}) but the model needs "
                        f"({num_classes}, D) floats, one embedding per class (num_classes={num_classes})")
    return array.float()


class _NodeLinear(nn.Module):
    """One score per node: (N, S, K) -> (N, K), the same linear map for every class node."""

    def __init__(self, num_states: int):
        super().__init__()
        self.score = nn.Linear(num_states, 1)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.score(nodes.transpose(1, 2)).squeeze(-1)


class GraphTransfer(nn.Module):
    """Graph interaction (paper Sec. 3.3): attention between class nodes and visual nodes,
    energy = q(class) . k(visual); visual-to-semantic reasoning gathers visual values into each
    class node (softmax over visual nodes), semantic-to-visual reasoning gathers class values
    into each visual node (softmax over class nodes).

    Shapes: classes (N, S, K), visual (N, S, M) -> (classes (N, S, K), visual (N, S, M)).
    """

    def __init__(self, num_states: int):
        super().__init__()
        self.query = nn.Conv1d(num_states, num_states // 2, 1)
        self.key = nn.Conv1d(num_states, num_states // 2, 1)
        self.value_visual = nn.Conv1d(num_states, num_states, 1)
        self.value_class = nn.Conv1d(num_states, num_states, 1)

    def forward(self, classes: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energy = self.query(classes).transpose(1, 2) @ self.key(visual)  # (N, K, M)
        to_classes = self.value_visual(visual) @ F.softmax(energy, dim=-1).transpose(1, 2)  # (N, S, K)
        to_visual = self.value_class(classes) @ F.softmax(energy, dim=-2)  # (N, S, M)
        return to_classes, to_visual


class GraphInteractionUnit(nn.Module):
    """Visual graph from the pixels (projection B, node features V = X_s B^T / hw), semantic graph
    from the class embeddings; one GCN on each, the graph interaction, and the interaction
    results added through learned per-node gates (zero at start, as the authors' code, so the
    unit starts as two independent GCNs); the visual nodes are projected back to the pixels
    (1x1 conv + BN) and added to the input.

    Shapes: x (N, C, h, w), class nodes (N, S, K) -> (x (N, C, h, w), class nodes (N, S, K)).
    """

    def __init__(self, channels: int, num_states: int, num_nodes: int, num_classes: int):
        super().__init__()
        self.state = nn.Conv2d(channels, num_states, 1)
        self.project = nn.Conv2d(channels, num_nodes, 1)
        self.visual_gcn = GCN(num_states, num_nodes)
        self.class_gcn = GCN(num_states, num_classes)
        self.transfer = GraphTransfer(num_states)
        self.gate_visual = nn.Parameter(torch.zeros(num_nodes))
        self.gate_class = nn.Parameter(torch.zeros(num_classes))
        self.extend = nn.Conv2d(num_states, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        projection = self.project(x).flatten(2)  # (N, M, hw)
        visual = self.state(x).flatten(2) @ projection.transpose(1, 2) / (h * w)  # (N, S, M)
        classes, visual = self.class_gcn(classes), self.visual_gcn(visual)
        to_classes, to_visual = self.transfer(classes, visual)
        classes = self.gate_class * classes + to_classes
        visual = self.gate_visual * to_visual + visual
        pixels = (visual @ projection).view(n, -1, h, w)
        return x + self.norm(self.extend(pixels)), classes


class GINetHead(DecodeHead):
    """GINet head: 3x3 conv-BN-ReLU (in -> ``channels``), graph interaction unit, classifier;
    class embeddings (K, D) -> Linear-BN-ReLU to 128 -> Linear-BN-ReLU to ``num_states`` give the
    semantic nodes; BN-ReLU and a linear layer score each class node for the SC loss.

    Args:
        embeddings: (K, D) frozen class embeddings, or None to learn (K, 300) from N(0, 1).
        sc_weight: weight of the semantic context loss (0: no "sc" output, no loss).

    Returns {"out": (N, K, h, w) logits, "sc": (N, K) class-presence logits}; ``extra_losses``
    gives sc_weight * BCE(sc, classes present in the label).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1, num_states: int = 256, num_nodes: int = 64,
                 embeddings: torch.Tensor | None = None, sc_weight: float = 0.2):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        self.num_classes, self.sc_weight = num_classes, sc_weight
        if embeddings is None:
            self.embeddings = nn.Parameter(torch.randn(num_classes, RANDOM_EMBED_DIM))
        else:
            self.register_buffer("embeddings", embeddings.clone())

        def norm(width: int) -> nn.Module:
            # BN over the class nodes (authors' code); one class gives one value per channel.
            return nn.BatchNorm1d(width) if num_classes > 1 else nn.Identity()

        self.embed = nn.Sequential(nn.Linear(self.embeddings.shape[1], 128), norm(128), nn.ReLU(inplace=True),
                                   nn.Linear(128, num_states), norm(num_states), nn.ReLU(inplace=True))
        self.reduce = ConvBNReLU(in_channels, channels, 3)
        self.interaction = GraphInteractionUnit(channels, num_states, num_nodes, num_classes)
        # BN + ReLU before the class scores, as EncNet's SE branch: without it the SC loss drives
        # an unnormalised chain of linear maps (embedding MLP, GCN, gates) that diverged within
        # a dozen SGD steps on CamVid at the usual 10x head learning rate.
        self.sc_classifier = nn.Sequential(nn.BatchNorm1d(num_states), nn.ReLU(inplace=True),
                                           _NodeLinear(num_states)) if sc_weight > 0 else None

    def extra_losses(self, outputs: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if "sc" not in outputs:
            return {}
        return {"sc": self.sc_weight * presence_loss(outputs["sc"], target, self.num_classes)}

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.reduce(features[self.in_index])
        classes = self.embed(self.embeddings).t().unsqueeze(0).expand(x.shape[0], -1, -1)  # (N, S, K)
        x, classes = self.interaction(x, classes)
        result = {"out": self.classifier(x)}
        if self.sc_classifier is not None:
            result["sc"] = self.sc_classifier(classes)  # (N, K)
        return result


@MODELS.register("ginet", options=[
    Option("class_embeddings", str, None,
           "GINet: num_classes x D class-name embeddings (.npy/.pt), frozen; default: learned from random"),
    Option("sc_weight", non_negative_float, 0.2, "GINet semantic context loss weight (0 = none)"),
    Option("ginet_nodes", positive_int, 64, "GINet visual graph nodes"),
], summary="GINet, graph interaction (Wu et al., ECCV 2020)")
def build_ginet(backbone: nn.Module, num_classes: int, *, dropout: float, class_embeddings: str | None = None,
                sc_weight: float = 0.2, ginet_nodes: int = 64) -> GINetHead:
    """GINet's head (512 channels, 256 node features) on the backbone's main feature."""
    in_channels, index = main_input(backbone)
    embeddings = load_class_embeddings(class_embeddings, num_classes) if class_embeddings else None
    return GINetHead(in_channels, 512, num_classes, dropout, in_index=index, num_nodes=ginet_nodes,
                     embeddings=embeddings, sc_weight=sc_weight)
