"""Dictionaries on the Hugging Face Hub: download (cached) and upload with a model card.

A dictionary on the Hub is named by its repository and the folder inside it::

    google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71
    hf://EleutherAI/sae-llama-3-8b-32x/layers.10
    someone/my-saes@v1.0/resid_post.9          (a branch, tag or commit after "@")

``resolve`` turns such a name into a local folder: an existing local path is returned
as it is; anything else that has the shape ``owner/repo[@revision][/path]`` is fetched
with ``huggingface_hub.snapshot_download`` into the usual Hub cache (``HF_HUB_CACHE``),
only the files a dictionary format needs, so a repository holding hundreds of
dictionaries costs one folder's download. A second call reads the cache; with no
network it falls back to the cache on its own, and ``HF_HUB_OFFLINE=1`` never asks.

``push`` uploads a dictionary folder (any format saekit reads) in one commit, with a
model card that records what the dictionary was trained on and how well it does.

``HF_ENDPOINT`` and ``HF_HUB_CACHE`` are read when each call is made rather than when
huggingface_hub is imported, so a mirror (or the tests' local stand-in) set by a
running program is honoured.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .dictionaries import DictionaryConfig
from .errors import ConfigError, FormatError, HubError
from .peer_formats import FORMAT_FILES, detect_format, load_any

HUB_PREFIX = "hf://"
CARD_FILE = "README.md"
# Files beside a dictionary that travel with it: its evaluation and how it was trained
# (small; a report or `saekit compare` reads them). Written by saekit train / eval.
SIDECAR_FILES = ("eval.json", "training.json")
# Uploaded when present, never downloaded by `resolve` (a loader does not need them).
UPLOAD_EXTRA_FILES = ("log.jsonl", "report.html")
CHECKPOINT_FILE = "checkpoint.safetensors"
DICTIONARY_FILES = tuple(dict.fromkeys(name for files in FORMAT_FILES.values() for name in files))
# The embedded default model's Hub repository, for the model card's base_model.
EMBEDDED_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
_SPEC = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^/@]+))?(?:/(?P<path>.*))?$")


@dataclass(frozen=True)
class HubLocation:
    """A folder (or one file) inside a Hub model repository, at a revision."""

    repo_id: str
    path: str = ""  # inside the repository; "" is its root
    revision: str | None = None  # None: the default branch

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")


def parse_hub_spec(spec: str | os.PathLike) -> HubLocation | None:
    """The Hub location ``spec`` names, or None when it names a local path.

    Local wins: an existing path is never looked up on the Hub, nor is anything that
    can only be a path (absolute, ``./``, ``../``, ``~``). Without ``hf://`` a missing
    relative path of the right shape is tried on the Hub, as ``from_pretrained`` does.
    """
    text = os.fspath(spec)
    explicit = text.startswith(HUB_PREFIX)
    if not explicit:
        if isinstance(spec, Path) or Path(text).exists() or text.startswith((".", "/", "~")) or "\\" in text:
            return None
    body = text[len(HUB_PREFIX):] if explicit else text
    match = _SPEC.match(body)
    if match is None:
        if explicit:
            raise ConfigError(
                f"{text!r} is not a Hub dictionary name; write hf://OWNER/REPO[@REVISION][/PATH/INSIDE]"
            )
        return None
    path = str(PurePosixPath(match["path"])) if match["path"] else ""
    if path == ".":
        path = ""
    if ".." in PurePosixPath(path).parts:
        raise ConfigError(f"{text!r}: a path inside a Hub repository cannot contain '..'")
    return HubLocation(match["repo"], path, match["revision"])


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


def _is_connection_error(error: BaseException) -> bool:
    # huggingface_hub has used requests and httpx as its transport; match their
    # connection and timeout errors by name rather than import either.
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, OSError) or bool(names & {"ConnectError", "ConnectionError", "TimeoutException", "Timeout"})


def _hub_error(error: Exception, what: str, repo_id: str, revision: str | None = None) -> HubError:
    """One clear message for each way a Hub call fails."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = _endpoint() or "https://huggingface.co"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError) or status in (401, 403):
        fix = (
            f"the Hub refused access to {repo_id} ({status or 'gated'}): accept its terms on the Hub if it is gated, "
            "and log in with `hf auth login` or set HF_TOKEN to a token with access"
        )
        if "push" in what:
            fix += " (a write token, to upload)"
        return HubError(f"{what}: {fix}")
    if isinstance(error, RevisionNotFoundError):
        return HubError(f"{what}: {repo_id} has no revision {revision!r}; give a branch, tag or commit that exists")
    if isinstance(error, RepositoryNotFoundError):
        return HubError(
            f"{what}: {endpoint} has no model repository {repo_id} (or it is private: log in with `hf auth login` "
            "or set HF_TOKEN)"
        )
    if isinstance(error, LocalEntryNotFoundError) or _is_connection_error(error):
        cache = _cache_dir() or "the Hugging Face cache (HF_HUB_CACHE)"
        return HubError(
            f"{what}: cannot reach {endpoint} and {repo_id} is not in {cache}. Connect to the network once to "
            "download it (later runs read the cache), or set HF_ENDPOINT to a reachable mirror."
        )
    if isinstance(error, HfHubHTTPError):
        return HubError(f"{what}: the Hub answered {status}: {error}")
    raise error  # not a Hub failure: a bug, let it show with its traceback


