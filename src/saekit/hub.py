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

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote
from typing import Any

from .dictionaries import DictionaryConfig
from .errors import ConfigError, FormatError, HubError, OutputError, SaekitError
from .io.checkpoint import CHECKPOINT_FILE
from .io.saekit_format import EVAL_FILE, LOG_FILE, REPORT_FILE, TRAINING_FILE, read_json
from .io.formats import DICTIONARY_FILES, FORMAT_FILES, detect_format, load_any

HUB_PREFIX = "hf://"
CARD_FILE = "README.md"
# Files beside a dictionary that travel with it: its evaluation and how it was trained
# (small; a report or `saekit compare` reads them). Written by saekit train / eval.
SIDECAR_FILES = (EVAL_FILE, TRAINING_FILE)
# Uploaded when present, never downloaded by `resolve` (a loader does not need them).
UPLOAD_EXTRA_FILES = (LOG_FILE, REPORT_FILE)
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
        rev = f"@{quote(self.revision, safe='')}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")


def parse_hub_spec(spec: str | os.PathLike) -> HubLocation | None:
    """The Hub location ``spec`` names, or None when it names a local path.

    Local wins: an existing path is never looked up on the Hub, nor is anything that
    can only be a path (absolute, ``./``, ``../``, ``~``), nor a missing path whose first
    folder exists here (``runs/topk2`` when ``runs/`` exists is a typo, not a Hub name).
    Otherwise a relative path of the right shape is tried on the Hub, as
    ``from_pretrained`` does; ``hf://`` says "the Hub" outright. A revision holding a
    slash is written with ``%2F`` (``@refs%2Fpr%2F1``).
    """
    text = os.fspath(spec)
    explicit = text.startswith(HUB_PREFIX)
    if not explicit and (
        isinstance(spec, Path) or text.startswith((".", "/", "~")) or "\\" in text
        or Path(text).exists() or Path(text.split("/", 1)[0]).is_dir()
    ):
        return None
    match = _SPEC.match(text[len(HUB_PREFIX):] if explicit else text)
    if match is None or not _valid_repo_id(match["repo"]):
        if explicit:
            raise ConfigError(
                f"{text!r} is not a Hub dictionary name; write hf://OWNER/REPO[@REVISION][/PATH/INSIDE] "
                "with a valid repository id (letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters)"
            )
        return None
    if match["repo"].split("/")[0] in ("datasets", "spaces"):
        raise ConfigError(f"{text!r}: saekit reads dictionaries from model repositories, not {match['repo'].split('/')[0]}")
    parts = [p for p in (match["path"] or "").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"{text!r}: a path inside a Hub repository cannot contain '..'")
    revision = unquote(match["revision"]) if match["revision"] else None
    return HubLocation(match["repo"], "/".join(parts), revision)


