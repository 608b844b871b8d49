"""GloRe: Graph-Based Global Reasoning Networks (Chen et al., CVPR 2019), as a decode head in the
shape of SemSegPaddle's GloRe head: 3x3 conv-BN-ReLU reduce, GloRe unit, 3x3 conv-BN-ReLU,
classifier.

The GloRe unit projects the pixels of a feature map onto a few graph nodes (a learned soft
assignment, so the nodes are regions rather than pixels), reasons over the fully-connected node
graph with one graph convolution, and projects the result back to the pixels, added to the input.
"""
from __future__ import annotations

import torch
from torch import nn

from segzoo.models import MODELS
from segzoo.models.heads import ConvBNReLU, DecodeHead, main_input
from segzoo.registry import Option
from segzoo.runtime.config_types import positive_int


class GCN(nn.Module):
    """One graph convolution over a fully-connected graph of ``num_nodes`` nodes with
    ``num_states`` features each (paper Sec. 3.3, Z = ((I - A_g) V) W_g): a node-wise 1D conv
    (the learned adjacency A_g, mixing nodes) with the identity as residual, ReLU, then a
    state-wise 1D conv (W_g, mixing features).

    Shapes: (N, num_states, num_nodes) -> (N, num_states, num_nodes).
    """

    def __init__(self, num_states: int, num_nodes: int):
        super().__init__()
        self.node_conv = nn.Conv1d(num_nodes, num_nodes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.state_conv = nn.Conv1d(num_states, num_states, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.node_conv(x.transpose(1, 2)).transpose(1, 2) + x
        return self.state_conv(self.relu(h))


class GloReUnit(nn.Module):
    """Global reasoning unit (paper Fig. 2, authors' code): 1x1 convs give the reduced state
    X_s (num_states channels) and the projection B (num_nodes maps); node features
    V = X_s B^T / (h*w) (N, num_states, num_nodes); GCN; reprojection V B back to the pixels;
    1x1 conv to ``channels`` + BN, added to the input.

    Shapes: (N, channels, h, w) -> (N, channels, h, w).
    """

    def __init__(self, channels: int, num_states: int = 128, num_nodes: int = 64):
        super().__init__()
        self.state = nn.Conv2d(channels, num_states, 1)
        self.project = nn.Conv2d(channels, num_nodes, 1)
        self.gcn = GCN(num_states, num_nodes)
        self.extend = nn.Conv2d(num_states, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        states = self.state(x).flatten(2)        # (N, S, hw)
        projection = self.project(x).flatten(2)  # (N, nodes, hw)
        # Averaging (not summing) over pixels keeps node features independent of the image size.
        nodes = states @ projection.transpose(1, 2) / (h * w)  # (N, S, nodes)
        pixels = self.gcn(nodes) @ projection    # reverse projection with the same B: (N, S, hw)
        return x + self.norm(self.extend(pixels.view(n, -1, h, w)))


class GloReHead(DecodeHead):
    """GloRe head: 3x3 conv-BN-ReLU (in -> ``channels``), GloRe unit, 3x3 conv-BN-ReLU, classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1, num_states: int = 128, num_nodes: int = 64):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        self.reduce = ConvBNReLU(in_channels, channels, 3)
        self.glore = GloReUnit(channels, num_states, num_nodes)
        self.bottleneck = ConvBNReLU(channels, channels, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.glore(self.reduce(x)))


@MODELS.register("glore", options=[
    Option("glore_nodes", positive_int, 64, "GloRe graph nodes (the paper's N)"),
    Option("glore_states", positive_int, 128, "GloRe node feature size (the paper's reduced channels S)"),
], summary="GloRe, graph-based global reasoning (Chen et al., CVPR 2019)")
def build_glore(backbone: nn.Module, num_classes: int, *, dropout: float, glore_nodes: int = 64,
                glore_states: int = 128) -> GloReHead:
    """GloRe's head (512 channels, 64 nodes of 128 features) on the backbone's main feature."""
    in_channels, index = main_input(backbone)
    return GloReHead(in_channels, 512, num_classes, dropout, in_index=index, num_states=glore_states,
                     num_nodes=glore_nodes)