# ---------------------------------------------------------------- download


def _split_file(location: HubLocation) -> tuple[str, str | None]:
    """(folder inside the repo, file name) when the path names a dictionary file, else (path, None)."""
    p = PurePosixPath(location.path)
    if location.path and (p.name in DICTIONARY_FILES or p.suffix in (".npz", ".safetensors", ".pt")):
        parent = str(p.parent)
        return ("" if parent == "." else parent), p.name
    return location.path, None


def download(location: HubLocation) -> Path:
    """Fetch the dictionary files of one folder of a Hub repository; return the local path.

    Only the files a format needs (and the evaluation beside them) are fetched, through
    the Hub cache, so neighbouring dictionaries in the same repository are not.
    """
    from huggingface_hub import snapshot_download

    folder, file = _split_file(location)
    prefix = _glob_escape(folder + "/") if folder else ""
    names = (*DICTIONARY_FILES, *SIDECAR_FILES) + ((file,) if file and file not in DICTIONARY_FILES else ())
    try:
        snapshot = snapshot_download(
            location.repo_id,
            revision=location.revision,
            allow_patterns=[prefix + _glob_escape(name) for name in names],
            cache_dir=_cache_dir(),
            endpoint=_endpoint(),
        )
    except Exception as e:  # noqa: BLE001 - _hub_error re-raises what is not a Hub failure
        raise _hub_error(e, f"cannot download {location}", location.repo_id, location.revision) from None
    local = Path(snapshot) / folder if folder else Path(snapshot)
    if file is not None:
        local = local / file
        if not local.is_file():
            raise HubError(f"{location}: the repository {location.repo_id} has no file {location.path}")
        return local
    if not local.is_dir() or not any(p.name in DICTIONARY_FILES for p in local.iterdir()):
        raise HubError(f"{location}: no dictionary there. {_describe_folder(location)}")
    return local


