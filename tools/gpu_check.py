#!/usr/bin/env python
"""GPU acceptance check: kernels, AMP and speed on one NVIDIA GPU, every part in its own time box.

    bash tools/gpu_check.sh OUT_DIR [--anchor ../shared/bench/anchor_gpu.py] [--data ../shared/data/camvid_voc]
    bash tools/gpu_check.sh OUT_DIR --smoke      # the same parts on cpu at tiny shapes (about a few minutes)

Parts, in order (each a subprocess with its own timeout, so a failing or hanging part cannot hide
the others; its stdout+stderr go to OUT_DIR/<part>.log and its JSON lines to OUT_DIR/<part>.jsonl):
  env                 device, driver, torch, CUDA/cuDNN and Triton versions; which of our other
                      dependencies do not import (nothing is installed: no package index is used)
  data                a demo dataset in OUT_DIR/demo for the training parts
  tests               SEG_TEST_DEVICE=cuda pytest tests/test_ops_cuda.py tests/test_attention_models.py
                      (-m "not slow": the slow ones train on cpu and prove nothing about the GPU)
  bench_ops           tools/bench_ops.py at the production shapes: kernel vs portable, fwd and fwd+bwd
  anchor              ../shared/bench/anchor_gpu.py psp_ref, bf16+channels_last eager and compiled
  pspnet_bf16_eager   tools/benchmark.py, PSPNet50 (--stem plain, the anchor's FLOPs) 513x513 batch 8
  pspnet_bf16_compiled  the same, --compile True
  pspnet_e2e          the same eager step fed from disk (--data) with all cores, beside synthetic
  pspnet_fp16 / pspnet_fp32   fp16 with GradScaler, and fp32, for reference
  psanet / ccnet      the seeds' crops: PSANet R50 512x1024, CCNet R101 769x769, batch 8, bf16
  check_ops / compare_numerics   the port-validation tools, when present in tools/
  train / eval        20 iterations through run_scripts/run_pspnet.py, then --test_only on its checkpoint

At the end: a table (part, status, seconds, key figures), the targets with their ratios and
verdicts, and OUT_DIR/summary.json. Exit status 1 when a part failed or timed out, else 0; a
missed target does not change it (the figures are the deliverable, the verdict is read from them).
--smoke runs every part on cpu at tiny shapes (resnet18, crop 64, batch 2, 2 steps, no compile;
the anchor is CUDA-only, so only its flags are parsed), for the test suite.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEFAULT_ANCHOR = REPO.parent / "shared" / "bench" / "anchor_gpu.py"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid_voc"
TIME_LIMIT = 540            # seconds: the whole check must fit in 9 minutes on one GPU
SMOKE_TIME_LIMIT = 900      # 2 shared cpu cores; the smoke run proves wiring, not speed
MIN_PART_SECONDS = 10       # a part that would get less than this is skipped, not started
TRAIN_ITERS = 20
DEPENDENCIES = ("timm", "onnx", "onnxruntime", "tensorboard", "cv2", "yaml", "matplotlib", "PIL")
# Device memory bandwidth (bytes/s) by a substring of the device name; bench_ops reports
# achieved bandwidth as a fraction of it. Unknown devices get bench_ops' default (H100 SXM).
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


class Skip(Exception):
    """A part that is not run, with the reason (a missing tool, a missing checkpoint)."""


class Refused(Exception):
    """A part that cannot start because of the user's input (e.g. no anchor at the path): failed."""


@dataclasses.dataclass
class Part:
    """One time-boxed subprocess. ``command`` is called right before the part runs (so it can
    look at what earlier parts left behind) and returns argv; it may raise Skip or Refused."""
    name: str
    budget: float
    command: Callable[[], list]
    env: dict = dataclasses.field(default_factory=dict)
    note: str = ""


