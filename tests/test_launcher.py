"""The launcher (runtime/launch.py behind run_scripts/run_*.py): commands it builds, flag checks,
exit statuses and signal forwarding. Nothing here trains a model; children are tiny scripts."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from segzoo.engine import launch
from segzoo.engine.config import parse_train_args
from segzoo.runtime.device import DEVICE_TYPES
from segzoo.runtime.errors import UserError
from tests.helpers import REPO, expect_user_exit, free_port, run_launcher

PY = "/usr/bin/python-for-test"  # build_command's interpreter, so commands compare as plain lists


def base_flags(tmp_path: Path) -> list:
    """Flags every launch needs; the work dir is private so no earlier run's checkpoints interfere."""
    return ["--device", "cpu", "--dataset", "demo", "--dataset_path", str(tmp_path / "demo"),
            "--work_dir", str(tmp_path / "work"), "--backbone", "resnet18"]


def command_for(argv: list) -> list:
    launch_args, train_argv = launch.split_argv(argv)
    return launch.build_command(launch_args, train_argv, python=PY)


def value_after(cmd: list, flag: str) -> str:
    assert cmd.count(flag) == 1, f"{flag} appears {cmd.count(flag)} times in {cmd}"
    return cmd[cmd.index(flag) + 1]


def printed_command(out: str) -> list:
    """The command the launcher echoes as '+ cmd'."""
    lines = [line for line in out.splitlines() if line.startswith("+ ")]
    assert len(lines) == 1, out
    return shlex.split(lines[0][2:])


@pytest.fixture
def no_child(monkeypatch):
    """Fail the test if the launcher tries to start anything."""
    def refuse(cmd, env):
        raise AssertionError(f"the launcher started {cmd}")
    monkeypatch.setattr(launch, "run_child", refuse)


# ------------------------------------------------------------------------------------------
# command building
# ------------------------------------------------------------------------------------------
def test_single_process_runs_train_py_with_the_flags_as_given(tmp_path):
    flags = base_flags(tmp_path) + ["--crop_size", "48", "--epoch", "1"]
    assert command_for(flags) == [PY, str(launch.TRAIN_PY), *flags]


def test_one_node_multi_process_goes_through_torchrun(tmp_path):
    train_flags = base_flags(tmp_path) + ["--crop_size", "48"]
    cmd = command_for(["--distributed", "True", "--nproc_per_node", "2", "--master_port", "29611", *train_flags])
    assert cmd == [PY, str(launch.TORCHRUN_PY), "--nproc_per_node", "2", "--nnodes", "1", "--node_rank", "0",
                   "--master_addr", "127.0.0.1", "--master_port", "29611", str(launch.TRAIN_PY), *train_flags]


def test_multi_node_command_keeps_the_given_node_rank(tmp_path, capsys, no_child):
    argv = ["--distributed", "True", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "2",
            "--master_addr", "host0", "--master_port", "29612", "--dry_run", "True", *base_flags(tmp_path)]
    assert launch.main(argv) == 0
    cmd = printed_command(capsys.readouterr().out)
    assert value_after(cmd, "--node_rank") == "1"
    assert value_after(cmd, "--nnodes") == "2"
    assert value_after(cmd, "--nproc_per_node") == "2"
    assert value_after(cmd, "--master_addr") == "host0"
    assert value_after(cmd, "--master_port") == "29612"
    assert cmd[1] == str(launch.TORCHRUN_PY)


def test_test_only_command_forwards_the_checkpoint(tmp_path, capsys, no_child):
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(b"the launcher only checks that the file exists")
    argv = [*base_flags(tmp_path), "--test_only", "True", "--ckpt", str(ckpt), "--dry_run", "True"]
    assert launch.main(argv) == 0
    cmd = printed_command(capsys.readouterr().out)
    assert cmd[1] == str(launch.TRAIN_PY)
    assert value_after(cmd, "--test_only") == "True"
    assert value_after(cmd, "--ckpt") == str(ckpt)


@pytest.mark.parametrize("word, expected", [("True", True), ("False", False), ("true", True), ("false", False),
                                            ("1", True), ("0", False)])
def test_boolean_words(word, expected):
    launch_args, train_argv = launch.split_argv(["--distributed", word, "--device", "cpu", "--compile", word])
    assert launch_args.distributed is expected
    assert train_argv == ["--device", "cpu", "--compile", word]
    args = parse_train_args(train_argv + ["--dataset", "demo"])
    assert args.compile is expected