def _glob_escape(text: str) -> str:
    """Escape fnmatch's wildcards (huggingface_hub matches allow_patterns with fnmatch)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _describe_folder(location: HubLocation) -> str:
    """What the repository holds at that path, so the user can pick the right folder."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    def listing(path: str) -> list[str]:
        entries = HfApi(endpoint=_endpoint()).list_repo_tree(
            location.repo_id, path_in_repo=path or None, revision=location.revision,
        )
        return sorted(PurePosixPath(e.path).name + ("" if hasattr(e, "size") else "/") for e in entries)

    folder, _ = _split_file(location)
    missing = ""
    try:
        try:
            shown = listing(folder)
        except EntryNotFoundError:
            missing, folder = f"The repository {location.repo_id} has no folder {folder!r}; ", ""
            shown = listing(folder)
    except Exception as e:  # noqa: BLE001 - the listing only improves the message
        return f"(its contents could not be listed: {type(e).__name__})"
    where = f"{folder!r}" if folder else "its top level"
    subfolders = [name.rstrip("/") for name in shown if name.endswith("/")]
    hint = f" Name a folder that holds a dictionary, e.g. {location.repo_id}/{PurePosixPath(folder, subfolders[0])}." if subfolders else ""
    return f"{missing}{where} holds: {', '.join(shown[:20]) or 'nothing'}{' …' if len(shown) > 20 else ''}.{hint}"


def resolve(spec: str | os.PathLike) -> Path:
    """A local path for ``spec``: the path itself, or the Hub folder it names, downloaded."""
    location = parse_hub_spec(spec)
    if location is None:
        return Path(spec)
    try:
        return download(location)
    except HubError as e:
        if os.fspath(spec).startswith(HUB_PREFIX):
            raise
        # Without hf:// the user may have meant a local folder and mistyped it.
        raise HubError(f"there is no local folder {os.fspath(spec)!r}, and as a Hub name: {e}") from None


# ---------------------------------------------------------------- upload


def _base_model(model: str | None) -> str | None:
    """The Hub id of the model the dictionary reads, when it has one (for the card's metadata)."""
    from .models import EMBEDDED_MODEL

    if model == EMBEDDED_MODEL:
        return EMBEDDED_BASE_MODEL
    if model and _REPO_ID.match(model) and not Path(model).exists():
        return model
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "–" if value is None else str(value)


def model_card(folder: str | os.PathLike, repo_id: str, path_in_repo: str = "", cfg: DictionaryConfig | None = None) -> str:
    """The README.md of a pushed dictionary: metadata, what it is, its figures, how to load it.

    ``cfg`` saves loading the dictionary again when the caller has it.
    """
    folder = Path(folder)
    fmt = detect_format(folder)
    cfg = cfg or load_any(folder, fmt).cfg
    evaluation = _read_json(folder / "eval.json")
    training = _read_json(folder / "training.json").get("config", {})
    name = f"{repo_id}/{path_in_repo}" if path_in_repo else repo_id
    base = _base_model(cfg.model)

    meta = ["---", "library_name: saekit", "tags:", "- saekit", "- sparse-autoencoder", "- interpretability",
            f"- {cfg.arch}"]
    if base:
        meta.append(f"base_model: {base}")
    meta.append("---")

    rows = [("architecture", cfg.arch), ("features (d_sae)", cfg.d_sae), ("input width (d_in)", cfg.d_in),
            ("k", cfg.k), ("hook point", cfg.hook or "not recorded"), ("model", cfg.model or "not recorded"),
            ("activation scale (folded into the weights)", cfg.act_scale), ("training context length", cfg.context_length),
            ("stored format", fmt)]
    if training:
        rows += [("training tokens", training.get("tokens")), ("training data", training.get("dataset") or "saekit's embedded Wikipedia summaries")]
    lines = [*meta, "", f"# {name}", "",
             f"A sparse dictionary (sparse autoencoder) trained with [saekit](https://pypi.org/project/saekit/) "
             f"on the activations of {cfg.model or 'a language model'} at `{cfg.hook or '?'}`.", "",
             "| | |", "|---|---|", *(f"| {k} | {_figure(v)} |" for k, v in rows if v is not None), ""]

    regimes = [r for r in ("fixed", "documents") if isinstance(evaluation.get(r), dict)]
    if regimes:
        figures = ("fvu", "l0", "frac_alive", "loss_recovered", "ce_diff", "kl", "n_tokens")
        lines += ["## Evaluation", "",
                  "Held-out text; figures as defined by saekit's METRICS.md. `fixed`: contexts as long as in "
                  "training; `documents`: whole documents. FVU is the fraction of variance unexplained, "
                  "loss recovered compares the model with the dictionary spliced in to zero ablation.", "",
                  "| figure | " + " | ".join(regimes) + " |", "|---|" + "---|" * len(regimes)]
        lines += [f"| {f} | " + " | ".join(_figure(evaluation[r].get(f)) for r in regimes) + " |" for f in figures]
        lines.append("")
    lines += ["## Use", "", "```python", "import saekit", "", f'sae = saekit.load("{name}")',
              "features = sae.encode(activations)   # raw activations at the hook point", "x_hat = sae.decode(features)",
              "```", "", "```bash", f"saekit eval {name}", "```", ""]
    return "\n".join(lines)


