"""Attention ops of the ModelZoo: PSANet's PSA mask and CCNet's criss-cross attention.

Each op has one public function that picks its implementation in one place (`--ops_impl`:
"auto", "kernel" or "portable"; see ops/_dispatch.py). The portable versions are plain tensor
ops that run on any device and dtype; the kernels (Triton on CUDA, torch_sdaa's where it ships
them) are imported on first use, so importing this package never imports triton.
"""
from segzoo.ops._dispatch import IMPLS, available_impls
from segzoo.ops.criss_cross import CrissCrossAttention, criss_cross_attention
from segzoo.ops.psamask import psa_mask

__all__ = ["IMPLS", "CrissCrossAttention", "available_impls", "criss_cross_attention", "psa_mask"]
