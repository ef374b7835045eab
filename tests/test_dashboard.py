"""Feature dashboards: the site's data against the examples it was built from, the folder's
life cycle (built aside, refused when it is someone else's, never left looking complete when
interrupted), `saekit dashboard` and `saekit serve`, and bad input refused before any work.

The pages themselves (search, sort, hover, file://) are driven in a real browser by
test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import math
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import saekit
from saekit.cli import main
from saekit.errors import ConfigError, DataError, OutputError
from saekit.interpret import dashboard
from saekit.interpret.dashboard import (
    check_dashboard_folder,
    is_complete_dashboard,
    is_dashboard,
    readable_token,
    readable_tokens,
    write_dashboard,
)

from conftest import random_dictionary, tiny_tokenizer

# A byte-level vocabulary with the tokens the pages must show right: spaces (Ġ), a newline
# (Ċ), a euro sign stored as its three bytes, and markup that must display, not run.
PIECES = ["<pad>", "<bos>", "<eos>", "Ġriver", "Ġthe", "<script>", "Ċ", "Ġ<img", "Ġsrc=x", "Ġonerror=window.pwned=1>",
          "ĠâĤ¬", "ĠThe", "Ġcity", "Ġking", "Ġwar", "Ġof"]
SHOWN = {i: p.replace("Ġ", " ").replace("Ċ", "↵").replace("âĤ¬", "€") for i, p in enumerate(PIECES)}


class PieceTokenizer:
    """The part of a Hugging Face tokenizer the dashboard uses, over PIECES."""

    def __len__(self) -> int:
        return len(PIECES)

    def get_vocab(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(PIECES)}

    def convert_ids_to_tokens(self, ids):
        return [PIECES[i] for i in ids]


def hand_examples(features=(2, 5, 7, 11), never=(7,), k_top=3, k_sample=8, window=(2, 1), tokens_seen=1000, seed=0):
    """A FeatureExamples made by hand: known values, a feature that never fired (``never``),
    a top example cut by the start of the text, and markup among the tokens."""
    from saekit.interpret.examples import FeatureExamples

    g = torch.Generator().manual_seed(seed)
    n, W = len(features), window[0] + 1 + window[1]

    def windows(k, values):
        tokens = torch.randint(3, len(PIECES), (n, k, W), generator=g)
        acts = torch.rand(n, k, W, generator=g) * (torch.rand(n, k, W, generator=g) > 0.4)
        acts[:, :, window[0]] = values
        return tokens, acts

    top_values = (torch.rand(n, k_top, generator=g) * 5 + 1).sort(-1, descending=True).values
    sample_values = (torch.rand(n, k_sample, generator=g) * 3 + 0.1).sort(-1, descending=True).values
    top_tokens, top_acts = windows(k_top, top_values)
    sample_tokens, sample_acts = windows(k_sample, sample_values)
    top_tokens[0, 0, 0], top_acts[0, 0, 0] = -1, 0.0  # the first example starts at the text's start
    top_tokens[0, 0, window[0]] = PIECES.index("<script>")  # its selected token is markup
    edges = torch.logspace(-2, 2, 41)
    histogram = torch.randint(0, 50, (n, 40), generator=g) * (torch.arange(40) > 15)
    count = histogram.sum(-1)
    activation_sum = count.double() * 1.5
    max_activation = top_values[:, 0].clone()
    random_tokens = torch.randint(3, len(PIECES), (2, W), generator=g)
    random_acts = torch.rand(n, 2, W, generator=g)
    for f in never:
        r = list(features).index(f)
        count[r], activation_sum[r], max_activation[r], histogram[r] = 0, 0.0, 0.0, 0
        top_values[r], sample_values[r] = float("nan"), float("nan")
        top_tokens[r], sample_tokens[r], top_acts[r], sample_acts[r], random_acts[r] = -1, -1, 0.0, 0.0, 0.0
    return FeatureExamples(
        dictionary="runs/hand", hook="resid_post.1", model="tiny", features=torch.tensor(features), tokens_seen=tokens_seen,
        window=window, count=count, activation_sum=activation_sum, max_activation=max_activation, bin_edges=edges,
        histogram=histogram, top_values=top_values, top_tokens=top_tokens, top_acts=top_acts,
        sample_values=sample_values, sample_tokens=sample_tokens, sample_acts=sample_acts,
        random_tokens=random_tokens, random_acts=random_acts,
    )


def hand_views(examples, k=4, seed=1):
    """Output tokens and nearest features for the hand-made examples, as directions.py returns them."""
    from saekit.interpret.directions import OutputTokens

    g = torch.Generator().manual_seed(seed)
    n = len(examples.features)
    logits = torch.randn(n, len(PIECES), generator=g)
    top = logits.topk(k, -1)
    bottom = logits.topk(k, -1, largest=False)
    outputs = OutputTokens(features=examples.features.clone(), top_ids=top.indices, top_logits=top.values,
                           bottom_ids=bottom.indices, bottom_logits=bottom.values)
    near_ids = torch.tensor([[5, 11, 40], [2, 11, 7], [2, 5, 11], [5, 2, 99]])[:n]
    cosines = torch.tensor([[0.9, 0.5, 0.1], [0.9, 0.4, 0.2], [0.3, 0.2, 0.1], [0.6, 0.5, 0.05]])[:n]
    return outputs, (near_ids, cosines)


EXPLANATIONS = {
    5: {"feature": 5, "explanation": "names of <b>rivers</b>", "explainer": "tiny-explainer", "scorer": "tiny-scorer",
        "scores": {"detection": {"balanced_accuracy": 0.75, "auroc": 0.8, "n": 20}, "fuzzing": None}},
    11: {"feature": 11, "explanation": "the word 'war'", "explainer": "tiny-explainer"},
}


def read_data(site: Path, name: str):
    """A data chunk as the page receives it (the JSON inside ``saekitData.add(name, ...)``)."""
    text = (site / "data" / f"{name}.js").read_text(encoding="utf-8")
    prefix = f'saekitData.add("{name}",'
    assert text.startswith(prefix) and text.endswith(");\n"), text[:80]
    return json.loads(text[len(prefix):-3])


class Vocabulary:
    """The site's vocabulary (data/vocab.js): token ids by rank, most used first, and their texts."""

    def __init__(self, data: dict):
        self.ids, self.texts = data["ids"], data["texts"]
        assert len(set(self.ids)) == len(self.ids) == len(self.texts)
        self.text_of = dict(zip(self.ids, self.texts))

    def window(self, example: list) -> list[int]:
        """The token ids of an example's whole window (-1 outside the text), from its code string."""
        return [self.ids[rank] for rank in numbers(example[0])]

    def shown_text(self, example: list) -> str:
        return "".join(self.text_of[t] for t in self.window(example) if t >= 0)


