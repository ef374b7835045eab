"""``saekit convert``: a dictionary written in another library's format."""

from __future__ import annotations

import argparse
from typing import Any

from .common import DICTIONARY_ARG_HELP, FORMAT_CHOICES, WRITE_FORMATS


def register(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="write a dictionary in another library's format",
        description="Read a dictionary folder in any supported format and write it as saekit, SAELens "
        "(cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors) or dictionary_learning "
        "(config.json + ae.pt). Conventions (transposed weights, b_dec subtracted or not, thresholds, "
        "activation scale) are mapped explicitly.",
    )
    p.add_argument("src", help=DICTIONARY_ARG_HELP)
    p.add_argument("dst", help="the folder to write")
    p.add_argument("--to", required=True, choices=WRITE_FORMATS, help="the format to write")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the source's format, if detection is wrong")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty DST: first remove every dictionary file there (any format) and the "
                   "files of a training run (training.json, log.jsonl, eval.json, report.html, checkpoint)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ..loading import convert

    print(f"wrote {ns.to} dictionary to {convert(ns.src, ns.dst, ns.to, ns.format, overwrite=ns.overwrite)}")
    return 0
