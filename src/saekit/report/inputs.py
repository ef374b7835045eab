"""What a page is drawn from: a dictionary folder (local, any format, or a Hub name) with
the evaluation of its weights, and the training log beside it; and where a page may be
written."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..checks import is_real
from ..dictionaries import Dictionary, same_weights
from ..errors import FormatError, OutputError
from ..hub import default_output, parse_hub_spec, resolve
from ..io.files import check_writable_file
from ..io.formats import detect_format, load_any, unfinished_run_error
from ..io.saekit_format import CONFIG_FILE, EVAL_FILE, TRAINING_FILE, read_json
from .figures import DOWNSTREAM, REGIMES

PAGE_SUFFIXES = (".html", ".htm")


@dataclass
class Evaluated:
    """One dictionary with its evaluation: what every page is drawn from."""

    folder: Path
    name: str
    dictionary: dict[str, Any]
    evaluation: dict[str, Any]
    spec: str = ""  # how the user named it (a path or a Hub name), for the fixes pages suggest

    def regime(self, name: str) -> dict[str, Any]:
        section = self.evaluation.get(name)
        return section if isinstance(section, dict) else {}

    def regimes(self) -> dict[str, dict[str, Any]]:
        """The regimes eval.json holds, in REGIMES order."""
        return {name: self.regime(name) for name in REGIMES if self.regime(name)}

    @property
    def has_downstream(self) -> bool:
        """Whether any regime holds cross-entropy figures (an evaluation that ran the model)."""
        return any(f in r for r in self.regimes().values() for f in DOWNSTREAM)

    @property
    def hook(self) -> str:
        """The hook point read, and for a transcoder the one reconstructed (``mlp_in.6 → mlp_out.6``)."""
        read = str(self.dictionary.get("hook") or self.evaluation.get("hook") or "not recorded")
        return f"{read} → {self.dictionary.get('target')}" if self.dictionary.get("transcoder") else read

    @property
    def model(self) -> str:
        return str(self.dictionary.get("model") or self.evaluation.get("model") or "not recorded")


def require_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder; pass the folder `saekit train --out` wrote")


def load_evaluated(folder: str | os.PathLike[str], eval_path: str | os.PathLike[str] | None = None) -> Evaluated:
    """Read a dictionary folder's evaluation (eval.json, or ``eval_path``) and its description.

    ``folder`` is a local folder in any format saekit reads, or a Hub name (fetched
    with the eval.json beside it). The description comes from saekit's config.json, or
    else from the copy inside eval.json, which `saekit eval` writes for every format.
    When the folder holds a dictionary, the evaluation must be of its weights (see
    ``_check_same_dictionary``): a FormatError otherwise.
    """
    spec, location = os.fspath(folder), parse_hub_spec(folder)
    folder = resolve(folder)
    require_folder(folder)
    epath = Path(eval_path) if eval_path is not None else folder / EVAL_FILE
    if eval_path is None and not epath.is_file() and location is not None:
        # `saekit eval HUB-NAME` writes its figures here, not into the Hub cache.
        epath = default_output(spec, EVAL_FILE)
    if not epath.is_file():
        members = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / TRAINING_FILE).is_file())
        if members and eval_path is None:
            raise FormatError(
                f"{folder} holds the folders of {len(members)} dictionaries ({', '.join(members[:3])}"
                f"{', ...' if len(members) > 3 else ''}), not one: pass those, e.g. `saekit compare {spec}/*`"
            )
        unfinished = unfinished_run_error(folder)
        if unfinished is not None:
            raise unfinished
        raise FormatError(
            f"{epath} not found: the report is drawn from the evaluation. "
            f"Run `saekit eval {spec}` first (or pass the eval JSON it wrote)."
        )
    evaluation = read_json(epath)
    if not any(isinstance(evaluation.get(r), dict) for r in REGIMES):
        raise FormatError(
            f"{epath} has neither a 'fixed' nor a 'documents' section; it was not written by "
            f"`saekit eval` (or by an older saekit). Run `saekit eval {spec}` again."
        )
    weights = _dictionary_in(folder)
    if weights is not None:
        _check_same_dictionary(evaluation, weights, epath, folder, spec)
    cpath = folder / CONFIG_FILE
    header = read_json(cpath) if cpath.is_file() else {}
    # A dictionary_learning folder has a config.json too: only saekit's holds a "dictionary" section.
    dictionary = header.get("dictionary")
    if not isinstance(dictionary, dict):
        dictionary = evaluation.get("dictionary")
    if not isinstance(dictionary, dict):
        if weights is None:
            raise FormatError(f"{cpath} is missing and {epath} has no 'dictionary' section: which dictionary is this?")
        dictionary = weights.cfg.to_dict()
    name = str(location).rsplit("/", 1)[-1] if location is not None else folder.resolve().name
    return Evaluated(folder, name, dictionary, evaluation, spec)


def _dictionary_in(folder: Path) -> Dictionary | None:
    """The dictionary the folder holds, in any format; None when it holds only figures."""
    try:
        detect_format(folder)
    except FormatError:
        return None
    return load_any(folder)


# Fields of the dictionary's config compared when eval.json predates fingerprints.
IDENTITY_FIELDS = ("arch", "d_in", "d_sae", "k", "hook")


def _check_same_dictionary(evaluation: Mapping[str, Any], weights: Dictionary, epath: Path, folder: Path, spec: str) -> None:
    """Refuse figures measured on other weights than the folder's (a copied or stale eval.json).

    eval.json's fingerprint (``Dictionary.fingerprint``) is compared when it has one;
    an older file only by the config's identity fields, each where both sides record it
    (a Gemma Scope file, for one, records no hook point of its own).
    """
    fix = f"run `saekit eval {spec}` to write a fresh one"
    what = (f"{epath} describes another dictionary than the weights in {folder} "
            "(e.g. an eval.json copied or kept beside other weights)")
    recorded = evaluation.get("fingerprint")
    if recorded not in (None, []):  # [] or absent: written without one (older saekit, or a hand-built file)
        if not isinstance(recorded, list) or not all(is_real(v) for v in recorded):
            raise FormatError(f"{epath}: 'fingerprint' must be a list of numbers; the file is damaged, {fix}")
        if not same_weights([float(v) for v in recorded], weights.fingerprint()):
            raise FormatError(f"{what}: their fingerprints differ; {fix}")
        return
    described = evaluation.get("dictionary")
    if not isinstance(described, dict):
        return
    actual = weights.cfg.to_dict()
    for field in IDENTITY_FIELDS:
        a, b = described.get(field), actual.get(field)
        if a not in (None, "") and b not in (None, "") and a != b:
            raise FormatError(f"{what}: {field} is {a!r} in {epath.name} but {b!r} in the weights; {fix}")


def check_page_path(path: Path) -> Path:
    """Where a page may go: a file in a writable folder, never an input it would replace."""
    check_writable_file(path, "--out")
    if path.exists() and path.suffix.lower() not in PAGE_SUFFIXES:
        raise OutputError(
            f"--out {path} exists and is not an HTML page; the page would replace it. Choose a .html path"
        )
    return path


def read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of log.jsonl, and how many lines were unreadable (a crash can cut the last one)."""
    records, bad = [], 0
    # errors="replace": a damaged line (binary garbage from a crash) is one bad record, not a traceback.
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and "tokens" in record:
            records.append(record)
        else:
            bad += 1
    return records, bad