def numbers(code: str) -> list[int]:
    """The numbers a code string holds, decoded here as the documented scheme says (not with the
    module's own decoder): a number's last character is of CODE_LAST, any before it of CODE_MORE."""
    last, more = dashboard.CODE_LAST, dashboard.CODE_MORE
    out, rest, continued = [], 0, 0
    for c in code:
        if c in more:
            rest, continued = rest * len(more) + more.index(c), continued + 1
            continue
        out.append(sum(len(last) * len(more) ** m for m in range(continued)) + rest * len(last) + last.index(c))
        rest, continued = 0, 0
    return out


def activations(example: list, length: int) -> list[float]:
    """An example's activations over its whole window: its second code string holds, for each
    non-zero one, its position, its three significant digits less 100 (+900 if negative) and its
    power of ten zigzagged (0, -1, 1, -2, ... as 0, 1, 2, 3, ...)."""
    dense = [0.0] * length
    coded = numbers(example[1])
    assert len(coded) % 3 == 0
    for position, digits, zigzag in zip(coded[0::3], coded[1::3], coded[2::3]):
        power = -(zigzag + 1) // 2 if zigzag % 2 else zigzag // 2
        value = (digits % 900 + 100) * 10**power if power >= 0 else (digits % 900 + 100) / 10**-power
        assert dense[position] == 0.0  # each position once
        dense[position] = -value if digits >= 900 else value
    return dense


