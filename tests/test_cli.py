"""The CLI as a user runs it: flags, printed figures, one-line errors, kill -9 and --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

import saekit
from saekit.cli import main

TINY = ["--hook", "resid_post.1", "--k", "4", "--expansion", "4", "--context-length", "32", "--batch-size", "128",
        "--buffer-tokens", "1024", "--model-batch-size", "8", "--lr", "2e-3", "--eval-tokens", "512"]


def test_train_help_explains_every_flag(capsys):
    try:
        main(["train", "--help"])
    except SystemExit as e:
        assert e.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--hook", "--dataset", "--arch", "--k", "--expansion", "--dict-size", "--l1", "--l0-coeff",
                 "--tokens", "--context-length", "--batch-size", "--lr", "--seed", "--out", "--resume", "--device",
                 "--dtype", "--wandb", "--activation-cache", "--overwrite"):
        assert flag in text, flag


def test_train_prints_heldout_figures(model_dir, corpus, tmp_path, capsys):
    code = main(["train", "--model", str(model_dir), "--dataset", str(corpus), "--tokens", "3000", "--out", str(tmp_path / "r"), *TINY])
    assert code == 0
    out = capsys.readouterr().out
    for text in ("fixed", "documents", "fvu", "loss_recovered", "kl", "tokens (reconstruction)", "report.html"):
        assert text in out, text
    assert saekit.load(tmp_path / "r").cfg.k == 4


def test_eval_report_compare(model_dir, corpus, tmp_path, capsys):
    for k in ("2", "8"):
        assert main(["train", "--model", str(model_dir), "--dataset", str(corpus), "--tokens", "2000",
                     "--out", str(tmp_path / f"k{k}"), *TINY, "--k", k, "--eval-tokens", "0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "k2"), "--dataset", str(corpus), "--tokens", "600", "--max-length", "64"]) == 0
    out = capsys.readouterr().out
    assert "loss_recovered" in out and "documents" in out
    evaluation = json.loads((tmp_path / "k2" / "eval.json").read_text())
    assert set(evaluation) >= {"fixed", "documents"} and evaluation["fixed"]["n_tokens"] >= 600
    # without --dataset a run folder is evaluated on the held-out split of its own text, not the embedded corpus
    assert main(["eval", str(tmp_path / "k8"), "--tokens", "600", "--max-length", "64",
                 "--json", str(tmp_path / "k8.json")]) == 0
    assert f"evaluating on the held-out split of {corpus}, the text the dictionary was trained on" in capsys.readouterr().out
    assert json.loads((tmp_path / "k8.json").read_text())["dataset"] == str(corpus)
    assert main(["report", str(tmp_path / "k2")]) == 0
    assert (tmp_path / "k2" / "report.html").stat().st_size > 10_000
    assert main(["report", str(tmp_path / "k8")]) == 2  # no eval.json there
    assert "saekit eval" in capsys.readouterr().err
    (tmp_path / "k8" / "eval.json").write_text((tmp_path / "k8.json").read_text())
    assert main(["compare", str(tmp_path / "k2"), str(tmp_path / "k8"), "--out", str(tmp_path / "cmp.html")]) == 0
    out = capsys.readouterr().out
    assert "k2" in out and "k8" in out and (tmp_path / "cmp.html").exists()
    assert main(["eval", str(tmp_path / "k2"), "--hook", "resid_post.0"]) == 2
    # Another library's folder goes through eval, report and compare the same way.
    assert main(["convert", str(tmp_path / "k2"), str(tmp_path / "k2-dl"), "--to", "dictionary_learning"]) == 0
    assert main(["eval", str(tmp_path / "k2-dl"), "--dataset", str(corpus), "--tokens", "600", "--max-length", "64",
                 "--regimes", "fixed"]) == 0
    dl_figures = json.loads((tmp_path / "k2-dl" / "eval.json").read_text())["fixed"]
    assert abs(dl_figures["fvu"] - evaluation["fixed"]["fvu"]) < 1e-5
    assert main(["report", str(tmp_path / "k2-dl")]) == 0
    assert "From config.json" in (tmp_path / "k2-dl" / "report.html").read_text()
    assert main(["compare", str(tmp_path / "k2"), str(tmp_path / "k2-dl"), "--out", str(tmp_path / "cmp2.html")]) == 0
    assert "trained on resid_post.1" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "k2"), "--max-length", "2"]) == 2
    assert "--max-length must be at least 3" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.safetensors").write_bytes(b"")
    for verb in (["eval"], ["report"], ["convert", "--to", "saelens"]):
        main([verb[0], str(unfinished), *([str(tmp_path / "conv")] if verb[0] == "convert" else []), *verb[1:]])
        assert "holds an unfinished training run" in capsys.readouterr().err, verb
    assert main(["eval", str(tmp_path / "k2"), "--model", "some/other-model"]) == 2  # refused before any load
    err = capsys.readouterr().err
    assert "trained on" in err and "not some/other-model" in err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert main(["eval", str(tmp_path / "k2"), "--json", str(tmp_path / "no" / "dir.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "k2" / "config.json"), "--dataset", str(corpus), "--tokens", "100",
                 "--regimes", "fixed"]) == 0  # a file inside the folder: eval.json lands beside it


def test_errors_are_one_line_without_traceback(model_dir, corpus, tmp_path, capsys):
    code = main(["train", "--model", str(model_dir), "--dataset", str(corpus), "--out", str(tmp_path / "r"),
                 *TINY[2:], "--hook", "mlp_out.7"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # transformers may draw its own loading bar first
    assert last.startswith("saekit train: error: ") and "layers 0..2" in last
    assert main(["train", "--tokens", "0"]) == 2
    assert "--tokens must be positive" in capsys.readouterr().err


def test_cache_then_train_from_cache(model_dir, corpus, tmp_path, capsys):
    assert main(["cache", "--model", str(model_dir), "--dataset", str(corpus), "--hook", "resid_post.1", "--tokens", "2000",
                 "--context-length", "32", "--heldout-tokens", "256", "--out", str(tmp_path / "c")]) == 0
    assert "wrote 2,000 activations" in capsys.readouterr().out
    assert main(["train", "--activation-cache", str(tmp_path / "c"), "--tokens", "3000", "--out", str(tmp_path / "r"),
                 "--k", "4", "--expansion", "2", "--batch-size", "100", "--buffer-tokens", "500", "--eval-tokens", "256"]) == 0


def test_kill_9_then_resume_matches_an_uninterrupted_run(model_dir, corpus, tmp_path):
    args = ["train", "--model", str(model_dir), "--dataset", str(corpus), *TINY,
            "--tokens", "40000", "--checkpoint-every", "2000", "--log-every", "1"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0

    cut = tmp_path / "cut"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "saekit.cli", *args, "--out", str(cut)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait for a checkpoint and a few more steps, then kill
            log = cut / "log.jsonl"
            if (cut / "checkpoint.safetensors").exists() and log.exists() and log.read_text().count("\n") >= 25:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (cut / "weights.safetensors").exists()
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    a, b = saekit.load(tmp_path / "full"), saekit.load(cut)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-5), name
    steps = [json.loads(line)["step"] for line in (cut / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))


def test_convert_round_trip_through_every_format(model_dir, corpus, tmp_path, capsys):
    assert main(["train", "--model", str(model_dir), "--dataset", str(corpus), "--tokens", "2000",
                 "--out", str(tmp_path / "run"), *TINY, "--eval-tokens", "0"]) == 0
    original = saekit.load(tmp_path / "run")
    x = torch.randn(20, original.cfg.d_in)
    for fmt in ("saelens", "sparsify", "dictionary_learning"):
        assert main(["convert", str(tmp_path / "run"), str(tmp_path / fmt), "--to", fmt]) == 0
        back = tmp_path / f"{fmt}-back"
        assert main(["convert", str(tmp_path / fmt), str(back), "--to", "saekit"]) == 0
        for folder in (tmp_path / fmt, back):
            loaded = saekit.load(folder)  # format detected
            assert torch.allclose(loaded.reconstruct(x), original.reconstruct(x), atol=1e-5), (fmt, folder)
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "x"), "--to", "saelens", "--format", "sparsify"]) == 2
    sparsify_eval = ["eval", str(tmp_path / "sparsify"), "--dataset", str(corpus), "--tokens", "100", "--regimes", "fixed"]
    capsys.readouterr()
    assert main(sparsify_eval) == 2 and "pass --hook" in capsys.readouterr().err  # sparsify records no hook point
    assert main([*sparsify_eval, "--hook", "resid_post.1", "--model", str(model_dir)]) == 0
