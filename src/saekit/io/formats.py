"""Reading and writing the on-disk formats of the other SAE libraries.

Every loader returns a saekit ``Dictionary`` whose ``encode``/``decode`` on raw
activations equal the peer's own ``encode``/``decode`` (saekit's conventions: ``W_enc``
d×F, ``W_dec`` F×d, ``pre = (x − b_dec) W_enc + b_enc``, ``x̂ = f W_dec + b_dec``). A
peer's decoder rows are kept as they are (never renormalised on load). Nothing is
unpickled with code execution: safetensors files, and ``torch.load(weights_only=True)``
for dictionary_learning's ``ae.pt``.

Formats (the files that identify them):

* saekit: ``config.json`` (``"format": "saekit"``) + ``weights.safetensors``;
* SAELens 6.x: ``cfg.json`` + ``sae_weights.safetensors`` (architectures ``standard``,
  ``topk``, ``jumprelu``, ``gated``; saekit's BatchTopK is written as SAELens writes its
  own BatchTopK for inference: a ``jumprelu`` with the global threshold per feature);
* sparsify (EleutherAI): ``cfg.json`` + ``sae.safetensors`` (TopK);
* dictionary_learning: ``config.json`` + ``ae.pt`` (``AutoEncoder``, ``GatedAutoEncoder``,
  ``JumpReluAutoEncoder``, ``AutoEncoderTopK``, ``BatchTopKSAE``).

Transcoders live in the same files: saekit's own format, SAELens (its ``transcoder``,
``skip_transcoder``, ``jumprelu_transcoder``, ``jumprelu_skip_transcoder``) and sparsify
(``transcode``, ``skip_connection``; output width = input width) read and write them;
dictionary_learning has none, and its writer refuses one.

Local files only: a Hub name is resolved by ``saekit.loading.load`` (what ``saekit.load``
is), which sits above this module and ``saekit.hub``. A loaded dictionary is for use,
not training: its parameters do not require gradients (``requires_grad_(True)`` turns
them back on for fine-tuning).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..dictionaries import Dictionary
from ..errors import FormatError, OutputError
from .common import CONFIG_FILE, DESTINATION, DICTIONARY_FILES, DL_CFG, DL_WEIGHTS, FORMATS, FORMAT_FILES, GEMMA_SCOPE_PARAMS, SAELENS_CFG, SAELENS_WEIGHTS, SPARSIFY_CFG, SPARSIFY_WEIGHTS, WEIGHTS_FILE, dictionary_folder
from .files import LOCK_FILE, FolderLock, check_writable_folder, make_folder, remove_if_empty, temp_path
from .checkpoint import CHECKPOINT_FILE
from .saekit_format import RUN_RECORD_FILES, load_dictionary, save_saekit
from .saelens import load_saelens, save_saelens
from .sparsify import load_sparsify, save_sparsify
from .dictionary_learning import load_dictionary_learning, save_dictionary_learning
from .gemma_scope import load_gemma_scope


def detect_format(path: str | os.PathLike) -> str:
    """Which format the folder (or a file inside it) holds, from the files present."""
    folder = dictionary_folder(path)
    names = {p.name for p in folder.iterdir()}
    if CONFIG_FILE in names and WEIGHTS_FILE in names:
        # No other format pairs these two files; the saekit loader then checks the header
        # (and names a corrupt config.json as such).
        return "saekit"
    if SAELENS_CFG in names and SAELENS_WEIGHTS in names:
        return "saelens"
    if SPARSIFY_CFG in names and SPARSIFY_WEIGHTS in names:
        return "sparsify"
    if DL_CFG in names and DL_WEIGHTS in names:
        return "dictionary_learning"
    if GEMMA_SCOPE_PARAMS in names:
        return "gemma_scope"
    unfinished = unfinished_run_error(folder)
    if unfinished is not None:
        raise unfinished
    found = sorted(names)[:20]
    needs = "; ".join(f"{fmt}: {' + '.join(files)}" for fmt, files in FORMAT_FILES.items())
    raise FormatError(
        f"{folder} holds no dictionary format saekit recognises (found: {found or 'nothing'}). "
        f"Each format needs: {needs} (saekit's config.json must say \"format\": \"saekit\")."
    )


def unfinished_run_error(folder: Path) -> FormatError | None:
    """The error for a run folder whose training has not finished (a checkpoint and no
    dictionary yet), which every verb reading dictionaries gives alike; None otherwise."""
    if (folder / CHECKPOINT_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
        return FormatError(f"{folder} holds an unfinished training run (a checkpoint, no dictionary yet): finish it "
                           "with the same `saekit train` command and --resume")
    return None


LOADERS = {
    "saekit": load_dictionary, "saelens": load_saelens,
    "sparsify": load_sparsify, "dictionary_learning": load_dictionary_learning,
    "gemma_scope": load_gemma_scope,
}


SAVERS = {
    "saekit": save_saekit, "saelens": save_saelens,
    "sparsify": save_sparsify, "dictionary_learning": save_dictionary_learning,
}


def load_any(path: str | os.PathLike, format: str | None = None, device: str | torch.device = "cpu") -> Dictionary:
    """Load a local dictionary folder (or a file in it) in any supported format, detected
    unless ``format`` is given. For a Hub name too, use ``saekit.load``."""
    fmt = format or detect_format(path)
    if fmt not in LOADERS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return LOADERS[fmt](path).to(device).requires_grad_(False).eval()


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, format: str | None = None, overwrite: bool = False
) -> Path:
    """Read the local dictionary ``src`` (any format) and write it into the folder ``dst`` as ``to``.

    ``dst`` must be new or empty (see ``check_destination``); with ``overwrite``, every
    dictionary file of any format and every file of a training run (training.json,
    log.jsonl, eval.json, report.html, the checkpoint) is removed from it first, since
    they describe the dictionary written over; other files are left. ``dst`` is locked
    against other saekit processes while it is written. For a Hub name as ``src``, use
    ``saekit.loading.convert``.
    """
    check_written_format(to)
    source = dictionary_folder(src)
    dst = check_destination(dst, overwrite, source)  # before the source is read
    dictionary = load_any(src, format)
    created = not dst.exists()
    make_folder(dst, DESTINATION)
    try:
        _write_converted(dictionary, dst, to, overwrite, source)
    except BaseException:
        if created:
            remove_if_empty(dst)
        raise
    return dst


def _write_converted(dictionary: Dictionary, dst: Path, to: str, overwrite: bool, source: Path) -> None:
    with FolderLock(dst, "convert"):
        check_destination(dst, overwrite, source)  # again, now that no other saekit process can write there
        removed = _remove_dictionary_and_run_files(dst) if overwrite else []
        try:
            SAVERS[to](dictionary, dst)
        except OutputError as e:
            if removed:
                raise OutputError(
                    f"{e}. --overwrite had removed the old dictionary and its run files ({', '.join(removed)}) from "
                    f"{dst} first; the source {source} is unchanged"
                ) from None
            raise


def check_written_format(to: str) -> None:
    if to not in SAVERS:
        raise FormatError(f"saekit cannot write {to!r}; it writes {', '.join(SAVERS)}")


def check_destination(dst: str | os.PathLike, overwrite: bool = False, source: Path | None = None) -> Path:
    """Refuse a destination for ``convert`` that cannot or may not be written; changes nothing.

    It must be a writable folder (or creatable), not the source folder itself, and
    empty unless ``overwrite``: a folder holding a training run or another dictionary
    would be left with files that describe a dictionary no longer there.
    """
    dst = check_writable_folder(dst, DESTINATION)
    if source is not None and dst.exists() and dst.resolve() == source.resolve():
        raise OutputError(
            f"{DESTINATION} {dst} is the source folder itself; convert writes the dictionary into another folder: "
            "choose a new destination"
        )
    if overwrite or not dst.is_dir():
        return dst
    present = sorted(p.name for p in dst.iterdir() if p.name != LOCK_FILE)
    if present:
        shown = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "")
        raise OutputError(
            f"{DESTINATION} {dst} is not empty (it holds {shown}); choose a new folder, or pass --overwrite to "
            "replace the dictionary there (its training and evaluation files are removed with it)"
        )
    return dst


def _remove_dictionary_and_run_files(folder: Path) -> list[str]:
    """Remove what describes the dictionary in ``folder`` (and a crash's temporary copies); return the names."""
    removed = []
    for name in (*DICTIONARY_FILES, *RUN_RECORD_FILES):
        for path in (folder / name, temp_path(folder / name)):
            if path.is_file() or path.is_symlink():
                try:
                    path.unlink()
                except OSError as e:
                    done = f"{', '.join(removed)} were removed before it; " if removed else ""
                    raise OutputError(
                        f"cannot remove {path} (--overwrite): {e.strerror or e}; {done}no new dictionary was written"
                    ) from None
                removed.append(path.name)
    return removed
