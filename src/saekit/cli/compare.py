"""``saekit compare``: several dictionaries side by side, with sparsity-fidelity frontiers."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("compare", help="several dictionaries side by side, with sparsity-fidelity frontiers")
    p.add_argument("folders", nargs="+", help="dictionary folders (any format) or Hub names, each holding eval.json")
    p.add_argument("--out", default=None, help="the page to write (default compare.html)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ..report import compare

    table, page = compare(ns.folders, out=ns.out)
    print(table)
    print(f"wrote {page}")
    return 0
