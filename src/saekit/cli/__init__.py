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
import sys
from typing import Sequence

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
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():  # a warning printed through tqdm does not tear a bar apart
            return ns.func(ns)
    except SaekitError as e:
        print(f"saekit {ns.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\nsaekit {ns.verb}: {_interrupted(e)}", file=sys.stderr)
        return 130


def _interrupted(e: KeyboardInterrupt) -> str:
    """What to say on Ctrl-C: the run's own account (what was kept, how to continue) when it gives one."""
    said = str(e) if isinstance(e, RunInterrupted) else ""
    if not said:
        return "interrupted"
    return said if said.lower().startswith("interrupted") else f"interrupted; {said}"


if __name__ == "__main__":
    sys.exit(main())
