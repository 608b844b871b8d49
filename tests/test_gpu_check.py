"""tools/gpu_check.py: the GPU acceptance check, proven on cpu.

The smoke run (`--smoke`: every part on cpu at tiny shapes) checks the wiring end to end: every
part leaves a status and a log, the JSON lines parse, a failing part is reported while the later
parts still run. The fast tests check the time box (a hanging part is killed with its children)
and the target arithmetic on hand-made records. Nothing here asserts on speed.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, run_process
from tools import gpu_check

SCRIPT = REPO / "tools" / "gpu_check.sh"
STATUSES = {"ok", "failed", "timed out", "skipped"}
# Parts the smoke run may skip on this cpu machine, and the reason it must give.
SMOKE_SKIPS = {"pspnet_bf16_compiled": "no torch.compile on cpu", "check_ops": "tool not present",
               "compare_numerics": "tool not present"}
BENCH_PARTS = ("pspnet_bf16_eager", "pspnet_e2e", "pspnet_fp16", "pspnet_fp32", "psanet", "ccnet")


def run_check(out: Path, *flags: str, timeout: float = 900):
    # The script runs $PYTHON (else the python on PATH): here, the interpreter of the tests (CI runs
    # .venv/bin/python without activating the environment, so PATH's python may have no torch).
    return run_process(["bash", SCRIPT, out, "--smoke", *flags], timeout, env={"PYTHON": sys.executable})


@pytest.mark.slow
def test_smoke_run_reports_every_part(tmp_path):
    out = tmp_path / "check"
    res = run_check(out)
    summary = json.loads((out / "summary.json").read_text())
    parts = {p["part"]: p for p in summary["parts"]}
    assert list(parts) == list(gpu_check.PART_NAMES), res.describe()
    for name, part in parts.items():
        assert part["status"] in STATUSES and (out / part["log"]).is_file(), (name, part)
        if part["status"] == "skipped":
            assert SMOKE_SKIPS.get(name, "(not allowed to skip)") in part["reason"], (name, part)
        else:
            assert part["status"] == "ok", f"{name}: {part}\n{(out / part['log']).read_text()[-3000:]}"
    assert res.rc == 0, res.describe()
    # The versions come first, before any other part reports.
    stdout = res.stdout.splitlines()
    first_other = min(i for i, line in enumerate(stdout) if line.startswith("[") and not line.startswith("[env]"))
    assert any(line.startswith("torch:") for line in stdout[:first_other]), res.stdout[:2000]
    assert "triton:" in res.stdout and "driver:" in res.stdout
    for name in BENCH_PARTS:
        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert records and all(r["device"] == "cpu" and r["images_per_s"] > 0 for r in records), name
    e2e_modes = [json.loads(line)["mode"] for line in (out / "pspnet_e2e.jsonl").read_text().splitlines()]
    assert e2e_modes == ["train", "e2e"]
    # the training run left a checkpoint and the evaluation ran on it
    assert list((out / "train_run").glob("*.pth")) and "--test_only True" in parts["eval"]["command"]
    # the end-to-end target is the one the smoke run can compute: a ratio and a verdict
    e2e = next(t for t in summary["targets"] if "end to end" in t["target"])
    assert e2e["verdict"] in ("met", "missed") and e2e["ratio"] == pytest.approx(e2e["ours"] / e2e["reference"])
    assert "Targets" in res.stdout


@pytest.mark.slow
def test_failing_part_is_reported_and_the_rest_still_run(tmp_path):
    out = tmp_path / "check"
    missing = tmp_path / "nowhere" / "anchor_gpu.py"
    res = run_check(out, "--anchor", str(missing), "--parts", "anchor,pspnet_fp32", timeout=400)
    assert res.rc == 1, res.describe()
    summary = json.loads((out / "summary.json").read_text())
    parts = {p["part"]: p for p in summary["parts"]}
    assert parts["anchor"]["status"] == "failed" and str(missing) in parts["anchor"]["reason"]
    assert str(missing) in (out / "anchor.log").read_text()
    assert parts["pspnet_fp32"]["status"] == "ok", res.describe()
    assert json.loads((out / "pspnet_fp32.jsonl").read_text().splitlines()[0])["precision"] == "fp32"
    anchor_target = next(t for t in summary["targets"] if "eager >= anchor" in t["target"])
    assert anchor_target["verdict"].startswith("no figure") and "anchor" in anchor_target["verdict"]


def gpu_plan(out: Path, *flags: str) -> dict:
    """The GPU run's commands, as planned on this machine (nothing runs)."""
    return dict(gpu_check.planned_commands(gpu_check.parse_args([str(out), *flags]), out))