def _valid_repo_id(repo_id: str) -> bool:
    """huggingface_hub's own rules (no '--' or '..', at most 96 characters, ...)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


# The transport's connection failures (huggingface_hub has used requests and httpx),
# matched by name so neither needs importing. HTTP answers are not among them: every
# HfHubHTTPError is also an OSError, so "is an OSError" would call a 400 "offline".
_CONNECTION_ERRORS = {"ConnectionError", "ConnectError", "ConnectTimeout", "Timeout", "TimeoutException",
                      "TransportError", "NetworkError", "ReadError", "RemoteProtocolError"}
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_error(error: Exception, what: str, repo_id: str, revision: str | None = None, upload: bool = False) -> SaekitError:
    """One clear message for each way a Hub call fails; anything else is re-raised (a bug)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import HFValidationError

    nothing = " Nothing was uploaded." if upload else ""
    cause = error.__cause__
    if isinstance(cause, HfHubHTTPError) and not isinstance(error, HfHubHTTPError):
        if isinstance(error, LocalEntryNotFoundError):
            error = cause  # older huggingface_hub wraps the Hub's answer
        else:  # huggingface_hub's own reading of it, e.g. "Invalid metadata in README.md ..."
            text = " ".join(str(error).split())
            return HubError(f"{what}: the Hub answered {cause.response.status_code}: {text}{nothing}")
    endpoint = _endpoint() or "https://huggingface.co"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HFValidationError):
        return ConfigError(f"{what}: {error}")
    # Gated before RepositoryNotFound (its subclass); RepositoryNotFound before the status
    # code, since the Hub answers an anonymous request for a missing repository with 401.
    if isinstance(error, GatedRepoError):
        return HubError(f"{what}: {repo_id} is gated: accept its terms on its Hub page, then {LOGIN_HINT}.{nothing}")
    if isinstance(error, RepositoryNotFoundError):
        return HubError(f"{what}: {endpoint} has no model repository {repo_id} (or it is private: {LOGIN_HINT}).{nothing}")
    if isinstance(error, RevisionNotFoundError):
        fix = "push to an existing branch, or create this one first (HfApi.create_branch)" if upload else \
            "give a branch, tag or commit that exists"
        return HubError(f"{what}: {repo_id} has no revision {revision!r}; {fix}.{nothing}")
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        token = "a token with write access to it" if upload else "a token with access to it"
        return HubError(f"{what}: the Hub refused access to {repo_id} ({status}); {LOGIN_HINT} to {token}.{nothing}")
    if isinstance(error, HfHubHTTPError):
        return HubError(f"{what}: the Hub answered {status}: {str(error).splitlines()[0]}{nothing}")
    names = {cls.__name__ for cls in type(error).__mro__}
    if isinstance(error, LocalEntryNotFoundError) or names & _CONNECTION_ERRORS:
        if upload:
            return HubError(f"{what}: cannot reach {endpoint} ({type(error).__name__}).{nothing}")
        cache = _cache_dir() or "the Hugging Face cache (HF_HUB_CACHE)"
        why = "HF_HUB_OFFLINE is set, so the Hub is not asked" if _offline() else f"cannot reach {endpoint}"
        return HubError(
            f"{what}: {why}, and this folder of {repo_id} is not in {cache}. Download it once with the network "
            "on (later runs read the cache), or set HF_ENDPOINT to a reachable mirror."
        )
    if not upload and isinstance(error, OSError) and error.errno is not None:
        # The download's own writes into the cache (a read-only cache, a full disk, a file
        # where the cache folder should be); the Hub answered.
        cache = _cache_dir() or "the Hugging Face cache (HF_HUB_CACHE)"
        where = f" ({error.filename})" if error.filename else ""
        return OutputError(
            f"{what}: cannot write into {cache}{where}: {error.strerror or error}; set HF_HUB_CACHE to a writable folder"
        )
    raise error


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
    from huggingface_hub.hf_api import RepoFile

    def listing(path: str) -> list[str]:
        entries = HfApi(endpoint=_endpoint()).list_repo_tree(
            location.repo_id, path_in_repo=path or None, revision=location.revision,
        )
        return sorted(PurePosixPath(e.path).name + ("" if isinstance(e, RepoFile) else "/") for e in entries)

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
        path = Path(spec)
        if not path.exists() and not isinstance(spec, Path) and _SPEC.match(os.fspath(spec)):
            raise FormatError(f"{spec} does not exist here; if you mean the Hub repository, write hf://{spec}")
        return path
    try:
        return download(location)
    except HubError as e:
        if os.fspath(spec).startswith(HUB_PREFIX):
            raise
        # Without hf:// the user may have meant a local folder and mistyped it.
        raise HubError(f"there is no local folder {os.fspath(spec)!r}, and as a Hub name: {e}") from None


# ---------------------------------------------------------------- upload


