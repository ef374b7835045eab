"""``saekit <verb>``: parse, validate, call the library, print.

One module per verb, each with ``register(sub)`` (its flags) and ``run(ns)`` (the work);
this module only assembles them and turns the library's errors into one line and an
exit status. The flags of ``saekit train`` are generated from ``TrainConfig``'s fields
(their types, defaults and help text), so the CLI and the Python API cannot drift apart.
Imports of torch and the library happen inside ``run``, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any, Sequence

from ..errors import RunInterrupted, SaekitError
from . import cache, circuit, classify, compare, convert, dashboard, evaluate, explain, ito, probe, push, report, serve, shift, steer, train
from .common import Parser

# In the order `saekit --help` lists them: the loop a user follows.
VERBS = (train, cache, evaluate, report, compare, convert, push, dashboard, serve, explain, steer, ito, circuit, shift, probe, classify)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="saekit", description="Sparse dictionary learning on language-model activations.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        verb.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (2) or --help (0), already printed
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    terminated = _Terminated()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with terminated, logging_redirect_tqdm():  # a warning printed through tqdm does not tear a bar apart
            return ns.func(ns)
    except SaekitError as e:
        print(f"saekit {ns.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\nsaekit {ns.verb}: {_interrupted(e)}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated.received else 130


class _Terminated:
    """While open, SIGTERM (``kill``, ``docker stop``, a scheduler's time limit, torchrun
    stopping the other ranks) stops a verb the way Ctrl-C does: a run says which
    checkpoint is kept and leaves no half-written file. The previous handler comes back on
    exit, so ``main`` called from Python leaves the process as it found it."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.received = True
        raise KeyboardInterrupt

    def __enter__(self) -> "_Terminated":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _interrupted(e: KeyboardInterrupt) -> str:
    """What to say on Ctrl-C: the run's own account (what was kept, how to continue) when it gives one."""
    said = str(e) if isinstance(e, RunInterrupted) else ""
    if not said:
        return "interrupted"
    return said if said.lower().startswith("interrupted") else f"interrupted; {said}"


if __name__ == "__main__":
    sys.exit(main())