def test_a_boolean_that_is_not_a_boolean_word_is_refused():
    with pytest.raises(UserError, match="--distributed"):
        launch.split_argv(["--distributed", "maybe"])


def test_flags_are_forwarded_unchanged_in_both_spellings(tmp_path):
    train_flags = ["--crop_size=48", "--batch_size", "4", "--lr=0.02", "--work_dir", str(tmp_path),
                   "--device=cpu", "--dataset", "demo"]
    argv = ["--distributed=True", train_flags[0], "--nproc_per_node", "2", *train_flags[1:3],
            "--master_port=29613", *train_flags[3:5], "--nnodes=1", *train_flags[5:]]
    launch_args, forwarded = launch.split_argv(argv)
    assert forwarded == train_flags
    assert (launch_args.distributed, launch_args.nproc_per_node, launch_args.master_port, launch_args.nnodes) == \
        (True, 2, 29613, 1)
    cmd = launch.build_command(launch_args, forwarded, python=PY)
    assert cmd[-len(train_flags):] == train_flags


def test_the_script_default_model_is_added_only_when_no_model_is_given(tmp_path, capsys, no_child):
    assert launch.main([*base_flags(tmp_path), "--dry_run", "True"], default_model="encnet") == 0
    assert value_after(printed_command(capsys.readouterr().out), "--model_name") == "encnet"
    assert launch.main([*base_flags(tmp_path), "--model_name=deeplabv3", "--dry_run", "True"],
                       default_model="encnet") == 0
    cmd = printed_command(capsys.readouterr().out)
    assert "--model_name=deeplabv3" in cmd and "--model_name" not in cmd


def test_a_config_file_model_overrides_the_script_default(tmp_path, capsys, no_child):
    config = tmp_path / "run.yaml"
    config.write_text("model_name: deeplabv3\n")
    assert launch.main([*base_flags(tmp_path), "--config", str(config), "--dry_run", "True"],
                       default_model="pspnet") == 0
    assert value_after(printed_command(capsys.readouterr().out), "--model_name") == "deeplabv3"


def test_dry_run_prints_and_starts_nothing(tmp_path):
    result = run_launcher(*base_flags(tmp_path), "--distributed", "True", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "--dry_run", "True", timeout=60)
    assert result.rc == 0, result.describe()
    cmd = printed_command(result.stdout)
    assert cmd[1] == str(launch.TORCHRUN_PY) and cmd[-len(base_flags(tmp_path)):] == base_flags(tmp_path)
    assert result.stdout.strip().count("\n") == 0, "a dry run prints the command and nothing else"
    assert not (tmp_path / "work").exists() and not (tmp_path / "demo").exists()


def test_help_lists_launch_and_train_flags(capsys):
    assert launch.main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--distributed", "--nproc_per_node", "--node_rank", "--dry_run", "--crop_size", "--model_name",
                 "--continue_training"):
        assert flag in out


def test_help_from_the_script():
    result = run_launcher("--help", timeout=60)
    assert result.rc == 0 and "--nproc_per_node" in result.stdout and "--crop_size" in result.stdout, \
        result.describe()
    assert result.stderr.strip() == ""


# ------------------------------------------------------------------------------------------
# impossible combinations and missing resources, caught before anything starts
# ------------------------------------------------------------------------------------------
def test_several_processes_need_distributed(tmp_path, capsys, no_child):
    expect_user_exit(capsys, [*base_flags(tmp_path), "--nproc_per_node", "2"], "--nproc_per_node 2",
                     "--distributed True")
    expect_user_exit(capsys, [*base_flags(tmp_path), "--nnodes", "2"], "--nnodes 2", "--distributed True")


@pytest.mark.parametrize("node_rank", ["2", "3"])
def test_node_rank_must_be_below_nnodes(tmp_path, capsys, no_child, node_rank):
    expect_user_exit(capsys, [*base_flags(tmp_path), "--distributed", "True", "--nnodes", "2",
                              "--node_rank", node_rank], f"--node_rank {node_rank}", "--nnodes 2")


@pytest.fixture
def one_cuda_device(monkeypatch):
    """Pretend this machine has exactly one cuda device."""
    monkeypatch.setattr(launch, "device_type", lambda name: DEVICE_TYPES[name])
    monkeypatch.setattr(launch, "device_count", lambda name: 1 if name == "cuda" else 0)