# ------------------------------------------------------------------------------------------
# the environment report (run as its own part: a broken torch must not take the driver down)
# ------------------------------------------------------------------------------------------
def env_report(device_name: str) -> int:
    """Print device, driver, torch, CUDA/cuDNN and Triton versions and the missing imports;
    then one JSON line of the same. Exit status 1 when torch or the device is unusable."""
    import importlib
    info = {"python": sys.version.split()[0], "cpu_cores": len(os.sched_getaffinity(0))}
    status = 0
    try:
        import torch
        info.update(torch=torch.__version__, cuda_build=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
        sys.path.insert(0, str(REPO))
        from segzoo.runtime.device import Device
        info["device"] = Device(device_name).description
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the report is the point
        info["device_error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        info["triton"] = f"not importable ({type(exc).__name__})"
    info["driver"] = nvidia_driver()
    missing = {}
    for name in DEPENDENCIES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken install counts as missing
            missing[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    info["missing_dependencies"] = missing
    print(f"device:  {info.get('device', info.get('device_error'))}")
    print(f"driver:  {info['driver']}")
    print(f"torch:   {info.get('torch', '-')} (CUDA build {info.get('cuda_build')}, cuDNN {info.get('cudnn')})")
    print(f"triton:  {info['triton']}")
    print(f"python:  {info['python']}, {info['cpu_cores']} cpu cores")
    print("missing: " + (", ".join(f"{k} ({v})" for k, v in missing.items()) if missing
                         else f"none of {', '.join(DEPENDENCIES)}"))
    print(json.dumps(info), flush=True)
    return status


def nvidia_driver() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "no nvidia-smi on PATH"
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else \
        f"nvidia-smi exit {out.returncode}: {out.stderr.strip()[:200]}"


# ------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------
def tool_help(script: Path) -> str:
    """A tool's --help text (to pass only flags it has: tools land while this check is in use)."""
    try:
        out = subprocess.run([PYTHON, str(script), "--help"], capture_output=True, text=True, timeout=120,
                             cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout


def supported(help_text: str, flag: str) -> bool:
    return any(word.strip("[],") == flag for word in help_text.split())


def plan(args: argparse.Namespace, out: Path, facts: dict) -> list[Part]:
    """The parts for GPU or smoke mode. ``facts`` is filled by earlier parts (device name)."""
    smoke = args.smoke
    dev = "cpu" if smoke else "cuda"
    tools = REPO / "tools"
    demo = out / "demo"
    # Model sizes: production on the GPU, tiny on cpu. (name, backbone, crop) per benchmark model.
    psp = ("pspnet", "resnet18", "64") if smoke else ("pspnet", "resnet50", "513")
    batch, steps, warmup = ("2", "2", "0") if smoke else ("8", "20", "5")
    seed_models = {"psanet": ("resnet18", "64") if smoke else ("resnet50", "512,1024"),
                   "ccnet": ("resnet18", "65") if smoke else ("resnet101", "769")}
    threads = {"OMP_NUM_THREADS": "1"} if smoke else {}

    def bench(name: str, *flags: str, model=psp, stem=("--stem", "plain"), run_steps=steps, run_warmup=warmup):
        def command():
            jsonl = out / f"{name}.jsonl"
            jsonl.unlink(missing_ok=True)  # benchmark.py appends
            return [PYTHON, tools / "benchmark.py", "--device", dev, "--model_name", model[0], "--backbone",
                    model[1], *stem, "--crop_size", model[2], "--batch_size", batch, "--steps", run_steps,
                    "--warmup", run_warmup, "--json", jsonl, *flags]
        return command

    bf16_cl = ("--autocast", "True", "--amp_dtype", "bfloat16", "--channels_last", "True")

    def anchor_command():
        anchor = Path(args.anchor).expanduser()
        if not anchor.is_file():
            raise Refused(f"anchor not found at {anchor}; copy ../shared/bench/anchor_gpu.py beside the repo "
                          f"and pass --anchor PATH")
        if smoke:  # it calls .cuda() throughout: on cpu only its flags can be parsed
            return [PYTHON, anchor, "--help"]
        return [PYTHON, anchor, "--models", "psp_ref", "--modes", "bf16_cl,bf16_cl_compile",
                "--bs", batch, "--size", psp[2], "--steps", steps, "--warm", warmup]

    def compiled_command():
        if smoke:
            raise Skip("smoke: no torch.compile on cpu (minutes of compilation on 2 cores)")
        return bench("pspnet_bf16_compiled", *bf16_cl, "--compile", "True", "--mode", "train")()

    def e2e_command():
        data = demo if smoke else Path(args.data).expanduser()
        if not (data / "ImageSets" / "Segmentation" / "train.txt").is_file():
            raise Refused(f"no VOC-layout dataset at {data} (ImageSets/Segmentation/train.txt missing); "
                          f"pass --data DIR")
        return bench("pspnet_e2e", *bf16_cl, "--mode", "train,e2e", "--dataset_path", str(data),
                     run_steps="2" if smoke else "10", run_warmup="0" if smoke else "3")()

    def seed_model(name):
        backbone, crop = seed_models[name]
        return bench(name, *bf16_cl, "--mode", "train", model=(name, backbone, crop), stem=(),
                     run_steps="2" if smoke else "5", run_warmup="0" if smoke else "2")

    def bench_ops_command():
        cmd = [PYTHON, tools / "bench_ops.py", "--device", dev, "--ops", "psa,cc", "--impls", "kernel,portable"]
        if smoke:
            return cmd + ["--shape", "small", "--dtypes", "fp32,bf16", "--iters", "2", "--warmup", "1",
                          "--threads", "1"]
        bandwidth = next((v for k, v in PEAK_BANDWIDTH.items() if k in facts.get("device", "")), None)
        return cmd + ["--shape", "production", "--dtypes", "fp32,bf16,fp16", "--iters", "10", "--warmup", "3",
                      *(["--peak_bandwidth", str(bandwidth)] if bandwidth else [])]

    def optional_tool(script: str, flags: list, optional_flags: dict):
        def command():
            path = tools / script
            if not path.is_file():
                raise Skip(f"tool not present: tools/{script}")
            text = tool_help(path)
            extra = [w for flag, value in optional_flags.items() if supported(text, flag) for w in (flag, value)]
            return [PYTHON, path, *flags, *extra]
        return command

    # A layer comparison needs no production crop; the cpu side of it is the slow one.
    numerics_flags = {"--backbone": psp[1], "--num_classes": "21", "--crop_size": "64" if smoke else "257",
                      "--batch_size": "2", "--out_dir": str(out / "compare_numerics")}
    train_dir, eval_dir = out / "train_run", out / "eval_run"
    run_flags = ["--device", dev, "--distributed", "False", "--model_name", "pspnet", "--backbone", psp[1],
                 "--dataset", "voc", "--dataset_path", str(demo), "--crop_size", psp[2], "--batch_size", batch,
                 "--autocast", "True", "--amp_dtype", "bfloat16", "--workers", "0" if smoke else "8"]

    def train_command():
        shutil.rmtree(train_dir, ignore_errors=True)
        if supported(tool_help(REPO / "train.py"), "--iters"):
            length = ["--iters", "2" if smoke else str(TRAIN_ITERS)]
        else:  # until --iters lands: the demo set is 8 (smoke) or 48 images, 4 or 6 batches an epoch
            length = ["--epoch", "1" if smoke else str(math.ceil(TRAIN_ITERS / 6)), "--val_epoch", "100"]
        return [PYTHON, REPO / "run_scripts" / "run_pspnet.py", *run_flags, *length,
                "--work_dir", train_dir, "--print_interval", "1" if smoke else "5"]

    def eval_command():
        ckpts = sorted(train_dir.glob("latest_*.pth")) + sorted(train_dir.glob("best_*.pth"))
        if not ckpts:
            raise Skip(f"no checkpoint in {train_dir}: the train part did not finish")
        shutil.rmtree(eval_dir, ignore_errors=True)
        return [PYTHON, REPO / "run_scripts" / "run_pspnet.py", *run_flags, "--test_only", "True",
                "--ckpt", ckpts[0], "--work_dir", eval_dir]

    reference_steps = {"run_steps": steps if smoke else "10", "run_warmup": warmup if smoke else "3"}
    demo_flags = ["--num_train", "8", "--num_val", "5", "--size", "48", "64"] if smoke else []
    tests_env = {"SEG_TEST_DEVICE": dev, **threads}
    # (name, budget on the GPU in seconds, command, extra environment)
    parts = [
        ("env", 20, lambda: [PYTHON, Path(__file__).resolve(), "--env_report", dev], {}),
        ("data", 20, lambda: [PYTHON, tools / "make_demo_data.py", "--root", demo, *demo_flags], {}),
        ("tests", 90, lambda: [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                               REPO / "tests" / "test_ops_cuda.py", REPO / "tests" / "test_attention_models.py"],
         tests_env),
        ("bench_ops", 45, bench_ops_command, {}),
        ("anchor", 100, anchor_command, {}),
        ("pspnet_bf16_eager", 45, bench("pspnet_bf16_eager", *bf16_cl, "--mode", "train"), threads),
        ("pspnet_bf16_compiled", 90, compiled_command, threads),
        ("pspnet_e2e", 60, e2e_command, {}),
        # references, not targets: fewer steps
        ("pspnet_fp16", 30, bench("pspnet_fp16", "--autocast", "True", "--amp_dtype", "float16",
                                  "--channels_last", "True", "--mode", "train", **reference_steps), threads),
        ("pspnet_fp32", 30, bench("pspnet_fp32", "--autocast", "False", "--channels_last", "True",
                                  "--mode", "train", **reference_steps), threads),
        ("psanet", 30, seed_model("psanet"), threads),
        ("ccnet", 30, seed_model("ccnet"), threads),
        # its float64 reference runs on the cpu, at the production shapes too on a GPU
        ("check_ops", 60, optional_tool("check_ops.py", ["--device", dev, "--dtype", "all"], {}), threads),
        ("compare_numerics", 30, optional_tool(
            # smoke: float32 against itself must pass (a wiring check with a known answer)
            "compare_numerics.py", ["--model_name", "pspnet", "--a", "cpu:float32",
                                    "--b", "cpu:float32" if smoke else "cuda:bfloat16"], numerics_flags), threads),
        ("train", 45, train_command, threads),
        ("eval", 25, eval_command, threads),
    ]
    # On 2 shared cores every part is slow for reasons that say nothing about the wiring.
    return [Part(name, 300 if smoke else budget, command, env) for name, budget, command, env in parts]


def planned_commands(args: argparse.Namespace, out: Path) -> list[tuple[str, object]]:
    """(part, argv) for each selected part, or (part, 'skipped: ...' / 'error: ...') where it would
    not run; nothing is run but the --help of tools whose flags are looked up."""
    planned = []
    for part in plan(args, out, {}):
        if part.name in args.parts:
            try:
                planned.append((part.name, part.command()))
            except Skip as why:
                planned.append((part.name, f"skipped: {why}"))
            except Refused as why:
                planned.append((part.name, f"error: {why}"))
    return planned


PART_NAMES = ("env", "data", "tests", "bench_ops", "anchor", "pspnet_bf16_eager", "pspnet_bf16_compiled",
              "pspnet_e2e", "pspnet_fp16", "pspnet_fp32", "psanet", "ccnet", "check_ops", "compare_numerics",
              "train", "eval")


# ------------------------------------------------------------------------------------------
# running one part
# ------------------------------------------------------------------------------------------
def run_part(part: Part, out: Path, seconds_left: float) -> dict:
    """Run one part into OUT/<name>.log with timeout min(budget, seconds_left); the whole process
    group is killed on timeout (data-loader workers and compile workers included).
    Returns {part, status, seconds, log, rc, command}; status is ok / failed / timed out / skipped."""
    log = out / f"{part.name}.log"
    result = {"part": part.name, "log": log.name, "rc": None, "command": None, "seconds": 0.0}
    timeout = min(part.budget, seconds_left)
    if timeout < MIN_PART_SECONDS:
        log.write_text(f"skipped: out of time ({seconds_left:.0f} s left of the check's time limit)\n")
        return {**result, "status": "skipped", "reason": "out of time (--time_limit)"}
    try:
        argv = [str(a) for a in part.command()]
    except Skip as why:
        log.write_text(f"skipped: {why}\n")
        return {**result, "status": "skipped", "reason": str(why)}
    except Refused as why:
        log.write_text(f"error: {why}\n")
        return {**result, "status": "failed", "reason": str(why)}
    result["command"] = " ".join(argv)
    env = {**os.environ, **part.env}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)  # not a DDP worker, even when launched from one
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(f"$ {result['command']}\n")
        handle.flush()
        # cwd OUT_DIR: whatever a tool writes beside itself by default lands there, not in the repo
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=out, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        result["seconds"] = time.perf_counter() - start
        if rc is None:
            handle.write(f"\ntimed out after {timeout:.0f} s: killed\n")
    if rc is None:
        return {**result, "status": "timed out", "reason": f"past its {timeout:.0f} s budget"}
    status = "ok" if rc == 0 else "failed"
    return {**result, "rc": rc, "status": status, "reason": "" if rc == 0 else f"exit status {rc}"}


def json_lines(path: Path) -> list[dict]:
    """Every line of a file that parses as a JSON object (logs mix text and JSON lines)."""
    records = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return records


def last_line(path: Path, *needles: str) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()] \
        if path.is_file() else []
    matching = [ln for ln in lines if any(n in ln for n in needles)] if needles else lines
    return (matching or lines or [""])[-1][:160]


# ------------------------------------------------------------------------------------------
# figures and targets
# ------------------------------------------------------------------------------------------
def collect(results: list[dict], out: Path) -> dict:
    """Per part, its records (JSON lines) and a short 'key figures' text for the table."""
    records = {}
    for r in results:
        name = r["part"]
        if name.startswith(("pspnet_", "psanet", "ccnet")):
            recs = json_lines(out / f"{name}.jsonl")
        else:
            recs = json_lines(out / r["log"])
            if recs:
                (out / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
        records[name] = recs
        errors = [rec for rec in recs if "error" in rec] if name == "anchor" else []
        if errors and r["status"] == "ok":  # the anchor prints a mode's exception as a record and goes on
            r["status"], r["reason"] = "failed", f"mode {errors[0].get('mode')}: {errors[0]['error'][:120]}"
        r["figures"] = key_figures(name, recs, out / r["log"]) if r["status"] != "skipped" else r["reason"]
    return records


def key_figures(name: str, recs: list[dict], log: Path) -> str:
    if name == "env" and recs:
        info = recs[-1]
        missing = ", ".join(info.get("missing_dependencies", {})) or "none"
        return f"{info.get('device', '?')}; torch {info.get('torch')}; triton {info.get('triton')}; missing: {missing}"
    if name.startswith(("pspnet_", "psanet", "ccnet")) and recs:
        return "; ".join(f"{r['mode']} {r['images_per_s']:.1f} img/s"
                         + (f" {r['peak_memory_gib']:.2f} GiB" if r.get("peak_memory_gib") is not None else "")
                         + (f" {r['vs_synthetic']:.2f}x synthetic" if r.get("vs_synthetic") else "")
                         for r in recs)
    if name == "anchor" and not recs and log.read_text(errors="replace").split("\n", 1)[0].endswith(" --help"):
        return "flags parsed only (smoke: the anchor is CUDA-only)"
    if name == "anchor" and recs:
        return "; ".join(f"{r['mode']} {r['img_s']:.1f} img/s {r['mem_gb']:.2f} GiB" if "img_s" in r
                         else f"{r.get('mode')} error" for r in recs)
    if name == "bench_ops" and recs:
        speedups = kernel_speedups(recs)
        return "; ".join(f"{k} {v['speedup']:.2f}x" for k, v in speedups.items()) or \
            f"{len(recs)} rows, no kernel rows"
    if name == "tests":
        return last_line(log, "passed", "failed", "skipped", "error")
    return last_line(log)


def kernel_speedups(rows: list[dict]) -> dict:
    """{'psa_mask collect bf16': {speedup (portable/kernel fwd+bwd ms), memory (kernel/portable)}}"""
    by_key = {}
    for r in rows:
        by_key.setdefault((r["op"], r["case"].split()[0], r["dtype"]), {})[r["impl"]] = r
    speedups = {}
    for (op, case, dtype), impls in by_key.items():
        if "kernel" in impls and "portable" in impls:
            k, p = impls["kernel"], impls["portable"]
            speedups[f"{op} {case} {dtype}"] = {
                "speedup": p["fwd_bwd_ms"] / k["fwd_bwd_ms"], "kernel_ms": k["fwd_bwd_ms"],
                "portable_ms": p["fwd_bwd_ms"], "kernel_MiB": k["peak_mem_MiB"],
                "portable_MiB": p["peak_mem_MiB"]}
    return speedups


def first(recs: list[dict], **match) -> dict | None:
    return next((r for r in recs if all(r.get(k) == v for k, v in match.items())), None)


def target(name: str, ours, reference, needed: float, higher_is_better: bool, unit: str, why_missing: str = "",
           sources: tuple = ()):
    """A target row: ratio = ours / reference, met when >= needed (or <= for lower-is-better).
    ``sources`` (ours' part, the reference's part) name the parts a missing figure should come from."""
    if ours is None or reference is None or not reference:
        if not why_missing and sources:
            absent = [p for p, v in zip(sources, (ours, reference)) if v is None or not v]
            why_missing = "none from " + " and ".join(absent)
        return {"target": name, "ours": ours, "reference": reference, "ratio": None, "needed": needed,
                "verdict": f"no figure{': ' + why_missing if why_missing else ''}", "unit": unit}
    ratio = ours / reference
    met = ratio >= needed if higher_is_better else ratio <= needed
    return {"target": name, "ours": ours, "reference": reference, "ratio": ratio, "needed": needed,
            "verdict": "met" if met else "missed", "unit": unit}


def targets(records: dict) -> list[dict]:
    rows = []
    ops = kernel_speedups(records.get("bench_ops", []))
    kernel_keys = [k for k in ops if k.split()[-1] in ("float32", "bfloat16")]
    for key in kernel_keys:
        v = ops[key]
        rows.append(target(f"kernel {key}: fwd+bwd >= 2x portable (portable ms / kernel ms)",
                           v["portable_ms"], v["kernel_ms"], 2.0, True, "ms"))
        rows.append(target(f"kernel {key}: memory <= portable (kernel MiB / portable MiB)",
                           v["kernel_MiB"], v["portable_MiB"], 1.0, False, "MiB"))
    if not kernel_keys:
        rows.append(target("kernels fwd+bwd >= 2x portable in bf16 and fp32", None, None, 2.0, True, "ms",
                           "no kernel rows from bench_ops (no Triton kernel on this device, or the part failed)"))
    anchor = records.get("anchor", [])
    anchor_eager, anchor_compiled = first(anchor, mode="bf16_cl"), first(anchor, mode="bf16_cl_compile")
    eager = first(records.get("pspnet_bf16_eager", []), mode="train")
    compiled = first(records.get("pspnet_bf16_compiled", []), mode="train")
    e2e_run = records.get("pspnet_e2e", [])

    def get(rec, key):
        return None if rec is None else rec.get(key)

    rows.append(target("PSPNet50 bf16+cl eager >= anchor eager (img/s)", get(eager, "images_per_s"),
                       get(anchor_eager, "img_s"), 1.0, True, "img/s",
                       sources=("pspnet_bf16_eager", "anchor")))
    rows.append(target("PSPNet50 bf16+cl compiled >= 1.3x anchor compiled (img/s)", get(compiled, "images_per_s"),
                       get(anchor_compiled, "img_s"), 1.3, True, "img/s",
                       sources=("pspnet_bf16_compiled", "anchor")))
    rows.append(target("PSPNet50 eager peak memory <= anchor eager (GiB)", get(eager, "peak_memory_gib"),
                       get(anchor_eager, "mem_gb"), 1.0, False, "GiB",
                       sources=("pspnet_bf16_eager", "anchor")))
    rows.append(target("PSPNet50 compiled peak memory <= anchor compiled (GiB)", get(compiled, "peak_memory_gib"),
                       get(anchor_compiled, "mem_gb"), 1.0, False, "GiB",
                       sources=("pspnet_bf16_compiled", "anchor")))
    rows.append(target("PSPNet50 end to end >= 90% of synthetic (img/s)",
                       get(first(e2e_run, mode="e2e"), "images_per_s"),
                       get(first(e2e_run, mode="train"), "images_per_s"), 0.9, True, "img/s",
                       sources=("pspnet_e2e", "pspnet_e2e")))
    return rows


# ------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------
def table(rows: list[tuple], header: tuple) -> str:
    rows = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines[:1]))
    return "\n".join(lines)


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def summary_text(results: list[dict], target_rows: list[dict], smoke: bool) -> str:
    parts = table([(r["part"], r["status"] + (f" ({r['reason']})" if r["status"] in ("failed", "timed out")
                                              else ""), f"{r['seconds']:.1f}", r.get("figures", ""))
                   for r in results], ("part", "status", "seconds", "key figures"))
    goals = table([(t["target"], fmt(t["ours"]), fmt(t["reference"]), fmt(t["ratio"]), t["needed"], t["verdict"])
                   for t in target_rows], ("target", "ours", "reference", "ratio", "needed", "verdict"))
    note = ("\n(smoke run: cpu figures at tiny shapes; the verdicts prove the wiring, not the GPU targets)"
            if smoke else "")
    return f"{parts}\n\nTargets (one GPU, H100/H200 class)\n{goals}{note}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("out_dir", nargs="?", help="folder for every part's log, JSON lines and summary.json")
    parser.add_argument("--anchor", default=str(DEFAULT_ANCHOR), help="the plain-PyTorch anchor anchor_gpu.py")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="VOC-layout CamVid for the end-to-end part")
    parser.add_argument("--smoke", action="store_true", help="every part on cpu at tiny shapes")
    parser.add_argument("--parts", default=",".join(PART_NAMES), help="comma-separated subset of the parts")
    parser.add_argument("--time_limit", type=float, default=None,
                        help=f"seconds for the whole check (default {TIME_LIMIT}, smoke {SMOKE_TIME_LIMIT}); "
                             f"parts that would start with less than {MIN_PART_SECONDS} s left are skipped")
    parser.add_argument("--dry_run", action="store_true", help="print each part's command (or why it would be "
                                                                   "skipped) and exit; runs nothing but --help")
    parser.add_argument("--env_report", metavar="DEVICE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.env_report:
        return args
    if not args.out_dir:
        parser.error("OUT_DIR is required")
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PART_NAMES]
    if unknown or not wanted:
        parser.error(f"--parts {args.parts!r}: unknown part {', '.join(unknown) or '(none)'}; "
                     f"choose from {','.join(PART_NAMES)}")
    args.parts = wanted
    # Parts run in OUT_DIR: paths the user gave relative to where they are must not change meaning.
    args.anchor, args.data = (str(Path(p).expanduser().resolve()) for p in (args.anchor, args.data))
    if args.time_limit is None:
        args.time_limit = SMOKE_TIME_LIMIT if args.smoke else TIME_LIMIT
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.env_report:
        return env_report(args.env_report)
    out = Path(args.out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        print(f"error: OUT_DIR {out} exists and is not a folder; pick another path", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        for name, command in planned_commands(args, out):
            print(f"[{name}] {command if isinstance(command, str) else ' '.join(map(str, command))}")
        return 0
    start = time.perf_counter()
    facts: dict = {}
    results = []
    print(f"gpu_check: {'smoke (cpu, tiny shapes)' if args.smoke else 'GPU'} run into {out}, "
          f"time limit {args.time_limit:.0f} s", flush=True)
    for part in plan(args, out, facts):
        if part.name not in args.parts:
            continue
        result = run_part(part, out, args.time_limit - (time.perf_counter() - start))
        results.append(result)
        if part.name == "env":
            # Versions first, as the report's header; the device name picks bench_ops' bandwidth.
            print((out / result["log"]).read_text(errors="replace").split("\n", 1)[-1], end="", flush=True)
            env = json_lines(out / result["log"])
            facts.update(env[-1] if env else {})
        print(f"[{part.name}] {result['status']}{' (' + result['reason'] + ')' if result.get('reason') else ''}"
              f" {result['seconds']:.1f} s -> {out / result['log']}", flush=True)
    records = collect(results, out)
    target_rows = targets(records)
    print()
    print(summary_text(results, target_rows, args.smoke))
    total = time.perf_counter() - start
    print(f"\ntotal {total:.1f} s; logs and JSON lines in {out}", flush=True)
    summary = {"mode": "smoke" if args.smoke else "gpu", "time_limit_s": args.time_limit, "total_seconds": total,
               "environment": facts, "parts": results, "targets": target_rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 1 if any(r["status"] in ("failed", "timed out") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
