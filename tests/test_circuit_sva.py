"""The built-in subject–verb agreement prompts (``circuits.sva``) and ``saekit circuit --data sva``.

The tiny tokenizer is byte-level, where " is" is three tokens and "nurse"/"nurses" differ in
length: as it is, no prompt fits it (refused, saying how the answers split). With the
answers added as tokens of their own, the prompts whose subjects keep their length
("man"/"men", "goose"/"geese") fit, which is what the tests build on.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import saekit
from conftest import random_dictionary, tiny_tokenizer
from saekit.circuits.data import read_circuit_data
from saekit.circuits.sva import AGENTS, DATASETS, SUBJECTS, TEMPLATES, VERBS, SvaOptions, sva_records, write_sva_data
from saekit.cli import main
from saekit.cli.circuit import BUILT_IN_DATA
from saekit.errors import ConfigError, DataError

# " have" stays two tokens (the tiny model's vocabulary has room for five more), so the
# has/have pair never fits and the other two do.
ADDED = [" is", " are", " was", " were", " has"]


def answer_tokenizer():
    tok = tiny_tokenizer()
    tok.add_tokens(ADDED)
    return tok


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_the_prompts_fit_the_tokenizer_and_are_the_same_for_the_same_seed(tmp_path):
    tok = answer_tokenizer()
    records = sva_records(tok, SvaOptions(n=20, seed=3))
    assert len(records) == 20
    assert records == sva_records(tok, SvaOptions(n=20, seed=3))
    assert records != sva_records(tok, SvaOptions(n=20, seed=4))
    lengths = set()
    for r in records:
        assert len(ids(tok, r["clean_answer"])) == 1 and len(ids(tok, r["patch_answer"])) == 1
        assert (r["clean_answer"], r["patch_answer"]) in [(" is", " are"), (" was", " were")]  # not has/have
        assert len(ids(tok, r["clean_prefix"])) == len(ids(tok, r["patch_prefix"]))
        lengths.add(len(ids(tok, r["clean_prefix"])))
        # clean singular, patch plural; the phrase's noun (the attractor) plural
        clean, patch = r["clean_prefix"].split(), r["patch_prefix"].split()
        assert clean[2:] == patch[2:] and (clean[1], patch[1]) in SUBJECTS
        assert clean[-1].endswith("s")
    assert len(lengths) == 1  # one token length: a position is the same word in every prompt

    path = tmp_path / "sva.jsonl"
    assert write_sva_data(path, tok, SvaOptions(n=20, seed=3)) == 20
    data = read_circuit_data(path, tok)  # every line passes the circuits' own checks
    assert len(data) == 20 and data.has_patch_answer and data.lengths_equal
    assert [e.clean_prefix for e in data.examples] == [r["clean_prefix"] for r in records]


def test_the_options_choose_templates_numbers_and_attractors():
    tok = answer_tokenizer()
    both = sva_records(tok, SvaOptions(n=40, templates=("simple", "rc"), clean_number="both", attractor=False,
                                       one_length=False))
    assert {r["template"] for r in both} == {"simple", "rc"}
    plural_clean = [r for r in both if r["clean_answer"] in (" are", " were")]
    assert plural_clean and len(plural_clean) < len(both)
    for r in both:
        plural = r["clean_answer"] in (" are", " were")
        subject = r["clean_prefix"].split()[1]
        assert subject == next(s[int(plural)] for s in SUBJECTS if subject in s)
        if r["template"] == "rc":  # no attractor: the clause's subject has the clean subject's number
            assert r["clean_prefix"].split()[4] in [a[int(plural)] for a in AGENTS]
    only_was = sva_records(tok, SvaOptions(n=5, verbs=(" was",)))
    assert {r["clean_answer"] for r in only_was} == {" was"}


def test_a_tokenizer_no_prompt_fits_is_refused_saying_why():
    with pytest.raises(DataError, match=r"answers must be single tokens, but ' is' is \[' ', 'i', 's'\]"):
        sva_records(tiny_tokenizer())
    with pytest.raises(DataError, match="answers must be single tokens"):
        sva_records(answer_tokenizer(), SvaOptions(verbs=(" has",)))  # " have" is two tokens


@pytest.mark.parametrize("kwargs, says", [
    (dict(n=0), "at least 1"), (dict(n=True), "at least 1"), (dict(seed="1"), "seed"),
    (dict(templates=("pp", "cleft")), "unknown template 'cleft'"), (dict(templates=()), "at least one template"),
    (dict(verbs=(" are",)), "unknown verb ' are'"), (dict(clean_number="dual"), "clean_number"),
])
def test_bad_options_are_refused(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        SvaOptions(**kwargs)


def test_the_cli_names_the_built_in_sets_the_module_defines():
    assert set(BUILT_IN_DATA) == set(DATASETS)
    assert {t for o in DATASETS.values() for t in o.templates} == set(TEMPLATES)
    assert {v for v, _ in VERBS} == set(SvaOptions().verbs)


@pytest.fixture(scope="module")
def sva_model(model_dir, tmp_path_factory):
    """The tiny model with the answers as tokens of its own, and two dictionaries for it."""
    folder = tmp_path_factory.mktemp("tiny-sva")
    for f in model_dir.iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    answer_tokenizer().save_pretrained(folder)
    lm = saekit.load_model(str(folder))
    assert len(lm.tokenizer) <= lm.model.config.vocab_size
    dicts = []
    for i, hook in enumerate(("resid_post.0", "resid_post.1")):
        d = random_dictionary("relu", lm.d_model, 24, i, hook=hook, model=lm.name, scale=0.2)
        with torch.no_grad():
            d.after_step()
        saekit.save(d, folder.parent / f"{folder.name}-{hook}")
        dicts.append(str(folder.parent / f"{folder.name}-{hook}"))
    return folder, dicts


def test_saekit_circuit_builds_the_sva_prompts_for_the_models_tokenizer(sva_model, tmp_path, capsys):
    folder, dicts = sva_model
    out = tmp_path / "c"
    base = ["circuit", "--dictionaries", *dicts, "--model", str(folder), "--data", "sva", "--examples", "6",
            "--seed", "1", "--out", str(out)]
    assert main([*base, "--node-threshold", "1e9"]) == 2  # no node: the effects are kept to choose a threshold by
    assert "built 6 sva prompts" in capsys.readouterr().out
    written = (out / "sva.jsonl").read_text().splitlines()
    tok = saekit.load_model(str(folder)).tokenizer
    assert [json.loads(line) for line in written] == sva_records(tok, SvaOptions(n=6, seed=1))
    largest = abs(json.loads((out / "effects.json").read_text())["nodes"][0]["effect"])
    assert main([*base, "--node-threshold", str(largest / 2)]) == 0
    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["metadata"]["n_examples"] == 6 and circuit["metadata"]["data_file"] == str(out / "sva.jsonl")
    assert circuit["nodes"] and (out / "circuit.html").exists()


def test_built_in_data_flags_are_checked_before_the_model_loads(sva_model, model_dir, tmp_path, monkeypatch, capsys):
    folder, dicts = sva_model
    base = ["circuit", "--dictionaries", *dicts, "--model", str(folder), "--out", str(tmp_path / "o")]
    calls = []
    real = saekit.models.load_model
    monkeypatch.setattr(saekit.models, "load_model", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"clean_prefix": "The man", "clean_answer": " is"}) + "\n")
    for args, says in (([*base, "--data", str(prompts), "--examples", "4"], "--examples choose the prompts"),
                       ([*base, "--data", "sva", "--examples", "0"], "--examples must be at least 1")):
        assert main(args) == 2
        assert says in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sva").write_text("")
    assert main([*base, "--data", "sva"]) == 2
    assert "names a built-in prompt set and a file here" in capsys.readouterr().err
    assert not calls
    (tmp_path / "sva").unlink()
    # A tokenizer no prompt fits (the byte-level one as it is): refused once it loads, nothing written.
    plain = ["circuit", "--dictionaries", *dicts, "--model", str(model_dir), "--allow-other-model", "--data", "sva",
             "--out", str(tmp_path / "o")]
    assert main(plain) == 2
    assert "answers must be single tokens" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