def test_more_processes_than_devices(tmp_path, capsys, no_child, one_cuda_device):
    flags = ["--device", "cuda", *base_flags(tmp_path)[2:], "--distributed", "True",
             "--master_port", str(free_port())]
    expect_user_exit(capsys, [*flags, "--nproc_per_node", "2"], "--nproc_per_node 2", "only 1 cuda device")
    # One process per device present is fine.
    assert launch.main([*flags, "--nproc_per_node", "1", "--dry_run", "True"]) == 0
    assert value_after(printed_command(capsys.readouterr().out), "--nproc_per_node") == "1"


def test_master_port_in_use(tmp_path, capsys, no_child):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        flags = [*base_flags(tmp_path), "--distributed", "True", "--nproc_per_node", "2", "--master_port", port]
        expect_user_exit(capsys, flags, f"--master_port {port}", "in use")
        # Only the master (node_rank 0) binds the port; another node must not check its own machine.
        assert launch.main([*flags, "--nnodes", "2", "--node_rank", "1", "--dry_run", "True"]) == 0
        capsys.readouterr()


# ------------------------------------------------------------------------------------------
# exit statuses
# ------------------------------------------------------------------------------------------
def write_script(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def test_run_child_returns_the_child_status():
    env = dict(os.environ)
    assert launch.run_child([sys.executable, "-c", "import sys; sys.exit(2)"], env) == 2
    assert launch.run_child([sys.executable, "-c", "pass"], env) == 0


def test_a_failing_train_script_status_comes_back_through_the_launcher(tmp_path, capfd, monkeypatch):
    script = write_script(tmp_path / "fail.py", """
        import sys
        print("error: pretend bad input", file=sys.stderr)
        sys.exit(2)
    """)
    monkeypatch.setattr(launch, "TRAIN_PY", script)
    assert launch.main(base_flags(tmp_path)) == 2
    assert "error: pretend bad input" in capfd.readouterr().err


@pytest.mark.slow
def test_a_failing_worker_status_comes_back_through_torchrun(tmp_path, capfd, monkeypatch):
    # Rank 1 fails at once; rank 0 sleeps, then leaves a mark, unless torchrun stops it first.
    finished = tmp_path / "rank0_finished"
    script = write_script(tmp_path / "worker.py", f"""
        import os, sys, time
        if os.environ["RANK"] == "1":
            print("error: pretend bad input on rank 1", file=sys.stderr, flush=True)
            sys.exit(2)
        time.sleep(30)
        open({str(finished)!r}, "w").close()
    """)
    monkeypatch.setattr(launch, "TRAIN_PY", script)
    argv = [*base_flags(tmp_path), "--distributed", "True", "--nproc_per_node", "2",
            "--master_port", str(free_port())]
    assert launch.main(argv) == 2
    assert not finished.exists(), "torchrun let the other rank run on after a rank failed"
    err = capfd.readouterr().err
    assert "error: pretend bad input on rank 1" in err
    assert "error: worker rank 1" in err and "exited with status 2" in err, err
    assert "Traceback" not in err, err


# ------------------------------------------------------------------------------------------
# Ctrl-C / SIGTERM forwarding
# ------------------------------------------------------------------------------------------
LAUNCHER_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from segzoo.engine.launch import run_child
child = ("import os, sys, time\\n"
         "tmp = sys.argv[1] + '.tmp'\\n"
         "open(tmp, 'w').write(str(os.getpid()))\\n"
         "os.replace(tmp, sys.argv[1])\\n"
         "time.sleep(120)\\n")
sys.exit(run_child([sys.executable, "-c", child, {pid_file!r}], dict(__import__("os").environ)))
"""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_reach_the_child_and_the_status_is_128_plus_signal(tmp_path, signum):
    pid_file = tmp_path / "child.pid"
    script = write_script(tmp_path / "launcher.py", LAUNCHER_SCRIPT.format(repo=str(REPO), pid_file=str(pid_file)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child_pid = None
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            assert proc.poll() is None, f"the launcher exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        assert process_alive(child_pid)
        proc.send_signal(signum)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher did not exit within 30 s of {signum.name}")
        assert proc.returncode == 128 + signum, proc.communicate()
        assert not process_alive(child_pid), "the child outlived the launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child_pid is not None and process_alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()