def all_pages(site: Path) -> tuple[dict, list[list], dict[int, dict], Vocabulary]:
    """(meta, index rows, feature pages by index, the site's vocabulary)."""
    meta = read_data(site, "meta")
    rows = [row for c in range(meta["index_chunks"]) for row in read_data(site, f"index-{c:05d}")["rows"]]
    pages = {}
    for c in range(len(meta["feature_chunks"])):
        for page in read_data(site, f"features-{c:05d}")["features"]:
            pages[page["f"]] = page
    return meta, rows, pages, Vocabulary(read_data(site, "vocab"))


def three_digits(values) -> list[float]:
    """Values to three significant digits, as the windows' activations are kept (and shown)."""
    return [float(f"{v:.3g}") for v in values]


# ------------------------------------------------------------------------- tokens


def test_tokens_read_as_text_with_spaces_newlines_and_bytes_made_visible():
    assert readable_token("Ġriver", byte_level=True) == " river"
    assert readable_token("Ċ", byte_level=True) == "↵"
    assert readable_token("ĉ", byte_level=True) == "⇥"
    assert readable_token("ĠâĤ¬", byte_level=True) == " €"
    assert readable_token("âĤ", byte_level=True) == "\\xe2\\x82"  # half a character: its bytes
    assert readable_token("▁river", byte_level=False) == " river"
    assert readable_token("<0x0A>", byte_level=False) == "↵"
    assert readable_token("<0x07>", byte_level=False) == "\\x07"
    assert readable_token("<script>", byte_level=True) == "<script>"
    assert readable_token(None, byte_level=True) == "<unknown>"
    tok = tiny_tokenizer()
    ids = tok("the river\nof kings").input_ids
    texts = readable_tokens(tok, ids + [10_000])
    assert "".join(texts[i] for i in ids[1:]) == "the river↵of kings"
    assert texts[1] == "<bos>" and texts[10_000] == "<id 10000>"  # an id beyond the tokenizer's vocabulary


# ------------------------------------------------------------------------- the site's data


def test_windows_travel_as_codes_that_decode_to_their_ranks_the_most_used_in_one_character():
    from saekit.interpret.dashboard import _code_table, encode_ranks

    count = 64 + 27 * 64 + 27 * 27 * 64 + 500  # codes of one to four characters
    codes = _code_table(count)
    assert (codes != 0).sum(1).tolist() == [1] * 64 + [2] * 27 * 64 + [3] * 27 * 27 * 64 + [4] * 500
    ranks = torch.arange(count).reshape(-1, 1).repeat(1, 3)
    ranks[:, 1] = ranks[:, 1].flip(0)
    ranks[:, 2] = torch.randint(0, count, (count,), generator=torch.Generator().manual_seed(0))
    encoded = encode_ranks(ranks.numpy(), codes)
    identity = Vocabulary({"ids": list(range(count)), "texts": [str(i) for i in range(count)]})
    assert [identity.window([code]) for code in encoded] == ranks.tolist()
    assert not set('"\\<') & set("".join(encoded))  # nothing a JSON string or a script would need escaped
    assert dashboard.decode_ranks("".join(encoded[:50])) == ranks[:50].flatten().tolist()

    # activations: three significant digits and a power of ten, whatever the sign and magnitude
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(400, 33, generator=g).exp().pow(6) * (torch.rand(400, 33, generator=g) < 0.3)
    acts[:, 0] = torch.tensor([0.0625, 999.7, 9.9996, 1e-7, 3e9, -2.345, -0.00999, 100.0]).repeat(50)
    coded = dashboard._activation_codes(acts.numpy())
    assert [activations([None, code], 33) for code in coded] == [three_digits(row) for row in acts.double().tolist()]
    assert sum(map(len, coded)) < 6 * int((acts != 0).sum())  # about five characters an activation