def test_gpu_commands_are_accepted_by_their_tools(tmp_path):
    """The GPU run cannot run here; its benchmark and bench_ops command lines can still be parsed
    by the tools' own parsers, so a renamed flag shows up in the test suite, not on the GPU."""
    from tools import bench_ops, benchmark
    bench_parts = [name for name in gpu_check.PART_NAMES if name.startswith(("pspnet_", "psanet", "ccnet"))]
    planned = gpu_plan(tmp_path, "--parts", ",".join(["bench_ops", *bench_parts]))
    bench_parts = [name for name in gpu_check.PART_NAMES if name.startswith(("pspnet_", "psanet", "ccnet"))]
    for name in bench_parts:
        argv = [str(a) for a in planned[name]]
        assert argv[1].endswith("tools/benchmark.py") and "--device" in argv and "cuda" in argv, argv
        parsed = benchmark.build_parser().parse_args(argv[2:])  # a bad flag exits here
        assert parsed.device == "cuda" and parsed.json == str(tmp_path / f"{name}.jsonl")
    compiled = benchmark.build_parser().parse_args([str(a) for a in planned["pspnet_bf16_compiled"][2:]])
    assert compiled.compile and compiled.channels_last and compiled.amp_dtype == "bfloat16"
    ops = bench_ops.parse_args([str(a) for a in planned["bench_ops"][2:]])
    assert ops.shape == "production" and ops.device == "cuda"
    tests_part = next(p for p in gpu_check.plan(gpu_check.parse_args([str(tmp_path)]), tmp_path, {})
                      if p.name == "tests")
    assert tests_part.env["SEG_TEST_DEVICE"] == "cuda"


def test_gpu_anchor_command_uses_flags_the_anchor_has(tmp_path):
    anchor = Path(gpu_check.DEFAULT_ANCHOR)
    if not anchor.is_file():
        pytest.skip(f"the anchor is not at {anchor} (it lives in ../shared beside the repo)")
    source = anchor.read_text()
    argv = [str(a) for a in gpu_plan(tmp_path, "--parts", "anchor")["anchor"]]
    flags = [a for a in argv if a.startswith("--")]
    assert flags and all(f'add_argument("{flag}"' in source for flag in flags), flags
    # the anchor reads precision, layout and compile from substrings of a mode's name; these are in its defaults
    modes = argv[argv.index("--modes") + 1].split(",")
    assert modes == ["bf16_cl", "bf16_cl_compile"] and all(m in source for m in modes)


@pytest.mark.slow
def test_gpu_train_and_eval_commands_pass_the_launcher(tmp_path):
    """--dry_run True: the launcher checks every flag and prints the train.py command it would run."""
    from segzoo.datasets.demo import make_demo_dataset
    make_demo_dataset(tmp_path / "demo", num_train=2, num_val=1, size=(32, 32))
    for name in ("train", "eval"):
        if name == "eval":  # planned only once a checkpoint exists (and planning train empties its work dir)
            (tmp_path / "train_run").mkdir(exist_ok=True)
            (tmp_path / "train_run" / "latest_pspnet_voc.pth").write_bytes(b"")
        argv = [str(a) for a in gpu_plan(tmp_path, "--parts", name)[name]]
        assert "--device" in argv and argv[argv.index("--device") + 1] == "cuda", argv
        assert ("--test_only" in argv) == (name == "eval")
        res = run_process([*argv, "--dry_run", "True"], 120)
        assert res.rc == 0 and "train.py" in res.stdout, (name, res.describe())


def test_unknown_part_is_refused(tmp_path):
    res = run_process([sys.executable, REPO / "tools" / "gpu_check.py", tmp_path, "--parts", "anchor,bogus"], 60)
    assert res.rc == 2 and "bogus" in res.stderr.splitlines()[-1], res.describe()
    assert not list(tmp_path.iterdir())


