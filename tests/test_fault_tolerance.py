"""Fault tolerance (issue 9): kills at random moments, preemption signals, concurrent runs,
stale locks and temporary files, full disks, non-finite losses and validation, and the launcher's
dry run on machines without the devices.

The end-to-end tests train resnet18 PSPNet on the tiny demo data (8 train images, batch 4: 2
iterations per epoch) with --deterministic True and compare final weights bit for bit with an
uninterrupted run of the same flags."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from segzoo.runtime.atomic import atomic_write, remove_temp_files
from segzoo.runtime.errors import UserError
from segzoo.runtime.lock import LOCK_NAME, WorkDirLock
from segzoo.runtime.signals import GracefulStop, Preempted
from tests.helpers import (LAUNCHER, TINY_RUN, TRAIN_PY, assert_one_line_error, ckpt_name, free_port,
                           log_records, logged_values, run_process, run_train)

ITERS = 10
# Exact resume: the data position and the RNG seeds follow the step; a checkpoint every iteration.
EXACT = ("--deterministic", "True", "--iters", str(ITERS), "--save_interval", "1", "--val_interval", "4",
         "--print_interval", "1", "--auto_resume", "True")


def train_cmd(dataset, work, *flags) -> list:
    return [sys.executable, str(TRAIN_PY), *TINY_RUN, "--dataset_path", str(dataset), "--work_dir", str(work),
            *flags]


def child_env() -> dict:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


class Watched:
    """A subprocess whose merged output is collected by a thread; wait_for(text) blocks until a
    line holding `text` appears (or the process ends)."""

    def __init__(self, cmd: list):
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=child_env())
        self.out, self.err = [], []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, sink):
        for line in stream:
            sink.append(line)

    def wait_for(self, text: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.out)):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader threads drain
                return any(text in line for line in list(self.out))
            time.sleep(0.02)
        return False

    def finish(self, timeout: float = 180) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"did not finish in {timeout} s:\n{''.join(self.out)[-2000:]}\n{''.join(self.err)[-2000:]}")
        for t in self._threads:
            t.join(timeout=10)
        return code

    def describe(self) -> str:
        return f"rc={self.proc.returncode}\n{''.join(self.out)[-3000:]}\n--- stderr ---\n{''.join(self.err)[-3000:]}"


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def temp_files(work: Path) -> list:
    return sorted(p.name for p in work.rglob("*.tmp"))


def with_iters(flags, iters: int) -> list:
    flags = list(flags)
    flags[flags.index("--iters") + 1] = str(iters)
    return flags


def uninterrupted(tiny_dataset, work: Path, flags) -> dict:
    result = run_process(train_cmd(tiny_dataset, work, *flags), timeout=300)
    assert result.rc == 0, result.describe()
    return {"work": work, "latest": load(work / ckpt_name("latest")), "best": load(work / ckpt_name("best"))}


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory) -> dict:
    """The uninterrupted run every interrupted one must equal."""
    return uninterrupted(tiny_dataset, tmp_path_factory.mktemp("reference"), EXACT)


KILL_ITERS = 24  # long enough that 10 kills happen before the run can finish


@pytest.fixture(scope="module")
def kill_reference(tiny_dataset, tmp_path_factory) -> dict:
    return uninterrupted(tiny_dataset, tmp_path_factory.mktemp("kill_reference"), with_iters(EXACT, KILL_ITERS))


# ------------------------------------------------------------------------------------------
# 1: kill -9 at random moments, then --auto_resume: the final weights of an uninterrupted run
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_at_random_moments_then_auto_resume_equals_an_uninterrupted_run(kill_reference, tiny_dataset,
                                                                              tmp_path):
    work = tmp_path / "killed"
    flags = with_iters(EXACT, KILL_ITERS)
    reference = kill_reference
    rng = random.Random(1234)
    kills, during_write, lost, saved_before = 0, 0, [], 0
    for attempt in range(40):
        if kills >= 10:
            break
        run = Watched(train_cmd(tiny_dataset, work, *flags))
        # Half the kills hit a checkpoint write (a temporary file exists), the others a random
        # moment after training started (forward, backward, validation, logging).
        hit_write = kills % 2 == 0
        if not run.wait_for("iter ", timeout=120):
            assert run.finish() == 0, run.describe()
            break
        if hit_write:
            deadline = time.monotonic() + 30
            while not temp_files(work) and run.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            time.sleep(rng.uniform(0.0, 1.0))
        if run.proc.poll() is not None:
            assert run.finish() == 0, run.describe()
            break
        progress = max([int(line.split()[1].split("/")[0]) for line in run.out if line.startswith("iter ")],
                       default=0)
        run.proc.send_signal(signal.SIGKILL)
        run.finish()
        kills += 1
        during_write += bool(temp_files(work)) and hit_write
        # What --auto_resume continues from: the newer of latest and best (best is written first).
        saved = max([load(work / ckpt_name(kind))["global_step"] for kind in ("latest", "best")
                     if (work / ckpt_name(kind)).exists()], default=0)
        lost.append(progress - saved)
        assert (work / LOCK_NAME).exists(), "a killed run leaves its lock file (taken over by the next run)"
        saved_before = saved
    else:
        pytest.fail("the run never finished")
    final = Watched(train_cmd(tiny_dataset, work, *flags))
    assert final.finish() == 0, final.describe()
    assert kills >= 10, f"only {kills} kills happened before the run finished"
    assert during_write >= 3, f"only {during_write} kills hit a checkpoint write"
    assert max(lost) <= 1, f"a kill lost {max(lost)} iterations with --save_interval 1"
    assert temp_files(work) == [], "temporary files of killed writes were not removed"
    assert not (work / LOCK_NAME).exists(), "the finished run released its lock"
    assert_same_weights(load(work / ckpt_name("latest")), reference["latest"])
    assert_same_weights(load(work / ckpt_name("best")), reference["best"])
    # The log has each iteration once, in order, though killed runs logged some of them before.
    steps = [step[1] for step, _ in logged_values(work / "train_log.json", "train.loss")]
    assert steps == list(range(1, KILL_ITERS + 1))
    print(f"kills {kills} (during a checkpoint write {during_write}), most iterations lost by one kill "
          f"{max(lost)}, lost per kill {lost}, saved before the last kill {saved_before}")


# ------------------------------------------------------------------------------------------
# 2: SIGTERM / SIGINT mid-epoch: finish the step, write latest, exit 143 / 130, one line
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_saves_latest_and_auto_resume_equals_an_uninterrupted_run(reference, tiny_dataset,
                                                                                  tmp_path, signum):
    work = tmp_path / "preempted"
    flags = [f for f in EXACT]
    flags[flags.index("--save_interval") + 1] = "100"  # the stop alone must write latest
    run = Watched(train_cmd(tiny_dataset, work, *flags))
    assert run.wait_for("iter 3/", timeout=180), run.describe()  # iteration 3: mid-epoch (2 per epoch)
    run.proc.send_signal(signum)
    assert run.finish() == 128 + signum, run.describe()
    err = [line for line in run.err if line.strip()]
    assert len(err) == 1 and f"stopped by {signum.name} at iteration" in err[0], run.describe()
    assert "Traceback" not in "".join(run.err)
    stopped_at = load(work / ckpt_name("latest"))["global_step"]
    assert 3 <= stopped_at < ITERS and f"iteration {stopped_at}:" in err[0]
    assert temp_files(work) == [] and not (work / LOCK_NAME).exists()
    resumed = run_process(train_cmd(tiny_dataset, work, *flags), timeout=300)
    assert resumed.rc == 0, resumed.describe()
    assert f"{stopped_at} iterations done" in resumed.stdout
    assert_same_weights(load(work / ckpt_name("latest")), reference["latest"])


@pytest.mark.slow
def test_a_second_signal_exits_at_once(tiny_dataset, tmp_path):
    work = tmp_path / "twice"
    run = Watched(train_cmd(tiny_dataset, work, "--iters", "200", "--print_interval", "1", "--save_interval", "1"))
    assert run.wait_for("iter 1/", timeout=180), run.describe()
    # Wait for a checkpoint write, then signal twice: the write is abandoned, its temp file removed.
    deadline = time.monotonic() + 60
    while not temp_files(work) and time.monotonic() < deadline:
        time.sleep(0.002)
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # two signals of one kind sent at once can merge into one delivery
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=60) == 130, run.describe()
    err = [line for line in run.err if line.strip()]
    assert len(err) == 1 and "second SIGINT" in err[0], run.describe()
    assert temp_files(work) == []


# ------------------------------------------------------------------------------------------
# 3: one run per work dir
# ------------------------------------------------------------------------------------------
def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = WorkDirLock(tmp_path).acquire()
    try:
        with pytest.raises(UserError, match=rf"PID {os.getpid()} on "):
            WorkDirLock(tmp_path).acquire()
    finally:
        first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    WorkDirLock(tmp_path).acquire().release()  # free again


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    # What kill -9 leaves: the file with the dead owner's record, no flock on it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": "here"}))
    lock = WorkDirLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_two_concurrent_runs_into_one_work_dir(tiny_dataset, tmp_path):
    work = tmp_path / "shared"
    first = Watched(train_cmd(tiny_dataset, work, "--iters", "200", "--print_interval", "1",
                              "--save_interval", "1000", "--val_interval", "1000"))
    try:
        assert first.wait_for("iter 1/", timeout=180), first.describe()
        second = run_process(train_cmd(tiny_dataset, work, "--iters", "2", "--overwrite", "True"), timeout=180)
        line = assert_one_line_error(second, f"PID {first.proc.pid}", "in use by another run")
        assert "--work_dir" in line
        assert first.proc.poll() is None, "the first run must go on"
    finally:
        first.proc.send_signal(signal.SIGTERM)
        assert first.finish() == 143, first.describe()


# ------------------------------------------------------------------------------------------
# 4: temporary files, disk full, best never lost or non-finite
# ------------------------------------------------------------------------------------------
def test_temporary_files_of_killed_writes_are_found_and_removed(tmp_path):
    target = tmp_path / "latest_x.pth"
    (tmp_path / f".{target.name}.4242.deadbeef.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "keep.tmp.txt").write_text("not ours")
    atomic_write(target, lambda f: f.write(b"whole"))
    assert remove_temp_files(tmp_path) == [f".{target.name}.4242.deadbeef.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp.txt", "latest_x.pth"]


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "best.pth"
    target.write_bytes(b"old best")

    def interrupted(file):
        file.write(b"half")
        raise Preempted(signal.SIGTERM)

    with pytest.raises(Preempted):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"old best" and list(tmp_path.iterdir()) == [target]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount permission, e.g. not in an unprivileged container)."""
    mount = tmp_path / "tiny_disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill up ({proc.stderr.strip() or proc.returncode}); "
                    f"the disk-full path is then untested")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_stops_before_writing_and_says_how_much_is_needed(tiny_dataset, tiny_tmpfs):
    work = tiny_tmpfs / "run"
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--iters", "1", timeout=180)
    line = assert_one_line_error(result, f"--work_dir {work}", "free, a checkpoint needs about", "MiB")
    assert temp_files(tiny_tmpfs) == [] and not list(work.glob("*.pth"))


