"""``saekit shift`` end to end on a tiny random model: the synthetic task and a JSONL task
give what the library gives on the same task (the same code path), the features can be
given, and every bad input is refused before the model loads, saying what to do."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

import saekit
from conftest import random_dictionary
from saekit.circuits import SplicedModel, read_spurious_task, shift, spurious_task
from saekit.cli import main
from saekit.errors import DataError

SIZES = ["--n-train", "16", "--n-test", "16", "--n-judge", "8"]


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


@pytest.fixture(scope="module")
def folders(lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("dicts")
    out = []
    for i, hook in enumerate(("resid_post.0", "resid_post.1")):
        d = random_dictionary("relu", lm.d_model, 24, i, hook=hook, model=lm.name, scale=0.2)
        with torch.no_grad():
            d.after_step()  # unit-norm decoder rows, as trained ones have
        saekit.save(d, root / hook)
        out.append(str(root / hook))
    return out


@pytest.fixture(scope="module")
def synthetic_run(folders, model_dir, tmp_path_factory):
    """One run on the synthetic task: its folder and what it printed."""
    out = tmp_path_factory.mktemp("run") / "shift"
    args = ["shift", "--dictionaries", *folders, "--model", str(model_dir), "--synthetic", *SIZES, "--seed", "1",
            "--top-k", "6", "--min-association", "0", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return out, printed.getvalue()


def lines(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_the_synthetic_task_gives_what_the_library_gives(synthetic_run, folders, lm):
    out, printed = synthetic_run
    saved = json.loads((out / "shift.json").read_text())
    task = spurious_task(1, n_train=16, n_test=16, n_judge=8)
    model = SplicedModel(lm, [saekit.load(f) for f in folders])
    expected = shift(model, task, top_k=6, min_association=0.0)
    assert saved == json.loads(json.dumps(expected.to_json()))
    assert saved["judge"] == "auto" and saved["probe_point"] == "resid_post.1"
    assert saved["sizes"] == {"train": 16, "ambiguous_test": 16, "balanced_test": 16, "judge": 8}
    assert 0 < len(saved["candidates"]) <= 6 and saved["n_ablated"] == len(saved["ablated"])
    # What it prints: the concepts, the accuracies' table, and each feature ablated.
    assert "intended: topic (1: sports, 0: cooking); spurious: gender (1: male, 0: female)" in printed
    assert expected.table() in printed
    assert f"ablated {saved['n_ablated']} of the top {len(saved['candidates'])} features" in printed
    for n in saved["ablated"]:
        assert f"{n['hook']}/f{n['feature']} " in printed
    assert f"wrote {out / 'shift.json'}" in printed
    # The task itself, as a --data file would hold it.
    written = read_spurious_task(out / "synthetic_task.jsonl", intended_name=task.intended_name,
                                 spurious_name=task.spurious_name)
    assert (written.intended_name, written.spurious_name) == (task.intended_name, task.spurious_name)
    for role, labelled in task.sets().items():
        again = written.sets()[role]
        assert (again.texts, again.intended, again.spurious) == (labelled.texts, labelled.intended, labelled.spurious)


def test_a_jsonl_task_runs_as_the_same_task_built_in(synthetic_run, folders, model_dir, tmp_path, capsys):
    out, _ = synthetic_run
    again = tmp_path / "again"
    task = spurious_task(1, n_train=16, n_test=16, n_judge=8)
    assert main(["shift", "--dictionaries", *folders, "--model", str(model_dir), "--data",
                 str(out / "synthetic_task.jsonl"), "--intended-name", task.intended_name, "--spurious-name",
                 task.spurious_name, "--top-k", "6", "--min-association", "0", "--out", str(again)]) == 0
    assert json.loads((again / "shift.json").read_text()) == json.loads((out / "shift.json").read_text())
    assert not (again / "synthetic_task.jsonl").exists()  # a --data file is not copied
    # Rerun into a folder holding a SHIFT result: allowed, and its file is replaced.
    assert main(["shift", "--dictionaries", *folders, "--model", str(model_dir), "--data",
                 str(out / "synthetic_task.jsonl"), "--out", str(again), "--top-k", "3"]) == 0
    saved = json.loads((again / "shift.json").read_text())
    assert len(saved["candidates"]) <= 3 and saved["intended"] == "intended" and saved["spurious"] == "spurious"
    assert "intended: intended; spurious: spurious" in capsys.readouterr().out


def test_given_features_are_ablated_without_a_judge_set(folders, model_dir, tmp_path, capsys):
    task = spurious_task(2, n_train=8, n_test=8, n_judge=4)
    data = tmp_path / "task.jsonl"
    data.write_text(lines({"text": t, "intended": i, "spurious": s, "set": role, "note": "ignored"}
                          for role, labelled in task.sets().items() if role != "judge"
                          for t, i, s in zip(labelled.texts, labelled.intended, labelled.spurious)))
    out = tmp_path / "given"
    assert main(["shift", "--dictionaries", *folders, "--model", str(model_dir), "--data", str(data), "--features",
                 "resid_post.1:3,5-6", "resid_post.0:2", "resid_post.1:5", "--probe", "mass_mean", "--pooling",
                 "last", "--ablation", "mean", "--method", "ig", "--steps", "2", "--probe-point", "resid_post.2",
                 "--batch-size", "4", "--out", str(out)]) == 0
    saved = json.loads((out / "shift.json").read_text())
    given = [("resid_post.1", 3), ("resid_post.1", 5), ("resid_post.1", 6), ("resid_post.0", 2)]
    assert [(n["hook"], n["feature"]) for n in saved["ablated"]] == given
    assert [(c["hook"], c["feature"]) for c in saved["candidates"]] == given
    assert saved["judge"] == "given" and saved["sizes"] == {"train": 8, "ambiguous_test": 8, "balanced_test": 8}
    assert saved["probe"] == "mass_mean" and saved["pooling"] == "last" and saved["ablation"] == "mean"
    assert saved["method"] == "ig" and saved["probe_point"] == "resid_post.2"
    assert all(c["spurious_association"] == "nan" and math.isfinite(c["effect"]) for c in saved["candidates"])
    printed = capsys.readouterr().out
    assert "ablated the 4 features given (mean ablation; effects by ig)" in printed
    assert "resid_post.0/f2 " in printed


# ---------------------------------------------------------------------------
# Bad input, refused before the model loads


class ModelLoaded(Exception):
    pass


@pytest.fixture
def no_model(monkeypatch):
    """The model loader fails loudly: a refusal must come before it."""

    def load_model(*a, **kw):
        raise ModelLoaded

    monkeypatch.setattr(saekit.models, "load_model", load_model)


def refuse(args, capsys, *says):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("saekit shift: error: "), err
    for s in says:
        assert s in err, err


GOOD = [
    {"text": "a sports line", "intended": 1, "spurious": 1, "set": "train"},
    {"text": "a cooking line", "intended": 0, "spurious": 0, "set": "train"},
    {"text": "another sports line", "intended": 1, "spurious": 1, "set": "ambiguous_test"},
    {"text": "another cooking line", "intended": 0, "spurious": 0, "set": "ambiguous_test"},
    *({"text": f"balanced {i} {s}", "intended": i, "spurious": s, "set": "balanced_test"}
      for i in (0, 1) for s in (0, 1)),
    *({"text": f"judged {i} {s}", "intended": i, "spurious": s, "set": "judge"} for i in (0, 1) for s in (0, 1)),
]


def test_bad_jsonl_tasks_are_refused_with_their_line(folders, model_dir, tmp_path, no_model, capsys):
    data = tmp_path / "task.jsonl"
    out = tmp_path / "o"
    args = ["shift", "--dictionaries", *folders, "--model", str(model_dir), "--data", str(data), "--out", str(out)]

    def with_line(n, change, *says):
        records = [dict(r) for r in GOOD]
        change(records[n - 1])
        data.write_text(lines(records))
        refuse(args, capsys, f"{data}, line {n}: ", *says)

    with_line(3, lambda r: r.update(intended=2), "intended must be 0 or 1, got 2")
    with_line(2, lambda r: r.update(spurious=True), "spurious must be 0 or 1, got true")
    with_line(5, lambda r: r.update(set="dev"), "unknown set 'dev'", "train, ambiguous_test, balanced_test, judge")
    with_line(1, lambda r: r.pop("spurious"), "missing spurious", '"spurious": 0 or 1')
    with_line(4, lambda r: r.update(text=" "), "text must be a non-empty string")
    data.write_text(lines(GOOD[:3]) + "{not json\n" + lines(GOOD[3:]))
    refuse(args, capsys, f"{data}, line 4: not valid JSON")
    # A set's own rule, with the line that breaks it.
    data.write_text(lines([*GOOD[:1], {"text": "a woman's sports line", "intended": 1, "spurious": 0, "set": "train"},
                           *GOOD[1:]]))
    refuse(args, capsys, "the train set (train) must be ambiguous", "line 2 has intended 1 but spurious 0")
    data.write_text(lines(r for r in GOOD if r["set"] != "train"))
    refuse(args, capsys, 'no line has "set": "train"')
    data.write_text(lines(r for r in GOOD if not (r["set"] == "train" and r["intended"] == 0)))
    refuse(args, capsys, "the train set (train) needs examples of both labels")
    data.write_text(lines(r for r in GOOD if not (r["set"] == "balanced_test" and r["text"] == "balanced 1 0")))
    refuse(args, capsys, "balanced_test", "it has none with intended=1, spurious=0")
    data.write_text(lines(r for r in GOOD if r["set"] != "judge"))
    refuse(args, capsys, "no judge lines", "--features HOOK:SPEC")
    refuse([*args[:-4], "--data", str(tmp_path / "missing.jsonl"), "--out", str(out)], capsys, "no such file")
    assert not out.exists()  # nothing written by a refused run
    with pytest.raises(DataError, match="holds no lines"):
        (tmp_path / "blank.jsonl").write_text("\n\n")
        read_spurious_task(tmp_path / "blank.jsonl")


def test_bad_flags_are_refused_before_the_model_loads(folders, model_dir, tmp_path, no_model, capsys):
    data = tmp_path / "task.jsonl"
    data.write_text(lines(GOOD))
    out = tmp_path / "o"
    base = ["shift", "--dictionaries", *folders, "--model", str(model_dir), "--out", str(out)]
    on_data = [*base, "--data", str(data)]
    refuse([*on_data, "--features", "mlp_out.1:3"], capsys, "no dictionary writes mlp_out.1",
           "the dictionaries write resid_post.0, resid_post.1")
    refuse([*on_data, "--features", "resid_post.1:3,24"], capsys, "feature 24 is out of range",
           "24 features, 0-23")
    refuse([*on_data, "--features", "resid_post.1"], capsys, "write HOOK:SPEC", "resid_post.9:4446,2721")
    refuse([*on_data, "--features", "resid_post.1:3", "--top-k", "5"], capsys, "--top-k set the automatic judge")
    refuse([*on_data, "--seed", "3"], capsys, "--seed choose the texts of the synthetic task")
    refuse([*base, "--synthetic", "--intended-name", "topic"], capsys, "--intended-name name the concepts of a --data")
    refuse([*base, "--synthetic", "--n-test", "10"], capsys, "n_test must be a positive multiple of 4")
    refuse([*on_data, "--probe-point", "resid_post.0"], capsys, "--probe-point resid_post.0 is before resid_post.1",
           "read the probe at resid_post.1 or later")
    refuse([*on_data, "--probe-point", "resid.0"], capsys, "unknown site 'resid'")
    refuse([*on_data, "--min-association", "1.5"], capsys, "between 0 and 1")
    refuse([*on_data, "--steps", "0"], capsys, "--steps must be at least 1")
    refuse([*on_data, "--dictionaries", folders[0], folders[0]], capsys, "two dictionaries write resid_post.0")
    assert not out.exists()
    # An output folder that holds other things is refused; --overwrite lets the run on to the model.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refuse(on_data, capsys, f"--out {out} is not empty and holds no SHIFT result (notes.txt)", "--overwrite")
    with pytest.raises(ModelLoaded):
        main([*on_data, "--overwrite"])
    with pytest.raises(ModelLoaded):  # every check passed: the refusals above were before the model
        main([*base[:-2], "--out", str(tmp_path / "new"), "--data", str(data)])
    assert (out / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_the_verbs_defaults_are_the_librarys():
    """The verb names the library's defaults without importing it (so --help is fast); they must agree."""
    from saekit.circuits import DEFAULT_STEPS
    from saekit.circuits import feature_trimming as lib
    from saekit.cli import shift as verb

    assert (verb.DEFAULT_TOP_K, verb.DEFAULT_MIN_ASSOCIATION, verb.DEFAULT_STEPS) == (
        lib.DEFAULT_TOP_K, lib.DEFAULT_MIN_ASSOCIATION, DEFAULT_STEPS)
    sizes = spurious_task.__kwdefaults__
    assert verb.SYNTHETIC_SIZES == {"--n-train": sizes["n_train"], "--n-test": sizes["n_test"],
                                    "--n-judge": sizes["n_judge"]}