def test_hanging_part_is_killed_with_its_children(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_PART_SECONDS", 0.5)
    # a child that forks a grandchild (as data-loader workers are) and then hangs
    script = "import subprocess, time; p = subprocess.Popen(['sleep', '300']); print('grandchild', p.pid, " \
             "flush=True); time.sleep(300)"
    part = gpu_check.Part("hang", 3, lambda: [sys.executable, "-c", script])
    result = gpu_check.run_part(part, tmp_path, seconds_left=100)
    assert result["status"] == "timed out" and result["seconds"] < 30
    log = (tmp_path / "hang.log").read_text()
    assert "timed out after 3 s" in log
    pid = int(log.split("grandchild ")[1].split()[0])
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while time.monotonic() < deadline and grandchild_alive(pid):
        time.sleep(0.1)
    if grandchild_alive(pid):
        os.kill(pid, signal.SIGKILL)  # do not leave it behind; the test has failed anyway
        pytest.fail(f"the grandchild {pid} survived the part's timeout")


def grandchild_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in state


def test_parts_out_of_time_skip_and_refusals_fail(tmp_path):
    never = gpu_check.Part("late", 60, lambda: pytest.fail("a part without time must not build its command"))
    assert gpu_check.run_part(never, tmp_path, seconds_left=2)["status"] == "skipped"
    assert "out of time" in (tmp_path / "late.log").read_text()

    def refuse():
        raise gpu_check.Refused("anchor not found at /x")
    result = gpu_check.run_part(gpu_check.Part("anchor", 60, refuse), tmp_path, seconds_left=100)
    assert result["status"] == "failed" and (tmp_path / "anchor.log").read_text() == "error: anchor not found at /x\n"

    def skip():
        raise gpu_check.Skip("tool not present: tools/x.py")
    result = gpu_check.run_part(gpu_check.Part("x", 60, skip), tmp_path, seconds_left=100)
    assert result["status"] == "skipped" and result["reason"] == "tool not present: tools/x.py"


def test_anchor_mode_error_fails_the_part(tmp_path):
    # anchor_gpu.py catches a mode's exception, prints it as a record and exits 0
    (tmp_path / "anchor.log").write_text('$ python anchor_gpu.py\n2.11 0.26 NVIDIA H100\n'
                                         '{"model": "psp_ref", "mode": "bf16_cl", "img_s": 144.0, "mem_gb": 30.0}\n'
                                         '{"model": "psp_ref", "mode": "bf16_cl_compile", "error": "RuntimeError()"}\n')
    results = [{"part": "anchor", "status": "ok", "log": "anchor.log", "reason": "", "seconds": 1.0}]
    records = gpu_check.collect(results, tmp_path)
    assert results[0]["status"] == "failed" and "bf16_cl_compile" in results[0]["reason"]
    assert [r["mode"] for r in records["anchor"]] == ["bf16_cl", "bf16_cl_compile"]
    assert (tmp_path / "anchor.jsonl").read_text().count("\n") == 2


def _op_row(impl, dtype, fwd_bwd_ms, mib, case="collect N=8 64x32 mask 127x63"):
    return {"op": "psa_mask", "case": case, "dtype": dtype, "impl": impl, "fwd_bwd_ms": fwd_bwd_ms,
            "peak_mem_MiB": mib}


def test_targets_compute_ratios_and_verdicts():
    records = {
        "bench_ops": [_op_row("kernel", "float32", 1.0, 100), _op_row("portable", "float32", 3.0, 120),
                      _op_row("kernel", "bfloat16", 2.0, 130), _op_row("portable", "bfloat16", 3.0, 120),
                      _op_row("kernel", "float16", 1.0, 10), _op_row("portable", "float16", 1.0, 10)],
        "anchor": [{"mode": "bf16_cl", "img_s": 100.0, "mem_gb": 20.0},
                   {"mode": "bf16_cl_compile", "img_s": 150.0, "mem_gb": 18.0}],
        "pspnet_bf16_eager": [{"mode": "train", "images_per_s": 110.0, "peak_memory_gib": 19.0}],
        "pspnet_bf16_compiled": [{"mode": "train", "images_per_s": 180.0, "peak_memory_gib": 19.0}],
        "pspnet_e2e": [{"mode": "train", "images_per_s": 100.0}, {"mode": "e2e", "images_per_s": 95.0}],
    }
    rows = {t["target"]: t for t in gpu_check.targets(records)}
    verdicts = {name: (round(t["ratio"], 3), t["verdict"]) for name, t in rows.items()}

    def find(*words):
        return next(v for name, v in verdicts.items() if all(w in name for w in words))
    assert find("float32", ">= 2x") == (3.0, "met")
    assert find("bfloat16", ">= 2x") == (1.5, "missed")
    assert find("float32", "memory") == (round(100 / 120, 3), "met")
    assert find("bfloat16", "memory") == (round(130 / 120, 3), "missed")
    assert not any("float16 " in name and "bfloat16" not in name for name in rows)  # fp16: reported, not a target
    assert find("eager >= anchor") == (1.1, "met")
    assert find("compiled >= 1.3x") == (1.2, "missed")
    assert find("eager peak memory") == (0.95, "met")
    assert find("compiled peak memory") == (round(19 / 18, 3), "missed")
    assert find("end to end") == (0.95, "met")