def test_check_room_and_a_write_that_fills_the_disk(tmp_path, monkeypatch):
    import errno
    from collections import namedtuple

    from segzoo.runtime import checkpoint as ckpt_mod
    from segzoo.runtime import diskspace
    state = {"model": {"w": torch.zeros(1024, 1024)}}  # 4 MiB of tensors
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda _: usage(10 << 20, 9 << 20, 1 << 20))
    with pytest.raises(UserError, match=r"only 1.0 MiB free, a checkpoint needs about 5.2 MiB"):
        ckpt_mod.save_checkpoint(state, tmp_path / "latest.pth")
    monkeypatch.undo()

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_mod.torch, "save", no_space)
    (tmp_path / "latest.pth").write_bytes(b"previous")
    with pytest.raises(UserError, match="the disk filled up while writing latest.pth"):
        ckpt_mod.save_checkpoint(state, tmp_path / "latest.pth")
    assert (tmp_path / "latest.pth").read_bytes() == b"previous" and temp_files(tmp_path) == []


@pytest.mark.slow
def test_a_diverged_model_is_never_best_and_no_minus_100(tiny_dataset, tmp_path):
    work = tmp_path / "diverged"
    # An lr of 1e30 makes the loss non-finite within a step or two; --skip_nonfinite keeps going.
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--iters", "4",
                       "--val_interval", "2", "--print_interval", "1", "--lr", "1e30", "--skip_nonfinite", "4",
                       timeout=240)
    assert result.rc == 0, result.describe()
    assert "step skipped" in result.stdout
    first = [r["data"]["train.nonfinite_step"] for r in log_records(work / "train_log.json")
             if "train.nonfinite_step" in r["data"]]
    assert first and first[0] >= 1, "the log records the iteration of the first non-finite loss"
    assert "-100.00" not in result.stdout
    if not (work / ckpt_name("best")).exists():
        assert "best mIoU n/a" in result.stdout
    else:
        assert torch.isfinite(torch.tensor(load(work / ckpt_name("best"))["best_miou"]))