def _published_name(name: str | None) -> str | None:
    """A model or dataset name fit for a public card: a Hub id as it is, a local path by
    its last part only (the rest says nothing to readers and may be private)."""
    from .models import EMBEDDED_MODEL

    if not name:
        return name
    if name == EMBEDDED_MODEL:
        return f"{EMBEDDED_BASE_MODEL} (saekit's embedded GGUF copy, `{EMBEDDED_MODEL}`)"
    path = Path(name)
    if path.is_absolute() or path.exists() or path.suffix == ".gguf":  # "gpt2" is a Hub id too
        return f"{path.name} (a local copy)"
    return name


def _base_model(model: str | None, api: Any) -> str | None:
    """The Hub id of the model the dictionary reads, for the card's ``base_model``: the
    embedded model's, or a recorded name the Hub confirms is a model (a relative local
    path such as ``models/tiny`` has the same shape as a Hub id)."""
    from .models import EMBEDDED_MODEL

    if model == EMBEDDED_MODEL:
        return EMBEDDED_BASE_MODEL
    if not model or not _REPO_ID.match(model) or Path(model).exists() or not _valid_repo_id(model):
        return None
    try:
        api.model_info(model)
    except Exception:  # noqa: BLE001 - any failure only means the card names no base model
        return None
    return model


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "–" if value is None else str(value)


