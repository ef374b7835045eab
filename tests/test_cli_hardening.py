"""The CLI as a careless user meets it: usage errors, Ctrl-C, progress, unwritable outputs."""

from __future__ import annotations

import errno
import io
import json
import os

import pytest
import torch

from conftest import D_MODEL
from saekit.cli import main
from saekit.cli.progress import ProgressBars as _ProgressBars
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import RunInterrupted
from saekit.io.saekit_format import save_dictionary

# ---------------------------------------------------------------- usage errors

BAD_USAGE = [
    (["train", "--tokns", "5"], "saekit train", "unrecognized arguments: --tokns 5"),
    (["train", "--tokens", "1e5x"], "saekit train", "invalid int value: '1e5x'"),
    (["train", "--arch", "topkk"], "saekit train", "invalid choice: 'topkk'"),
    (["cache", "--out", "c", "--nope"], "saekit cache", "unrecognized arguments: --nope"),
    (["cache"], "saekit cache", "the following arguments are required: --out"),
    (["eval"], "saekit eval", "the following arguments are required: folder"),
    (["convert", "a", "b"], "saekit convert", "the following arguments are required: --to"),
    (["push", "f"], "saekit push", "the following arguments are required: repo_id"),
    (["report"], "saekit report", "the following arguments are required: folder"),
    (["compare"], "saekit compare", "the following arguments are required: folders"),
    ([], "saekit", "the following arguments are required: verb"),
    (["trian"], "saekit", "invalid choice: 'trian'"),
]