# ------------------------------------------------------------------------------------------
# 6: non-finite loss without --skip_nonfinite: one line, the iteration, advice that applies
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_nan_loss_stops_with_one_line_naming_the_iteration(tiny_dataset, tmp_path):
    work = tmp_path / "nan"
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--iters", "6",
                       "--print_interval", "3", "--lr", "1e30", timeout=240)
    line = assert_one_line_error(result, "first non-finite at iteration", "--skip_nonfinite", status=3)
    assert "--autocast False" not in line, "autocast is off: that advice does not apply"
    recorded = [r["data"]["train.nonfinite_step"] for r in log_records(work / "train_log.json")
                if "train.nonfinite_step" in r["data"]]
    assert len(recorded) == 1


# ------------------------------------------------------------------------------------------
# signals and the launcher
# ------------------------------------------------------------------------------------------
def test_graceful_stop_flags_the_first_signal_and_raises_on_the_second():
    stop = GracefulStop().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and stop.exit_code == 143
        with pytest.raises(Preempted) as exc:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert exc.value.exit_code == 143
    finally:
        stop.restore()


@pytest.mark.slow
def test_kill_9_of_the_launcher_leaves_no_training_process(tiny_dataset, tmp_path):
    work = tmp_path / "orphan"
    run = Watched([sys.executable, LAUNCHER, *TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work,
                   "--iters", "500", "--print_interval", "1", "--save_interval", "1000", "--val_interval", "1000"])
    assert run.wait_for("iter 1/", timeout=180), run.describe()
    children = Path(f"/proc/{run.proc.pid}/task/{run.proc.pid}/children").read_text().split()
    assert len(children) == 1
    child = int(children[0])
    run.proc.send_signal(signal.SIGKILL)
    run.finish()
    deadline = time.monotonic() + 60
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{child}/stat").read_text().split()[2] if Path(f"/proc/{child}").exists() else "X"
        if status == "Z":
            break  # exited; waiting for init to reap it
        time.sleep(0.1)
    alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
    assert not alive, "train.py kept running after the launcher was killed"
    assert load(work / ckpt_name("latest"))["global_step"] >= 1, "the orphaned run saved on its way out"


