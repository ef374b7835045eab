"""``saekit report``: one run's figures and plots as a self-contained HTML page."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="a self-contained HTML page of a run's figures and plots")
    p.add_argument("folder", help="a run or dictionary folder (any format) or a Hub name, holding eval.json "
                   "(saekit train writes one; else run saekit eval)")
    p.add_argument("--eval", default=None, help="an eval JSON elsewhere")
    p.add_argument("--out", default=None, help="the page to write (default FOLDER/report.html)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ..report import write_report

    print(f"wrote {write_report(ns.folder, eval_path=ns.eval, out=ns.out)}")
    return 0
