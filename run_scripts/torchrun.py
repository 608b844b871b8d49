"""torchrun with a one-line failure report: same arguments, same engine.

`python run_scripts/torchrun.py ARGS` behaves as `torchrun ARGS` (it calls PyTorch's own
`torch.distributed.run`), except for how it ends:
  * a worker failed: one line naming the rank and its exit status, and this process exits with
    that status (a worker killed by a signal: 128 + signal, e.g. 137 for SIGKILL, and no "see its
    message above", since a killed worker printed none);
  * SIGTERM / SIGINT reached torchrun: the workers got it too (they finish their step, save
    `latest` and exit), and this process exits 143 / 130 with one line instead of a traceback.
Started by the launcher, it also asks for SIGTERM when the launcher dies (no orphaned workers).
"""
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: E402
from torch.distributed.run import get_args_parser, run  # noqa: E402

from segzoo.runtime.signals import die_with_parent  # noqa: E402


def failure_line(rank, failure, script: str) -> tuple:
    """(message, exit status) of the first failed worker."""
    where = f"worker rank {rank} (local rank {failure.local_rank}) of {script}"
    if failure.exitcode < 0:  # killed by a signal: it printed nothing itself
        signum = -failure.exitcode
        hint = " (out of host memory? see dmesg)" if signum == 9 else ""
        return f"error: {where} was killed by {failure.signal_name()}{hint}", 128 + signum
    return (f"error: {where} exited with status {failure.exitcode}; see its message above",
            failure.exitcode or 1)


def main(argv=None) -> int:
    if os.environ.get("SEGZOO_DIE_WITH_PARENT") == "1":
        die_with_parent()
    # The agent's own W/E lines about the failed worker repeat what the summary below says.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.elastic.agent.server.api").setLevel(logging.ERROR)
    args = get_args_parser().parse_args(argv)
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()  # ProcessFailure has no rank of its own
        line, code = failure_line(rank, failure, args.training_script)
        print(line, file=sys.stderr, flush=True)
        return code
    except SignalException as err:
        print(f"torchrun: stopped by {err.sigval.name}; the workers were asked to save the latest checkpoint",
              file=sys.stderr, flush=True)
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