@pytest.mark.slow
def test_dry_run_prints_multi_node_commands_for_devices_this_machine_lacks(tmp_path, tiny_dataset):
    port = free_port()
    for device in ("cuda", "sdaa"):
        result = run_process([sys.executable, LAUNCHER, "--device", device, "--dataset_path", tiny_dataset,
                              "--work_dir", tmp_path / device, "--distributed", "True", "--nnodes", "2",
                              "--node_rank", "0", "--nproc_per_node", "8", "--master_addr", "node0",
                              "--master_port", str(port), "--dry_run", "True"], timeout=120)
        assert result.rc == 0, result.describe()
        cmd = result.stdout.strip().splitlines()
        assert len(cmd) == 1 and cmd[0].startswith("+ ") and "--nnodes 2" in cmd[0] and "--nproc_per_node 8" in cmd[0]
        assert f"--device {device}" in cmd[0]
        warnings = result.stderr_lines
        assert warnings and all(w.startswith("warning:") and "could not run" in w for w in warnings), result.describe()
        assert not (tmp_path / device).exists()


def test_max_restarts_needs_auto_resume_and_reaches_torchrun(tmp_path, tiny_dataset, capsys):
    from segzoo.engine import launch
    base = ["--device", "cpu", "--dataset_path", str(tiny_dataset), "--work_dir", str(tmp_path / "w"),
            "--distributed", "True", "--nproc_per_node", "2", "--master_port", str(free_port()), "--dry_run", "True"]
    with pytest.raises(SystemExit) as exc:
        launch.main([*base, "--max_restarts", "3"])
    assert exc.value.code == 2 and "--auto_resume True" in capsys.readouterr().err
    assert launch.main([*base, "--max_restarts", "3", "--auto_resume", "True"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[cmd.index("--max_restarts") + 1] == "3"


@pytest.mark.slow
def test_a_worker_killed_by_sigkill_is_reported_with_137_and_no_see_above(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import os, signal, time\n"
                      "if os.environ['RANK'] == '1':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                      "time.sleep(30)\n")
    torchrun = Path(LAUNCHER).parent / "torchrun.py"
    result = run_process([sys.executable, torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
                          script], timeout=120)
    assert result.rc == 137, result.describe()
    assert "killed by SIGKILL" in result.stderr and "see its message above" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_read_only_work_dir_is_one_line(tiny_dataset, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the read-only case needs an unprivileged user")
    work = tmp_path / "ro"
    work.mkdir()
    work.chmod(0o555)
    try:
        result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--iters", "1",
                           timeout=180)
    finally:
        work.chmod(0o755)
    assert_one_line_error(result, f"--work_dir {work}", "not writable")


@pytest.mark.slow
def test_sigterm_to_a_ddp_launcher_saves_and_exits_143(tiny_dataset, tmp_path):
    work = tmp_path / "ddp"
    run = Watched([sys.executable, LAUNCHER, *TINY_RUN, "--batch_size", "2", "--dataset_path", tiny_dataset,
                   "--work_dir", work, "--distributed", "True", "--nproc_per_node", "2",
                   "--master_port", str(free_port()), "--iters", "500", "--print_interval", "1",
                   "--save_interval", "1000", "--val_interval", "1000"])
    assert run.wait_for("iter 2/", timeout=240), run.describe()
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=120) == 143, run.describe()
    err = "".join(run.err)
    assert "Traceback" not in err and "stopped by SIGTERM at iteration" in err, run.describe()
    assert load(work / ckpt_name("latest"))["global_step"] >= 2
    assert temp_files(work) == [] and not (work / LOCK_NAME).exists()


def test_out_of_memory_errors_are_recognised():
    import train
    assert train.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert train.is_out_of_memory(torch.OutOfMemoryError("sdaa out of memory"))
    assert not train.is_out_of_memory(RuntimeError("shape mismatch"))


def worker_pids(work: Path, rank: int) -> list:
    """PIDs of train.py processes of this work dir with RANK=rank (torchrun's workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"train.py") for c in cmd) and str(work).encode() in cmd and f"RANK={rank}".encode() in env:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_max_restarts_recovers_from_a_killed_worker(tiny_dataset, tmp_path):
    work = tmp_path / "restarts"
    run = Watched([sys.executable, LAUNCHER, *TINY_RUN, "--batch_size", "2", "--dataset_path", tiny_dataset,
                   "--work_dir", work, "--distributed", "True", "--nproc_per_node", "2", "--max_restarts", "1",
                   "--auto_resume", "True", "--master_port", str(free_port()), "--iters", "8", "--print_interval", "1",
                   "--save_interval", "1", "--val_interval", "1000", "--deterministic", "True"])
    assert run.wait_for("iter 3/", timeout=240), run.describe()
    victims = worker_pids(work, rank=1)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    assert run.finish(timeout=300) == 0, run.describe()
    assert "iterations done" in "".join(run.out), "the restarted workers resumed from the latest checkpoint"
    assert load(work / ckpt_name("latest"))["global_step"] == 8
    steps = [step[1] for step, _ in logged_values(work / "train_log.json", "train.loss")]
    assert steps == list(range(1, 9)), "each iteration logged once across the restart"


def test_a_resumed_log_drops_the_records_after_the_resumed_step(tmp_path):
    import train
    log = tmp_path / "train_log.json"
    lines = ['TCAPPDLL {"type": "PARAMETER", "data": {"lr": 0.01}}']
    lines += [f'TCAPPDLL {{"type": "LOG", "step": [1, {i}], "data": {{"train.loss": {i}}}}}' for i in range(1, 6)]
    log.write_text("\n".join(lines) + '\nTCAPPDLL {"type": "LOG", "st')  # the last line cut by a kill
    assert train.trim_log(log, 3) == 3
    assert [r["step"][1] for r in log_records(log)] == [1, 2, 3]
    assert log.read_text().startswith('TCAPPDLL {"type": "PARAMETER"')
