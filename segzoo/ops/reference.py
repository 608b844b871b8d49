"""Slow, explicit-loop references for the tests. They follow the definitions word for word,
one pixel and one window position at a time, so they are easy to check by eye; they are far too
slow for anything but tiny shapes. Both are differentiable (autograd records the loops), so the
tests can compare gradients as well as values.
"""
from __future__ import annotations

import torch


def psa_mask_reference(x: torch.Tensor, mode: str, mask_size: tuple[int, int]) -> torch.Tensor:
    """PSA mask by definition. x: (N, mH*mW, H, W) -> (N, H*W, H, W)."""
    n_batch, _, height, width = x.shape
    mask_h, mask_w = mask_size
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    out = x.new_zeros(n_batch, height * width, height, width)
    for n in range(n_batch):
        for h in range(height):
            for w in range(width):
                for i in range(mask_h):
                    for j in range(mask_w):
                        th, tw = i + h - half_h, j + w - half_w
                        if not (0 <= th < height and 0 <= tw < width):
                            continue
                        value = x[n, i * mask_w + j, h, w]
                        if mode == "collect":
                            out[n, th * width + tw, h, w] = value
                        else:
                            out[n, h * width + w, th, tw] = value
    return out


def criss_cross_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Criss-cross attention by definition (CCNet, Huang et al., ICCV 2019).

    q, k: (N, C', H, W); v: (N, C, H, W). Pixel (h, w) attends to its column (all h2, itself
    included) and its row (all w2 != w, so itself is counted once), one softmax over those
    H+W-1 positions, and takes the weighted sum of v there. Returns (N, C, H, W).
    """
    n_batch, _, height, width = q.shape
    pixels = []
    for n in range(n_batch):
        for h in range(height):
            for w in range(width):
                query = q[n, :, h, w]
                positions = [(h2, w) for h2 in range(height)] + [(h, w2) for w2 in range(width) if w2 != w]
                energies = torch.stack([torch.dot(query, k[n, :, ph, pw]) for ph, pw in positions])
                weights = torch.softmax(energies, dim=0)
                values = torch.stack([v[n, :, ph, pw] for ph, pw in positions], dim=1)  # (C, H+W-1)
                pixels.append(values @ weights)
    out = torch.stack(pixels, dim=1)  # (C, N*H*W)
    return out.view(-1, n_batch, height, width).permute(1, 0, 2, 3)