def test_the_vocabulary_ranks_tokens_by_use_and_holds_the_output_tokens(tmp_path):
    examples = hand_examples()
    outputs, nearest = hand_views(examples)
    write_dashboard(tmp_path / "site", examples, PieceTokenizer(), output_tokens=outputs, nearest=nearest)
    _, _, _, vocab = all_pages(tmp_path / "site")
    used = torch.cat([examples.top_tokens[~examples.top_values.isnan()].flatten(),
                      examples.sample_tokens[~examples.sample_values.isnan()].flatten()])
    uses = [int((used == t).sum()) for t in vocab.ids]
    assert uses == sorted(uses, reverse=True) and set(vocab.ids) >= set(used.tolist())
    assert set(vocab.ids) >= set(outputs.top_ids.flatten().tolist() + outputs.bottom_ids.flatten().tolist())
    assert all(vocab.text_of[t] == SHOWN[t] for t in vocab.ids if t >= 0)


def test_the_site_holds_every_feature_with_the_figures_and_examples_it_was_built_from(tmp_path):
    examples = hand_examples()
    outputs, nearest = hand_views(examples)
    index = write_dashboard(tmp_path / "site", examples, PieceTokenizer(), output_tokens=outputs, nearest=nearest,
                            explanations=EXPLANATIONS, d_sae=100, index_chunk=3, feature_chunk=2)
    site = tmp_path / "site"
    assert index == site / "index.html" and is_complete_dashboard(site)
    assert not (site / ".partial").exists()
    for name in ("index.html", "feature.html", "assets/saekit.js", "assets/index.js", "assets/feature.js", "assets/saekit.css"):
        assert (site / name).is_file(), name
    meta, rows, pages, vocab = all_pages(site)
    features = examples.features.tolist()
    before = examples.window[0]
    assert meta["n_features"] == 4 and meta["d_sae"] == 100 and meta["tokens_seen"] == 1000
    assert meta["index_chunks"] == 2 and meta["feature_chunks"] == [[2, 5], [7, 11]]
    assert meta["explained"] == 2 and meta["scored"] == 1
    assert [row[0] for row in rows] == features
    for r, f in enumerate(features):
        row, page = rows[r], pages[f]
        count = int(examples.count[r])
        assert page["count"] == count
        assert row[1] == page["density"] == pytest.approx(count / 1000, rel=1e-3)
        assert row[2] == page["max"] == pytest.approx(float(examples.max_activation[r]), rel=1e-3)
        if count:
            assert row[3] == page["mean"] == pytest.approx(float(examples.mean_activation[r]), rel=1e-3)
        else:
            assert row[3] is None and page["mean"] is None  # never fired: no mean (NaN is not JSON)
        # top examples: the whole window, activations, centre and value as FeatureExamples gives them
        top = examples.top_examples(f)
        assert len(page["top"]) == len(top)
        for j, (shown, e) in enumerate(zip(page["top"], top)):
            window = vocab.window(shown)
            assert window == examples.top_tokens[r, j].tolist()
            assert [t for t in window if t >= 0] == e.tokens
            assert sum(t >= 0 for t in window[:before]) == e.centre  # the window's token `before` is the example's
            assert shown[2] == pytest.approx(e.value, rel=1e-3)
            dense = activations(shown, len(window))
            assert dense == three_digits(examples.top_acts[r, j].tolist())  # exactly what the page shows
            assert [a for a, t in zip(dense, window) if t >= 0] == pytest.approx(e.acts, rel=5e-3, abs=1e-9)
            assert vocab.shown_text(shown) == "".join(SHOWN[t] for t in e.tokens)
        groups = [g for g in examples.quantile_groups(f, 4) if g] if count else []
        assert [[x[2] for x in group] for group in page["quantiles"]] == [
            pytest.approx([e.value for e in group], rel=1e-3) for group in groups]
        sampled = [x for group in page["quantiles"] for x in group]
        assert [vocab.window(x) for x in sampled] == [examples.sample_tokens[r, j].tolist() for j in range(len(sampled))]
        assert [activations(x, examples.sample_acts.shape[-1]) for x in sampled] == [
            three_digits(examples.sample_acts[r, j].tolist()) for j in range(len(sampled))]
        # the histogram, from its first to its last non-empty bin
        first, counts = page["hist"]
        full = examples.histogram[r].tolist()
        assert sum(counts) == sum(full) and (not counts or counts == full[first:first + len(counts)])
        # top tokens: the most frequent centre tokens of the top examples, decoded
        centres = [e.tokens[e.centre] for e in top]
        assert row[4] == [SHOWN[t] for t in sorted(set(centres), key=lambda t: (-centres.count(t), centres.index(t)))][:5]
        # output tokens and nearest features, in order
        assert [i for i, _ in page["boosts"]] == outputs.top_ids[r].tolist()
        assert [v for _, v in page["boosts"]] == pytest.approx(outputs.top_logits[r].tolist(), rel=1e-3)
        assert [i for i, _ in page["suppresses"]] == outputs.bottom_ids[r].tolist()
        assert all(vocab.text_of[i] == SHOWN[i] for i, _ in page["boosts"] + page["suppresses"])
        assert [i for i, _ in page["nearest"]] == nearest[0][r].tolist()
    assert pages[7]["top"] == [] and pages[7]["quantiles"] == [] and pages[7]["hist"] == [0, []]
    cut = vocab.window(pages[2]["top"][0])  # cut by the text's start; its own token is markup
    assert cut[0] == -1 and vocab.text_of[cut[before]] == "<script>" and vocab.text_of[-1] is None
    assert rows[1][5] == "names of <b>rivers</b>" and rows[1][6] == 0.75 and rows[1][7] is None
    assert pages[5]["explanation"]["scores"]["detection"] == {"balanced_accuracy": 0.75, "auroc": 0.8, "n": 20}
    assert rows[3][5] == "the word 'war'" and rows[3][6] is None and pages[11]["explanation"]["scores"] == {}
    assert pages[2]["explanation"] is None and rows[0][5] is None
    # markup in the data never closes a script element, whatever loads it
    assert all("</" not in p.read_text() for p in (site / "data").iterdir())
    # the examples are saved beside the site, for saekit explain --examples
    from saekit.interpret.examples import FeatureExamples

    again = FeatureExamples.load(site)
    assert torch.equal(again.features, examples.features) and torch.equal(again.top_tokens, examples.top_tokens)