def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    path_in_repo: str = "",
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    include_checkpoint: bool = False,
) -> str:
    """Upload a dictionary folder to ``repo_id`` (created if missing) in one commit.

    Uploads the dictionary's files in their format, its evaluation and training record
    when present, and a model card (the folder's own README.md if it has one). The
    training checkpoint (optimizer state, about 3x the weights) only with
    ``include_checkpoint``. Returns the name to load it by: ``repo_id[/path_in_repo]``.
    The token comes from ``hf auth login`` or ``HF_TOKEN``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not _REPO_ID.match(repo_id):
        raise ConfigError(f"{repo_id!r} is not a Hub repository id; write OWNER/NAME (e.g. alice/smollm2-saes)")
    path_in_repo = str(PurePosixPath(path_in_repo)).strip("/") if path_in_repo else ""
    if path_in_repo in (".",) or ".." in PurePosixPath(path_in_repo).parts:
        raise ConfigError(f"--path {path_in_repo!r} must be a folder inside the repository, without '..'")
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder; push the folder `saekit train --out` (or convert) wrote")
    fmt = detect_format(folder)
    cfg = load_any(folder, fmt).cfg  # refuse a corrupt dictionary before anything is uploaded
    names = [*FORMAT_FILES[fmt], *SIDECAR_FILES, *UPLOAD_EXTRA_FILES] + ([CHECKPOINT_FILE] if include_checkpoint else [])
    if include_checkpoint and not (folder / CHECKPOINT_FILE).is_file():
        raise FormatError(f"{folder} has no {CHECKPOINT_FILE} to include; push without --include-checkpoint")
    prefix = f"{path_in_repo}/" if path_in_repo else ""
    ops = [CommitOperationAdd(prefix + name, str(folder / name)) for name in names if (folder / name).is_file()]
    card = folder / CARD_FILE
    card_bytes = card.read_bytes() if card.is_file() else model_card(folder, repo_id, path_in_repo, cfg).encode()
    ops.append(CommitOperationAdd(prefix + CARD_FILE, card_bytes))

    api = HfApi(endpoint=_endpoint())
    what = f"cannot push {folder} to {repo_id}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(
            repo_id, operations=ops, revision=revision,
            commit_message=commit_message or f"Upload {fmt} dictionary" + (f" to {path_in_repo}" if path_in_repo else ""),
        )
    except Exception as e:  # noqa: BLE001 - _hub_error re-raises what is not a Hub failure
        raise _hub_error(e, what, repo_id, revision) from None
    return f"{repo_id}/{path_in_repo}" if path_in_repo else repo_id


def default_output(spec: str | os.PathLike, filename: str) -> Path:
    """Where a verb writes ``filename`` for ``spec`` unless told: beside a local dictionary;
    for a Hub name (whose files live in the shared cache, not to be written into), in the
    current folder under a name made from it, e.g. ``eval-alice-saes-resid_post.9.json``."""
    location = parse_hub_spec(spec)
    if location is None:
        path = Path(spec)
        return (path if path.is_dir() else path.parent) / filename
    stem, suffix = os.path.splitext(filename)
    slug = re.sub(r"[^\w.@-]+", "-", f"{location.repo_id}/{location.path}".strip("/"))
    return Path(f"{stem}-{slug}{suffix}")
