"""torchrun with a one-line failure report: same arguments, same engine.

`python run_scripts/torchrun.py ARGS` behaves as `torchrun ARGS` (it calls PyTorch's own
`torch.distributed.run`), except that when a worker fails it prints which rank failed and
exits with that worker's exit status, instead of torchrun's traceback and exit status 1.
The worker has already printed its own one-line error above.
"""
import logging
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run


def main(argv=None) -> int:
    # The agent's own W/E lines about the failed worker repeat what the summary below says.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(argv)
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()  # ProcessFailure has no rank of its own
        code = failure.exitcode if failure.exitcode > 0 else 1
        print(f"error: worker rank {rank} (local rank {failure.local_rank}) of {args.training_script} "
              f"exited with status {failure.exitcode}; see its message above", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