def test_without_output_tokens_nearest_features_or_explanations_the_pages_leave_them_out(tmp_path):
    examples = hand_examples(features=(0, 1), never=())
    write_dashboard(tmp_path / "site", examples, PieceTokenizer(), save_examples=False)
    meta, rows, pages, _ = all_pages(tmp_path / "site")
    assert not meta["has_output_tokens"] and not meta["has_nearest"] and meta["explained"] == 0
    assert "boosts" not in pages[0] and "nearest" not in pages[0] and pages[0]["explanation"] is None
    assert not (tmp_path / "site" / "examples.json").exists()


def test_views_for_other_features_than_the_examples_are_refused(tmp_path):
    examples = hand_examples()
    outputs, nearest = hand_views(examples)
    outputs.features = torch.tensor([2, 5, 7, 12])
    with pytest.raises(ConfigError, match="output tokens are for other features"):
        write_dashboard(tmp_path / "a", examples, PieceTokenizer(), output_tokens=outputs)
    with pytest.raises(ConfigError, match="nearest features"):
        write_dashboard(tmp_path / "b", examples, PieceTokenizer(), nearest=(nearest[0][:3], nearest[1][:3]))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_a_large_dictionary_is_split_into_chunk_files(tmp_path):
    """The index loads INDEX_CHUNK features per file and a feature page one file of FEATURE_CHUNK:
    no file grows with the dictionary."""
    n = 2500
    examples = hand_examples(features=tuple(range(0, 2 * n, 2)), never=(), k_top=2, k_sample=4)
    write_dashboard(tmp_path / "site", examples, PieceTokenizer(), save_examples=False)
    meta, rows, pages, _ = all_pages(tmp_path / "site")
    assert meta["index_chunks"] == math.ceil(n / dashboard.INDEX_CHUNK)
    assert len(meta["feature_chunks"]) == math.ceil(n / dashboard.FEATURE_CHUNK)
    assert meta["feature_chunks"][1] == [2 * dashboard.FEATURE_CHUNK, 2 * (2 * dashboard.FEATURE_CHUNK - 1)]
    assert [r[0] for r in rows] == list(range(0, 2 * n, 2)) and sorted(pages) == list(range(0, 2 * n, 2))