def model_card(
    folder: str | os.PathLike, repo_id: str, path_in_repo: str = "",
    cfg: DictionaryConfig | None = None, base_model: str | None = None,
) -> str:
    """The README.md of a pushed dictionary: metadata, what it is, its figures, how to load it.

    ``cfg`` saves loading the dictionary again when the caller has it; ``base_model``
    is the model's Hub id for the metadata (``push`` confirms it with the Hub).
    """
    folder = Path(folder)
    fmt = detect_format(folder)
    cfg = cfg or load_any(folder, fmt).cfg
    def sidecar(name: str) -> dict[str, Any]:
        return read_json(folder / name) if (folder / name).is_file() else {}

    evaluation, training = sidecar(EVAL_FILE), sidecar(TRAINING_FILE).get("config", {})
    name = f"{repo_id}/{path_in_repo}" if path_in_repo else repo_id
    model = _published_name(cfg.model)
    meta = ["---", "library_name: saekit", "tags:", "- saekit", "- sparse-autoencoder", "- interpretability",
            f"- {cfg.arch}"]
    if base_model:
        # "adapter": the dictionary reads the model's activations; it is not a fine-tune of it.
        meta += [f"base_model: {base_model}", "base_model_relation: adapter"]
    meta.append("---")

    rows = [("architecture", cfg.arch), ("features (d_sae)", cfg.d_sae), ("input width (d_in)", cfg.d_in),
            ("k", cfg.k), ("hook point", cfg.hook or "not recorded"), ("model", model or "not recorded"),
            ("activation scale (folded into the weights)", cfg.act_scale), ("training context length", cfg.context_length),
            ("stored format", fmt)]
    if training:
        dataset = _published_name(training.get("dataset")) or "saekit's embedded Wikipedia summaries"
        rows += [("training tokens", training.get("tokens")), ("training data", dataset)]
    lines = [*meta, "", f"# {name}", "",
             f"A sparse dictionary (sparse autoencoder) trained with [saekit](https://pypi.org/project/saekit/) "
             f"on the activations of {model or 'a language model'} at `{cfg.hook or '?'}`.", "",
             "| | |", "|---|---|", *(f"| {k} | {_figure(v)} |" for k, v in rows if v is not None), ""]

    regimes = [r for r in ("fixed", "documents") if isinstance(evaluation.get(r), dict)]
    if regimes:
        figures = ("fvu", "l0", "frac_alive", "loss_recovered", "ce_diff", "kl", "n_tokens")
        lines += ["## Evaluation", "",
                  "Held-out text; figures as defined by saekit's docs/metrics.md. `fixed`: contexts as long as in "
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
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    folder = Path(folder)
    if not (_REPO_ID.match(repo_id) and _valid_repo_id(repo_id)):
        raise ConfigError(f"{repo_id!r} is not a Hub repository id; write OWNER/NAME (e.g. alice/smollm2-saes)")
    parts = [p for p in (path_in_repo or "").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"--path {path_in_repo!r} must be a folder inside the repository, without '..'")
    path_in_repo = "/".join(parts)
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder; push the folder `saekit train --out` (or convert) wrote")
    fmt = detect_format(folder)
    cfg = load_any(folder, fmt).cfg  # refuse a corrupt dictionary before anything is uploaded
    if include_checkpoint and not (folder / CHECKPOINT_FILE).is_file():
        raise FormatError(f"{folder} has no {CHECKPOINT_FILE} to include; push without --include-checkpoint")
    names = [*FORMAT_FILES[fmt], *SIDECAR_FILES, *UPLOAD_EXTRA_FILES, *([CHECKPOINT_FILE] if include_checkpoint else [])]
    prefix = f"{path_in_repo}/" if path_in_repo else ""
    files = {prefix + name: str(folder / name) for name in names if (folder / name).is_file()}

    api = HfApi(endpoint=_endpoint())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        card = folder / CARD_FILE
        card_bytes = card.read_bytes() if card.is_file() else \
            model_card(folder, repo_id, path_in_repo, cfg, _base_model(cfg.model, api)).encode()
        ops: list = [CommitOperationAdd(path, local) for path, local in files.items()]
        ops.append(CommitOperationAdd(prefix + CARD_FILE, card_bytes))
        # The Hub shows only the top-level README.md: give a repository without one this card.
        if path_in_repo and not api.file_exists(repo_id, CARD_FILE, revision=revision):
            ops.append(CommitOperationAdd(CARD_FILE, card_bytes))
        ops += [CommitOperationDelete(path) for path in _stale_files(api, repo_id, path_in_repo, revision, set(files))]
        api.create_commit(
            repo_id, operations=ops, revision=revision,
            commit_message=commit_message or f"Upload {fmt} dictionary" + (f" to {path_in_repo}" if path_in_repo else ""),
        )
    except Exception as e:  # noqa: BLE001 - _hub_error re-raises what is not a Hub failure
        raise _hub_error(e, f"cannot push {folder} to {repo_id}", repo_id, revision, upload=True) from None
    return f"{repo_id}/{path_in_repo}" if path_in_repo else repo_id


def _stale_files(api: Any, repo_id: str, path_in_repo: str, revision: str | None, uploading: set[str]) -> list[str]:
    """Files of a dictionary already at ``path_in_repo`` that this upload does not replace
    (another format's weights, an old evaluation): deleted in the same commit, or a later
    load could find the old dictionary beside the new one. The Hub's history keeps them."""
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    managed = {*DICTIONARY_FILES, *SIDECAR_FILES, *UPLOAD_EXTRA_FILES, CHECKPOINT_FILE}
    try:
        entries = list(api.list_repo_tree(repo_id, path_in_repo=path_in_repo or None, revision=revision))
    except EntryNotFoundError:  # a new folder
        return []
    return [e.path for e in entries
            if isinstance(e, RepoFile) and PurePosixPath(e.path).name in managed and e.path not in uploading]


def default_output(spec: str | os.PathLike, filename: str) -> Path:
    """Where a verb writes ``filename`` for ``spec`` unless told: beside a local dictionary;
    for a Hub name (whose files live in the shared cache, not to be written into), in the
    current folder under a name made from it, e.g. ``eval-alice--saes--resid_post.9.json``."""
    location = parse_hub_spec(spec)
    if location is None:
        path = Path(spec)
        return (path if path.is_dir() else path.parent) / filename
    stem, suffix = os.path.splitext(filename)
    # "--" between parts, as the Hub cache names its folders: repository names cannot hold
    # "--", so alice/saes-x and alice/saes/x stay apart; the revision is kept.
    revision = f"@{location.revision}" if location.revision else ""
    parts = [*location.repo_id.split("/"), *location.path.split("/")]
    parts[1] += revision
    slug = "--".join(re.sub(r"[^\w.@-]+", "-", p) for p in parts if p)
    return Path(f"{stem}-{slug}{suffix}")
