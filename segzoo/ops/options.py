"""The option every model that uses these ops declares: which implementation runs them."""
from segzoo.ops._dispatch import IMPLS
from segzoo.registry import Option

OPS_IMPL = Option("ops_impl", str, "auto",
                  "attention ops (PSANet/CCNet): vendor or Triton kernel, portable tensor version, or auto",
                  choices=tuple(IMPLS))