@pytest.mark.parametrize("argv,prog,message", BAD_USAGE)
def test_usage_errors_are_the_one_line_and_where_to_read_more(argv, prog, message, capsys):
    """argparse printed the whole usage (about 30 lines for train) before the useful line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and captured.out == "", lines
    assert lines[0].startswith(f"{prog}: error: ") and message in lines[0]
    assert lines[1] == f"see `{prog} --help`"


def test_help_is_still_the_whole_text(capsys):
    assert main(["train", "--help"]) == 0
    assert "--tokens" in capsys.readouterr().out


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("raised,said", [
    (RunInterrupted("--resume continues from the checkpoint at 40,960 tokens"),
     "saekit train: interrupted; --resume continues from the checkpoint at 40,960 tokens"),
    (RunInterrupted("interrupted at 8,192 tokens, before the first checkpoint; nothing was kept"),
     "saekit train: interrupted at 8,192 tokens, before the first checkpoint; nothing was kept"),
    (KeyboardInterrupt(), "saekit train: interrupted"),
])
def test_ctrl_c_says_what_the_run_kept(monkeypatch, capsys, raised, said):
    import saekit.training

    def interrupted(cfgs, progress=None):
        progress({"status": "loading the model"})  # a bar is open when Ctrl-C comes
        raise raised

    monkeypatch.setattr(saekit.training, "train_many", interrupted)
    assert main(["train"]) == 130
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1] == said
    assert "Traceback" not in err


def test_sigterm_stops_a_verb_as_ctrl_c_does_and_the_handler_is_put_back(monkeypatch, capsys):
    """kill, docker stop and schedulers send SIGTERM: the run says what it kept (exit 143,
    128 + SIGTERM) instead of dying without a word, and main leaves the handler it found."""
    import signal
    import time

    import saekit.training

    def terminated(cfgs, progress=None):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        except KeyboardInterrupt:
            raise RunInterrupted("interrupted at 4,096 tokens. The checkpoint at 4,000 tokens is kept") from None
        raise AssertionError("SIGTERM did not interrupt the run")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(saekit.training, "train_many", terminated)
    assert main(["train"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.rstrip().splitlines()[-1] == (
        "saekit train: interrupted at 4,096 tokens. The checkpoint at 4,000 tokens is kept")
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------- progress bars


def step(tokens, rate, fvu=0.2, dead=0.01):
    return {"step": tokens // 1000, "tokens": tokens, "loss": 1.5, "l0": 30.0, "fvu": fvu, "dead_frac": dead,
            "lr": 1e-3, "tokens_per_s": rate}


def test_figures_not_known_yet_read_n_a():
    """The trainer logs fvu and dead_frac as null until it knows them; the bar formatted
    None with '.3f' and crashed the run."""
    out = io.StringIO()
    bars = _ProgressBars("train topk", 10_000, file=out)
    bars(step(2048, 5120.0, fvu=None, dead=None))
    bars.close()
    text = out.getvalue()
    assert "fvu n/a" in text and "dead n/a" in text and "l0 30.0" in text


def test_training_bar_shows_the_current_rate_and_gives_way_to_evaluation():
    """tqdm's average rate counted the first buffer fill, and the bar then sat at 100%
    with a falling rate for the whole end-of-run evaluation."""
    out = io.StringIO()
    bars = _ProgressBars("train topk", 10_000, file=out)
    bars({"status": "filling the activation buffer"})
    assert "train topk: filling the activation buffer" in out.getvalue()
    bars(step(4_000, 5000.0))
    refill = {"phase": "reading activations from the model", "total": 1024, "unit": "tok"}
    for done in (0, 512):
        bars({**refill, "done": done})  # a buffer refill during training: the training bar stays
    assert bars.train_bar is not None and bars.side_name == refill["phase"]
    bars({**refill, "done": 1024})
    bars(step(9_984, 5000.0))  # the last whole batch stops short of the total
    assert bars.train_bar is not None
    bars({"status": "evaluating on held-out text"})  # training is done: its bar closes
    assert bars.train_bar is None
    assert "5k tok/s" in out.getvalue() and "9.98k/10.0k" in out.getvalue()
    phases = [("evaluating fixed contexts: reading text", 600), ("evaluating fixed contexts: mean activation", 620)]
    for phase, total in phases:
        for done in (0, total // 2, total):
            bars({"phase": phase, "done": done, "total": total, "unit": "tok"})
        assert bars.side_bar is None  # closed when done, so its rate is the phase's own
    bars.close()
    text = out.getvalue()
    for phase, _ in phases:
        assert phase in text
    assert "620/620" in text and bars.side_bar is None


def test_a_full_training_bar_closes_at_the_next_record():
    out = io.StringIO()
    bars = _ProgressBars("train topk", 10_000, file=out)
    bars(step(10_000, 5000.0))
    bars({"phase": "evaluating fixed contexts: reading text", "done": 0, "total": 600, "unit": "tok"})
    assert bars.train_bar is None and bars.side_bar is not None
    bars.close()


def test_phases_alone_draw_bars_without_a_training_bar():
    out = io.StringIO()
    bars = _ProgressBars("eval", file=out)
    bars({"phase": "evaluating whole documents: reading text", "done": 0, "total": 100, "unit": "tok"})
    bars({"phase": "evaluating whole documents: reading text", "done": 100, "total": 100, "unit": "tok"})
    bars.close()
    assert "evaluating whole documents: reading text" in out.getvalue() and bars.train_bar is None


# ---------------------------------------------------------------- saekit eval


@pytest.fixture
def dictionary_folder(model_dir, tmp_path):
    def make(keep_bos=False, name="d"):
        torch.manual_seed(0)
        sae = build_dictionary(DictionaryConfig(arch="topk", d_in=D_MODEL, d_sae=64, k=4, hook="resid_post.1",
                                                model=str(model_dir), context_length=32, keep_bos=keep_bos))
        return save_dictionary(sae, tmp_path / name), sae
    return make


def eval_args(folder, corpus, *more):
    return ["eval", str(folder), "--dataset", str(corpus), "--tokens", "200", "--regimes", "fixed", *more]


def test_eval_follows_the_dictionarys_bos_policy_and_records_an_override(dictionary_folder, corpus, capsys):
    folder, sae = dictionary_folder(keep_bos=True)
    assert main(eval_args(folder, corpus)) == 0
    captured = capsys.readouterr()
    assert "evaluating fixed contexts: clean, spliced, zero and mean passes" in captured.err  # a bar per phase
    assert "kept (as the dictionary records" in captured.out
    figures = json.loads((folder / "eval.json").read_text())
    assert (figures["keep_bos"], figures["keep_bos_source"]) == (True, "dictionary")
    assert figures["fingerprint"] == sae.fingerprint()
    assert main(eval_args(folder, corpus, "--no-keep-bos", "--json", str(folder / "no-bos.json"))) == 0
    figures = json.loads((folder / "no-bos.json").read_text())
    assert (figures["keep_bos"], figures["keep_bos_source"]) == (False, "override")


def test_eval_refuses_an_unwritable_json_before_any_work(dictionary_folder, corpus, tmp_path, monkeypatch, capsys):
    import saekit.models

    folder, _ = dictionary_folder()
    (tmp_path / "ro").mkdir()
    real = os.access
    # Tests may run as root, for whom chmod does not make a folder read-only.
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path / "ro") else real(p, mode, **kw))
    monkeypatch.setattr(saekit.models, "load_model", lambda *a, **kw: pytest.fail("the model was loaded"))
    assert main(eval_args(folder, corpus, "--json", str(tmp_path / "ro" / "e.json"))) == 2
    assert "read-only; choose another --json" in capsys.readouterr().err
    assert main(eval_args(folder, corpus, "--json", str(tmp_path))) == 2  # a folder, not a file
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_eval_whose_final_write_fails_says_the_figures_were_printed(dictionary_folder, corpus, monkeypatch, capsys):
    folder, _ = dictionary_folder()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert main(eval_args(folder, corpus)) == 2
    captured = capsys.readouterr()
    assert "loss_recovered" in captured.out  # the table came out
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("saekit eval: error: cannot write") and "the disk is full" in last
    assert "printed above but were not saved" in last
    assert not (folder / "eval.json").exists() and not list(folder.glob(".*.tmp"))


# ---------------------------------------------------------------- saekit convert


def test_convert_into_a_run_folder_needs_overwrite(dictionary_folder, tmp_path, capsys):
    folder, sae = dictionary_folder()
    run, _ = dictionary_folder(name="run")
    (run / "eval.json").write_text("{}")
    (run / "log.jsonl").write_text("")
    assert main(["convert", str(folder), str(run), "--to", "saelens"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(["convert", str(folder), str(run), "--to", "saelens", "--overwrite"]) == 0
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["cfg.json", "sae_weights.safetensors"]
    assert main(["convert", str(folder), str(folder), "--to", "saelens", "--overwrite"]) == 2
    assert "is the source folder itself" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["convert", str(folder), str(tmp_path / "file"), "--to", "saelens"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
