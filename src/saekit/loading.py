"""A dictionary from anywhere, in any format: ``saekit.load`` and ``saekit convert``.

The one place that knows both where a dictionary can be (a local folder or file, or a
Hub name, see ``saekit.hub``) and what it can be stored as (``saekit.io.formats``).
It sits above both: the format modules read local files only and never import the Hub
code, so each can be used (and tested) without the other.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .dictionaries import Dictionary
from .hub import resolve
from .io.formats import check_destination, check_written_format, load_any
from .io.formats import convert as convert_local


def load(path: str | os.PathLike, format: str | None = None, device: str | torch.device = "cpu") -> Dictionary:
    """Load a dictionary in any supported format (detected unless ``format`` is given).

    ``path`` is a local folder or a file in it, or a Hub name
    ``OWNER/REPO[@REVISION]/PATH`` (downloaded into the Hub cache first). The
    dictionary comes back in eval mode with ``requires_grad`` off on every parameter;
    ``dictionary.requires_grad_(True)`` turns it on for fine-tuning.
    """
    return load_any(resolve(path), format, device=device)


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, format: str | None = None, overwrite: bool = False
) -> Path:
    """``saekit convert``: write the dictionary ``src`` (a local path or a Hub name) into the
    folder ``dst`` in the format ``to``; see ``saekit.io.formats.convert`` for what ``dst`` may hold."""
    check_written_format(to)  # both before a download
    check_destination(dst, overwrite)
    return convert_local(resolve(src), dst, to, format, overwrite)