# ------------------------------------------------------------------------- the folder


def test_a_folder_that_holds_something_else_is_refused_unless_overwrite_and_its_files_are_kept(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds no saekit dashboard \\(notes.txt\\).*--overwrite"):
        check_dashboard_folder(out)
    assert check_dashboard_folder(out, overwrite=True) == out
    write_dashboard(out, hand_examples(), PieceTokenizer())
    assert (out / "notes.txt").read_text() == "mine" and is_complete_dashboard(out)
    check_dashboard_folder(out)  # now a dashboard: rewritten without --overwrite
    (tmp_path / "explained").mkdir()
    (tmp_path / "explained" / "explanations.json").write_text("{}")
    check_dashboard_folder(tmp_path / "explained")  # what saekit explain leaves there is no obstacle
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_dashboard_folder(tmp_path / "file")


def test_an_interrupted_write_leaves_the_previous_dashboard_or_none_that_looks_complete(tmp_path, monkeypatch):
    site = tmp_path / "site"
    real = dashboard._data_script

    def interrupted(name, data):
        if name == "features-00001":
            raise KeyboardInterrupt
        return real(name, data)

    monkeypatch.setattr(dashboard, "_data_script", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dashboard(site, hand_examples(), PieceTokenizer(), feature_chunk=2)
    assert not is_complete_dashboard(site) and not (site / "index.html").exists() and not (site / ".partial").exists()
    monkeypatch.setattr(dashboard, "_data_script", real)
    write_dashboard(site, hand_examples(features=(2, 5, 7, 11)), PieceTokenizer(), feature_chunk=2)
    before = read_data(site, "meta")["feature_chunks"]
    monkeypatch.setattr(dashboard, "_data_script", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dashboard(site, hand_examples(features=(1, 3, 4, 8), never=()), PieceTokenizer(), feature_chunk=2)
    assert is_complete_dashboard(site) and read_data(site, "meta")["feature_chunks"] == before  # the old one, whole
    assert not (site / ".partial").exists()


# ------------------------------------------------------------------------- saekit dashboard


@pytest.fixture(scope="module")
def dictionary_folder(model_dir, tmp_path_factory):
    lm = saekit.load_model(str(model_dir))
    d = random_dictionary("relu", lm.d_model, 48, 0, hook="resid_post.1", model=lm.name, scale=0.2)
    with torch.no_grad():
        d.after_step()
    folder = tmp_path_factory.mktemp("dict") / "d"
    saekit.save(d.requires_grad_(False), folder)
    return folder


def dashboard_args(folder, corpus, out, *extra):
    return ["dashboard", str(folder), "--out", str(out), "--dataset", str(corpus), "--tokens", "1500",
            "--context-length", "32", "--top", "5", "--samples", "8", *extra]


def test_saekit_dashboard_writes_the_site_and_says_where(dictionary_folder, corpus, tmp_path, capsys):
    from saekit.interpret.examples import FeatureExamples

    out = tmp_path / "site"
    (dictionary_folder / "explanations.json").unlink(missing_ok=True)
    assert main(dashboard_args(dictionary_folder, corpus, out, "--features", "3,1,10-12")) == 0
    printed = capsys.readouterr().out
    assert f"open {(out / 'index.html').resolve().as_uri()}" in printed and f"saekit serve {out}" in printed
    meta, rows, pages, vocab = all_pages(out)
    assert [r[0] for r in rows] == [1, 3, 10, 11, 12] and meta["d_sae"] == 48
    assert meta["hook"] == "resid_post.1" and meta["dictionary"] == str(dictionary_folder)
    examples = FeatureExamples.load(out)
    assert examples.features.tolist() == [1, 3, 10, 11, 12] and examples.top_values.shape[1] == 5
    tok = saekit.load_model(meta["model"]).tokenizer
    for r, f in enumerate(examples.features.tolist()):
        top = examples.top_examples(f)
        assert [x[2] for x in pages[f]["top"]] == pytest.approx([e.value for e in top], rel=1e-3)
        if top:
            assert vocab.shown_text(pages[f]["top"][0]) == "".join(readable_tokens(tok, top[0].tokens)[t]
                                                                        for t in top[0].tokens)
        assert len(pages[f]["boosts"]) == len(pages[f]["suppresses"]) == 10 and len(pages[f]["nearest"]) == 10
    assert all(f not in [i for i, _ in pages[f]["nearest"]] for f in pages)


def test_saekit_dashboard_shows_explanations_and_defaults_to_the_first_features(dictionary_folder, corpus, tmp_path,
                                                                                  capsys):
    from saekit.interpret.explanations import read_explanations

    out = tmp_path / "site"
    out.mkdir()
    record = {"feature": 2, "explanation": "the word 'river'", "explainer": "tiny", "prompt_version": 1,
              "scorer": "tiny", "scores": {"detection": {"balanced_accuracy": 0.9, "auroc": 0.95, "n": 10},
                                           "fuzzing": {"balanced_accuracy": 0.6, "auroc": None, "n": 10}},
              "tokens_used": {"prompt": 10, "completion": 5}}
    document = {"schema": "saekit.explanations/1", "dictionary": str(dictionary_folder), "hook": "resid_post.1",
                "model": "tiny", "features": {"2": record}}
    (out / "explanations.json").write_text(json.dumps(document))
    assert read_explanations(out / "explanations.json")[2]["explanation"] == "the word 'river'"
    assert main(dashboard_args(dictionary_folder, corpus, out)) == 0  # found in --out
    assert "explanations.json (1 of the 48 features shown)" in capsys.readouterr().out
    meta, rows, pages, _ = all_pages(out)
    assert [r[0] for r in rows] == list(range(48))  # a dictionary smaller than the default 200: all of it
    assert rows[2][5:] == ["the word 'river'", 0.9, 0.6] and meta["scored"] == 1
    assert pages[2]["explanation"]["scores"]["fuzzing"]["auroc"] is None
    assert (out / "explanations.json").exists()  # a rewrite keeps it
    assert main(dashboard_args(dictionary_folder, corpus, out, "--all", "--explanations",
                               str(out / "explanations.json"))) == 0
    assert len(all_pages(out)[1]) == 48


def test_bad_input_is_refused_before_the_model_loads(dictionary_folder, corpus, tmp_path, monkeypatch, capsys):
    import saekit.models

    monkeypatch.setattr(saekit.models, "load_model", lambda *a, **kw: pytest.fail("the model was loaded"))

    def refused(*extra, out=None):
        assert main(dashboard_args(dictionary_folder, corpus, out or tmp_path / "site", *extra)) == 2
        return capsys.readouterr().err

    assert "feature 48 is out of range; this dictionary has 48 features, 0-47" in refused("--features", "40-48")
    assert "neither an index" in refused("--features", "a-b")
    assert "--tokens must be at least 1" in refused("--tokens", "0")
    assert "--explanations" in refused("--explanations", str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something/else"}))
    assert "bad.json" in refused("--explanations", str(bad))
    (tmp_path / "ro").mkdir()
    real_access = os.access
    # Tests may run as root, for whom chmod does not make a folder read-only.
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path / "ro")
                        else real_access(p, mode, **kw))
    assert "cannot write into --out" in refused(out=tmp_path / "ro" / "site")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "results.csv").write_text("1,2\n")
    assert "holds no saekit dashboard (results.csv)" in refused(out=busy)
    assert main(dashboard_args(dictionary_folder, corpus, tmp_path / "x", "--all", "--features", "1")) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["dashboard", str(dictionary_folder)]) == 2  # --out is required
    assert not (tmp_path / "site").exists()  # nothing left behind


