"""Implementation choice (`--ops_impl`), lazy triton import, the sdaa slot."""
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segzoo import ops
from segzoo.ops import _dispatch, criss_cross_attention, psa_mask
from segzoo.runtime.errors import UserError, flag_message

REPO = Path(__file__).resolve().parents[1]


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(_dispatch, "_announced", set())


def test_import_does_not_import_triton():
    proc = _run_python("""
        import sys, torch
        from segzoo import ops
        ops.psa_mask(torch.randn(1, 9, 2, 2))
        ops.criss_cross_attention(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(1, 4, 3, 3))
        print("triton" in sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_runs_and_falls_back_without_triton():
    # A meta-path hook makes `import triton` fail, as on a machine without it.
    proc = _run_python("""
        import sys, torch
        class NoTriton:
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("triton blocked for this test")
        sys.meta_path.insert(0, NoTriton())
        from segzoo import ops
        from segzoo.ops import _dispatch
        from segzoo.runtime.errors import UserError, flag_message
        ops.psa_mask(torch.randn(1, 9, 2, 2), impl="auto")
        ops.CrissCrossAttention(8)(torch.randn(1, 8, 3, 3))
        assert ops.available_impls("cuda") == {"psa_mask": ("portable",), "criss_cross_attention": ("portable",)}
        portable = object()
        assert _dispatch.select("psa_mask", torch.device("cuda"), "auto", portable) is portable
        try:
            _dispatch.select("psa_mask", torch.device("cuda"), "kernel", portable)
        except UserError as exc:
            print(flag_message(exc))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "--ops_impl kernel" in proc.stdout and "'cuda'" in proc.stdout and "triton" in proc.stdout
    assert "no kernel (triton is not importable" in proc.stderr  # the once-only warning


def test_available_impls_on_cpu_and_unloaded_sdaa(no_interpreter):
    portable_only = {"psa_mask": ("portable",), "criss_cross_attention": ("portable",)}
    assert ops.available_impls("cpu") == portable_only
    assert ops.available_impls(torch.device("cpu")) == portable_only
    assert ops.available_impls("sdaa:0") == portable_only  # a string works before the plugin loads


@pytest.mark.parametrize("call", [
    lambda impl: psa_mask(torch.randn(1, 9, 2, 2), impl=impl),
    lambda impl: criss_cross_attention(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(1, 4, 3, 3),
                                       impl=impl),
])
def test_kernel_where_none_exists_is_a_user_error(call, no_interpreter):
    with pytest.raises(UserError) as info:
        call("kernel")
    message = flag_message(info.value)
    assert "--ops_impl kernel" in message and "'cpu'" in message and "\n" not in message


def test_unknown_impl_is_a_user_error():
    with pytest.raises(UserError) as info:
        psa_mask(torch.randn(1, 9, 2, 2), impl="fast")
    assert flag_message(info.value).startswith("--ops_impl 'fast' is not known")


def test_choice_is_logged_once(caplog, fresh_announcements, no_interpreter):
    x = torch.randn(1, 9, 2, 2)
    with caplog.at_level(logging.INFO, logger="segzoo.ops"):
        for _ in range(3):
            psa_mask(x)
            psa_mask(x, impl="portable")
    messages = [r.getMessage() for r in caplog.records if r.name == "segzoo.ops"]
    assert messages == ["psa_mask on cpu: using the portable version (--ops_impl auto)"]


def test_sdaa_slot_uses_a_plugin_op_when_registered():
    # Registers torch.ops.sdaa.psa_mask as a plugin would (in a child process, so the fake op
    # does not leak into other tests) and checks that auto picks it for sdaa tensors.
    proc = _run_python("""
        import torch
        from torch.library import Library
        from segzoo.ops import _dispatch
        lib = Library("sdaa", "FRAGMENT")
        lib.define("psa_mask(Tensor x, int mask_h, int mask_w, bool collect) -> Tensor")
        portable = object()
        chosen = _dispatch.select("psa_mask", "sdaa", "auto", portable)
        assert chosen is torch.ops.sdaa.psa_mask, chosen
        assert _dispatch.select("criss_cross_attention", "sdaa", "auto", portable) is portable
        print(_dispatch.available_impls("sdaa"))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "'psa_mask': ('kernel', 'portable')" in proc.stdout
    assert "'criss_cross_attention': ('portable',)" in proc.stdout


def test_first_kernel_lookup_inside_torch_compile():
    # A compiled model may be the first caller: the lookup (which imports the kernel module)
    # must then run eagerly, not be traced (that would break the graph).
    proc = _run_python("""
        import torch
        from segzoo.ops import _dispatch
        portable = lambda x: x
        def chosen_kernel(x):
            return x + (0 if _dispatch.select("psa_mask", torch.device("cuda"), "auto", portable) is portable else 1)
        out = torch.compile(chosen_kernel, backend="eager", fullgraph=True)(torch.zeros(1))
        print(int(out.item()), "psa_mask" in _dispatch._triton_entries)
    """)
    assert proc.returncode == 0, proc.stderr
    expected_kernel = int("kernel" in ops.available_impls("cuda")["psa_mask"])  # triton installed here?
    assert proc.stdout.split() == [str(expected_kernel), "True"]
