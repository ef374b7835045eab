"""``saekit push``: a dictionary uploaded to the Hugging Face Hub with a model card."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "push",
        help="upload a dictionary to the Hugging Face Hub with a model card",
        description="Upload a dictionary folder (any format saekit reads) to a Hub model repository, created if "
        "missing, in one commit: the dictionary's files, eval.json, training.json, log.jsonl and report.html when "
        "present, and a model card (the folder's README.md if it has one, else one written from the config and "
        "evaluation). Log in first with `hf auth login` or set HF_TOKEN; HF_ENDPOINT selects another Hub.",
    )
    p.add_argument("folder", help="the dictionary folder to upload")
    p.add_argument("repo_id", help="the Hub repository, OWNER/NAME")
    p.add_argument("--path", default="", help="a folder inside the repository (default: its top level), e.g. resid_post.9")
    p.add_argument("--revision", default=None, help="the branch to commit to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repository private (if it does not exist)")
    p.add_argument("--message", default=None, help="the commit message")
    p.add_argument("--include-checkpoint", action="store_true",
                   help="also upload checkpoint.safetensors (optimizer state, for resuming; ~3x the weights)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ..hub import push

    name = push(ns.folder, ns.repo_id, path_in_repo=ns.path, revision=ns.revision, private=ns.private or None,
                commit_message=ns.message, include_checkpoint=ns.include_checkpoint)
    print(f"pushed {ns.folder} to {name}; load it with saekit.load({name!r}) or `saekit eval {name}`")
    return 0