def test_saekit_dashboard_refuses_another_model_before_loading_it(dictionary_folder, corpus, tmp_path, monkeypatch,
                                                                   capsys):
    import saekit.models

    monkeypatch.setattr(saekit.models, "load_model", lambda *a, **kw: pytest.fail("the model was loaded"))
    assert main(dashboard_args(dictionary_folder, corpus, tmp_path / "site", "--model", "gpt2")) == 2
    assert "--allow-other-model" in capsys.readouterr().err


# ------------------------------------------------------------------------- saekit serve


def test_serve_gives_the_site_on_localhost_and_hides_the_folder_s_hidden_files(tmp_path):
    from saekit.cli.serve import dashboard_server

    site = tmp_path / "site"
    write_dashboard(site, hand_examples(), PieceTokenizer())
    (site / ".saekit.lock").write_text('{"pid": 1}')
    server = dashboard_server(site, 0)
    host, port = server.server_address[:2]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert host == "127.0.0.1"
        base = f"http://{host}:{port}/"
        with urllib.request.urlopen(base) as r:
            assert r.status == 200 and b"assets/index.js" in r.read()
        with urllib.request.urlopen(base + "data/meta.js") as r:
            assert r.read().startswith(b'saekitData.add("meta"')
        for hidden in (".saekit.lock", "data/../.saekit.lock"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(base + hidden)
        with pytest.raises(ConfigError, match=f"port {port} is in use"):
            dashboard_server(site, port)
    finally:
        server.shutdown()
        server.server_close()


def test_serve_refuses_a_folder_without_a_finished_dashboard(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "holds no dashboard" in capsys.readouterr().err
    (tmp_path / ".partial").mkdir()
    assert main(["serve", str(tmp_path)]) == 2
    assert "unfinished dashboard" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert is_dashboard(tmp_path)
    with pytest.raises(DataError):
        from saekit.cli.serve import dashboard_server

        dashboard_server(tmp_path, 0)


def test_a_decoder_outside_the_residual_stream_gives_pages_without_output_tokens(dictionary_folder, corpus, tmp_path,
                                                                                 monkeypatch, capsys):
    from saekit.errors import DimensionError
    from saekit.interpret import directions

    def no_unembedding_view(*args, **kwargs):
        raise DimensionError("the dictionary's decoder rows have width 64 (mlp hidden)")

    monkeypatch.setattr(directions, "output_tokens", no_unembedding_view)
    assert main(dashboard_args(dictionary_folder, corpus, tmp_path / "site", "--features", "0-3")) == 0
    assert "the pages show no output tokens: the dictionary's decoder rows have width 64" in capsys.readouterr().err
    meta, _, pages, _ = all_pages(tmp_path / "site")
    assert not meta["has_output_tokens"] and meta["has_nearest"] and "boosts" not in pages[0]
