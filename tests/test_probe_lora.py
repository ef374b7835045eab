"""The LoRA baseline: a head trained with adapters on the blocks below the hook only, on the
split of ``saekit probe train``, beside a frozen logistic probe; the merged model gives the
adapter model's scores without peft; a missing peft names the extra to install."""

import json
import random
import sys

import pytest
import torch

import saekit
from saekit.cli import main
from saekit.errors import ConfigError
from saekit.probes import TruthDataset, load_probe, read_csv_dataset, statement_activations
from saekit.probes.lora import LoraSettings, adapter_layers, target_modules, train_lora_probe
from saekit.probes.training import training_split
from saekit.probes.training import ProbeRun, run_probe

pytest.importorskip("peft")


def marked(n=48, seed=0):
    """Label 1 when the statement carries a '!' two tokens before the one the probe reads: a
    random model's activation there hardly sees it, adapters below can learn to carry it."""
    rng = random.Random(seed)
    statements, labels = [], []
    for i in range(n):
        word = "".join(rng.choice("abcdefghij") for _ in range(4))
        statements.append(f"Item {word}{'!' if i % 2 else '.'} ok")
        labels.append(i % 2)
    return TruthDataset("marked", tuple(statements), tuple(labels), (1,) * n)


def test_lora_trains_below_the_hook_on_the_probe_train_split_and_merges(model_dir, tmp_path):
    lm = saekit.load_model(str(model_dir))
    ds = marked()
    run = ProbeRun(probe="logistic", position=-2)
    settings = LoraSettings(rank=4, epochs=4, lr=1e-2, batch_size=8, init="zero")
    # The split and the frozen figures are those of `saekit probe train` on the same run.
    frozen = run_probe(lm, run, [ds], ["resid_post.1"], use_cache=False)[0]
    result, probe = train_lora_probe(lm, settings, [ds], "resid_post.1", run, merge=False, use_cache=False)
    _, train_idx, test_idx = training_split(run, [ds])
    assert (result.n_train, result.n_test) == (frozen.n_train, len(test_idx)) == (36, 12)
    assert result.frozen == frozen.scores[0]
    # Adapters on blocks 0 and 1 (those before resid_post.1), on every linear layer, none on block 2.
    assert result.adapter_layers == [0, 1]
    lora_modules = {name for name, _ in probe.peft_model.named_modules() if name.endswith("lora_A")}
    assert lora_modules and all(".layers.0." in n or ".layers.1." in n for n in lora_modules)
    assert len(lora_modules) == 2 * len(result.target_modules) == 14
    fresh_block = saekit.load_model(str(model_dir)).model.model.layers[0]
    per_block = sum(settings.rank * (m.in_features + m.out_features) for m in fresh_block.modules()
                    if isinstance(m, torch.nn.Linear))  # each adapter: A (r × in) and B (out × r)
    assert result.adapter_parameters == 2 * per_block
    d = lm.d_model
    assert result.head_parameters == result.frozen_parameters == d + 1
    assert result.losses[-1] < result.losses[0] and result.lora_train_accuracy == 1.0
    # Adapter model scores, then merged: the same within float rounding, and the merged
    # model on disk gives them without peft.
    held = [ds.statements[i] for i in test_idx]
    with_adapters = probe.scores(held)
    model_dir_out, head_path = probe.save(tmp_path / "saved", info={"datasets": ["marked"]})
    assert probe.merged and "+lora-" in lm.name  # a new name: the activation cache keeps them apart
    torch.testing.assert_close(probe.scores(held), with_adapters, rtol=1e-4, atol=1e-4)
    head, info = load_probe(head_path)
    assert info["hook"] == "resid_post.1" and info["position"] == -2 and info["model"] == str(model_dir_out)
    saved_lm = saekit.load_model(str(model_dir_out))
    assert not any("lora" in name for name, _ in saved_lm.model.named_parameters())
    held_set = TruthDataset("held", tuple(held), tuple(ds.labels[i] for i in test_idx), (1,) * len(held))
    acts = statement_activations(saved_lm, held_set, ["resid_post.1"], -2, use_cache=False)["resid_post.1"]
    torch.testing.assert_close(head.scores(acts), with_adapters, rtol=1e-4, atol=1e-4)


def test_which_blocks_get_adapters_and_bad_settings(model_dir):
    lm = saekit.load_model(str(model_dir))
    assert adapter_layers(lm, "resid_post.2") == [0, 1, 2]
    assert adapter_layers(lm, "mlp_out.1") == [0, 1]
    assert adapter_layers(lm, "resid_pre.2") == [0, 1]
    assert adapter_layers(lm, "mlp_in.1") == [0]
    with pytest.raises(ConfigError, match="comes before every block"):
        adapter_layers(lm, "resid_pre.0")
    assert "self_attn.q_proj" in target_modules(lm) and "mlp.down_proj" in target_modules(lm)
    for bad, message in [(dict(rank=0), "rank"), (dict(lr=0.0), "learning rate"), (dict(init="random"), "zero"),
                         (dict(epochs=0), "epoch"), (dict(max_steps=0), "max_steps")]:
        with pytest.raises(ConfigError, match=message):
            LoraSettings(**bad)


def write_marked(tmp_path):
    ds = marked()
    path = tmp_path / "marked.csv"
    path.write_text("statement,label\n" + "".join(f"{s},{y}\n" for s, y in zip(ds.statements, ds.labels)))
    return path


def test_saekit_probe_lora_prints_both_and_saves(model_dir, tmp_path, capsys):
    data, out, save = write_marked(tmp_path), tmp_path / "lora.json", tmp_path / "lora"
    args = ["probe", "lora", "--dataset", str(data), "--hook", "resid_post.1", "--position", "-2", "--model",
            str(model_dir), "--rank", "2", "--max-steps", "6", "--lr", "1e-2", "--batch-size", "8", "--no-cache"]
    assert main(args + ["--json", str(out), "--save", str(save)]) == 0
    printed = capsys.readouterr().out
    assert "frozen logistic probe" in printed and "LoRA + linear head" in printed and "merged" in printed
    record = json.loads(out.read_text())
    assert record["steps"] == 6 and record["rank"] == 2 and record["n_train"] == 36
    assert record["lora_parameters"] == record["adapter_parameters"] + record["head_parameters"]
    assert record["merged_max_diff"] < 1e-4
    assert (save / "model" / "config.json").is_file() and (save / "head.safetensors").is_file()
    assert read_csv_dataset(data).name == "marked"
    # A second save into the same folder is refused before any work.
    assert main(args + ["--save", str(save)]) == 2
    assert "already holds" in capsys.readouterr().err


def test_missing_peft_names_the_extra_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    code = main(["probe", "lora", "--dataset", str(write_marked(tmp_path)), "--hook", "resid_post.1",
                 "--model", str(tmp_path / "no-model")])
    assert code == 2
    assert "pip install 'saekit[probes]'" in capsys.readouterr().err
