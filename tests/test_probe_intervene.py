"""Interventions along a probe direction: the positions edited are the ones asked for and
never outside the prompt, α = 0 changes nothing (bit for bit), a tiny α changes the answer's
log-odds by the directional derivative, a vector towards an answer raises it, the vector's
scale is Marks & Tegmark's, and ``saekit probe intervene`` runs end to end."""

import json

import pytest
import torch

import saekit
from saekit.cli import main
from saekit.errors import ConfigError
from saekit.hooks import edit_activations
from saekit.probes.intervention import (EditPositions, encode_prompts, few_shot_prefix, hooks_text, intervention_sweep,
                                        intervention_vector, random_like)
from saekit.probes.verdicts import (DEFAULT_ANSWERS, VerdictPrompt, answer_logprobs, answer_token_ids,
                                    shared_prefix_length)

STATEMENTS = ["Lyon is in France.", "Rome is in Chile.", "Oslo is in Peru."]


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


def prompts(lm, positions="last:2", fmt=None):
    fmt = fmt or VerdictPrompt(template="{statement} Is:", prefix="Sky is blue. Is: TRUE\n")
    return encode_prompts(lm.tokenizer, STATEMENTS, fmt, EditPositions.parse(positions), lm.max_length)


def test_positions_parse_and_stay_inside_the_prompt(lm):
    assert str(EditPositions.parse("last")) == "last:1" and str(EditPositions.parse("from-end")) == "from-end"
    assert EditPositions.parse("-2, -1").indices == (-2, -1)
    for bad, message in [("middle", "none of"), ("last:x", "number of tokens"), ("last:0", "at least one"),
                         ("1,1", "distinct")]:
        with pytest.raises(ConfigError, match=message):
            EditPositions.parse(bad)
    # The byte-level tokenizer: one token per character, so the tokens are easy to check.
    encoded = prompts(lm)
    for p, statement in zip(encoded, STATEMENTS):
        start, end = p.statement
        assert lm.tokenizer.decode(p.ids[start:end]) == statement
        assert lm.tokenizer.decode([p.ids[i] for i in p.edit]) == statement[-2:]
    tail = prompts(lm, "from-end")[0]
    assert lm.tokenizer.decode([tail.ids[i] for i in tail.edit]) == ". Is:"  # to the prompt's end
    first = prompts(lm, "0,-1")[1]
    assert lm.tokenizer.decode([first.ids[i] for i in first.edit]) == "R."
    assert prompts(lm, "5")[0].edit == [first.statement[0] + 5]  # may reach into the template...
    with pytest.raises(ConfigError, match=r"statement 0 .*outside the prompt"):
        prompts(lm, "40")  # ...but not past the prompt's end
    with pytest.raises(ConfigError, match="outside the prompt"):
        prompts(lm, "-60")  # nor before its start
    with pytest.raises(ConfigError, match="outside the prompt"):
        prompts(lm, "last:60")
    with pytest.raises(ConfigError, match="exactly once"):
        VerdictPrompt(template="Is it true?")
    with pytest.raises(ConfigError, match="two different"):
        VerdictPrompt(answers=(" A", " A"))


def test_few_shot_examples_alternate_and_are_kept_out():
    fmt = VerdictPrompt(template="{statement} Is:")
    labels = [1, 0, 0, 1, 1, 0]
    prefix, used = few_shot_prefix([f"S{i}." for i in range(6)], labels, fmt, 3, seed=1)
    assert [labels[i] for i in used] == [1, 0, 1] and len(set(used)) == 3
    assert prefix == "".join(f"S{i}. Is:{' TRUE' if labels[i] else ' FALSE'}\n" for i in used)
    assert few_shot_prefix(["a", "b"], [1, 0], fmt, 0) == ("", [])


def test_a_zero_scale_changes_nothing_exactly(lm):
    encoded = prompts(lm)
    answers = answer_token_ids(lm.tokenizer, DEFAULT_ANSWERS)
    assert [len(a) for a in answers] == [5, 6]  # several tokens each: scored as whole answers
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = answer_logprobs(lm, encoded, answers, {}, 0.0, batch_size=2)
        zero = answer_logprobs(lm, encoded, answers, {"resid_post.0": v, "resid_post.1": v}, 0.0, batch_size=2)
        moved = answer_logprobs(lm, encoded, answers, {"resid_post.0": v}, 1.0)
    torch.testing.assert_close(answer_logprobs(lm, encoded, answers, {}, 0.0), clean)  # batches: rounding only
    assert torch.equal(zero, clean)
    assert not torch.allclose(moved, clean)
    # The shared start (BOS and the few-shot line) run once and reused: the same figures.
    assert shared_prefix_length(encoded) == len(lm.tokenizer("Sky is blue. Is: TRUE\n")["input_ids"])
    with torch.no_grad():
        whole = answer_logprobs(lm, encoded, answers, {"resid_post.0": v}, 1.0, share_prefix=False)
    torch.testing.assert_close(whole, moved, rtol=1e-5, atol=1e-5)
    # Whole-answer probability: the sum of each answer token's log-probability, teacher-forced.
    p = encoded[0]
    ids = torch.tensor([p.ids + answers[0]])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].double(), -1)
    expected = sum(float(logp[len(p.ids) - 1 + k, t]) for k, t in enumerate(answers[0]))
    assert float(clean[0, 0]) == pytest.approx(expected, abs=1e-4)


def test_a_tiny_scale_moves_the_answer_by_the_directional_derivative(model_dir):
    lm = saekit.load_model(str(model_dir))
    # float64, though Llama's RMSNorm computes in float32 whatever the model's dtype: the
    # step h balances that rounding (~1e-7 / h) against the difference's own error (~h²).
    lm.model.double()
    encoded = prompts(lm, "last:3")
    answers = answer_token_ids(lm.tokenizer, (" T", " F"))
    v = 3 * torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hook = "resid_post.1"

    def log_odds(scale):
        with torch.no_grad():
            lp = answer_logprobs(lm, encoded, answers, {hook: v}, scale)
        return lp[:, 0] - lp[:, 1]

    h = 3e-3
    finite = (log_odds(h) - log_odds(-h)) / (2 * h)
    # The directional derivative, from the gradient with respect to the activation itself:
    # the activation at the hook made a leaf, ∇ · v summed over the edited positions.
    derivative = []
    for p in encoded:
        leaves = []

        def grab(x):
            leaf = x.detach().requires_grad_(True)
            leaves.append(leaf)
            return leaf

        ids = torch.tensor([p.ids + answers[0][:-1]])
        with edit_activations(lm, {hook: grab}):
            logits = lm.model(input_ids=ids).logits[0]
        n = len(p.ids)
        lp_true = torch.log_softmax(logits[n - 1:n - 1 + len(answers[0])], -1)[range(len(answers[0])), answers[0]].sum()
        ids = torch.tensor([p.ids + answers[1][:-1]])
        with edit_activations(lm, {hook: grab}):
            logits = lm.model(input_ids=ids).logits[0]
        lp_false = torch.log_softmax(logits[n - 1:n - 1 + len(answers[1])], -1)[range(len(answers[1])), answers[1]].sum()
        g_true, = torch.autograd.grad(lp_true, leaves[0])
        g_false, = torch.autograd.grad(lp_false, leaves[1])
        derivative.append(float(((g_true[0, p.edit] - g_false[0, p.edit]) @ v).sum()))
    derivative = torch.tensor(derivative, dtype=torch.float64)
    assert derivative.abs().max() > 0.1, "the test needs an edit that moves the answer"
    torch.testing.assert_close(finite, derivative, rtol=1e-2, atol=1e-3)
    # A scale that requires grad gives the same derivative through answer_logprobs itself,
    # also when the vector is added at two layers (the first one's effect runs through the second).
    scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lp = answer_logprobs(lm, encoded, answers, {hook: v}, scale)
    grad, = torch.autograd.grad((lp[:, 0] - lp[:, 1]).sum(), scale)
    assert float(grad) == pytest.approx(float(derivative.sum()), rel=1e-5)
    two = {"resid_post.0": v, hook: v}
    lp = answer_logprobs(lm, encoded, answers, two, scale)
    grad, = torch.autograd.grad((lp[:, 0] - lp[:, 1]).sum(), scale)
    with torch.no_grad():
        up = answer_logprobs(lm, encoded, answers, two, h)
        down = answer_logprobs(lm, encoded, answers, two, -h)
    assert float(grad) == pytest.approx(float(((up[:, 0] - up[:, 1]) - (down[:, 0] - down[:, 1])).sum() / (2 * h)),
                                        rel=1e-2, abs=1e-3)


def test_a_vector_towards_an_answer_raises_it_and_the_scale_is_the_class_gap(lm):
    fmt = VerdictPrompt(template="{statement} Is:", answers=("A", "B"))
    encoded = encode_prompts(lm.tokenizer, STATEMENTS, fmt, EditPositions.parse("from-end"), lm.max_length)
    answers = answer_token_ids(lm.tokenizer, fmt.answers)
    unembed = lm.model.get_output_embeddings().weight
    towards = (unembed[answers[0][0]] - unembed[answers[1][0]]).float()
    result = intervention_sweep(lm, encoded[:2], encoded[2:], answers, {"resid_post.2": towards}, [-30, 30, 0.0],
                                fmt=fmt, positions=EditPositions.parse("from-end"))
    assert result.scales == [-30.0, 0.0, 30.0]
    assert result.true_diff[0] < result.true_diff[1] < result.true_diff[2]
    assert result.false_diff[0] < result.false_diff[1] < result.false_diff[2]
    assert result.true_diff[2] - result.true_diff[1] > 0.1 and result.to_dict()["true_change"][1] == 0.0
    # Marks & Tegmark's vector: the gap between the class means along the direction, so
    # α = 1 carries the mean false activation's projection onto the mean true one's.
    g = torch.Generator().manual_seed(2)
    u = torch.randn(8, generator=g)
    true_acts, false_acts = torch.randn(50, 8, generator=g) + 3 * u, torch.randn(40, 8, generator=g)
    v = intervention_vector(u, true_acts, false_acts)
    unit = u / u.norm()
    assert float((false_acts.mean(0) + v) @ unit) == pytest.approx(float(true_acts.mean(0) @ unit), rel=1e-5)
    mass_mean = true_acts.mean(0) - false_acts.mean(0)
    torch.testing.assert_close(intervention_vector(mass_mean, true_acts, false_acts), mass_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(intervention_vector(u, true_acts, false_acts, unit=True), unit)
    with pytest.raises(ConfigError, match="zero"):
        intervention_vector(torch.zeros(8), true_acts, false_acts)
    control = random_like(v, seed=3)
    assert float(control.norm()) == pytest.approx(float(v.norm()), rel=1e-5) and torch.equal(control, random_like(v, 3))
    assert abs(float(control @ v)) < 0.9 * float(v.norm()) ** 2
    assert hooks_text(["resid_post.8", "resid_post.9", "resid_post.10"]) == "resid_post.8-10"
    assert hooks_text(["resid_post.8", "resid_post.10"]) == "resid_post.8, resid_post.10"


def rivers(tmp_path, n=40):
    rows = "".join(f"River {i} is {'long' if i % 2 else 'short'}.,{int(i % 4 < 2)}\n" for i in range(n))
    path = tmp_path / "rivers.csv"
    path.write_text("statement,label\n" + rows)
    return path


def test_saekit_probe_intervene_sweeps_and_plots(model_dir, tmp_path, capsys):
    data, cache = rivers(tmp_path), tmp_path / "cache"
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    common = ["--dataset", str(data), "--model", str(model_dir), "--cache-dir", str(cache), "--template",
              "{statement} Is:", "--shots", "2", "--max-statements", "3"]
    # "-8,-4,0,4,8" as its own argument: argparse must read it as the value, not an option.
    assert main(["probe", "intervene", *common, "--hook", "resid_post.1", "--layers", "0-1", "--scales",
                 "-8,-4,0,4,8", "--positions", "last:2", "--json", str(out), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "resid_post.0, resid_post.1" in printed and "3 true and 3 false" in printed
    assert plot.read_bytes()[:4] == b"\x89PNG"
    record = json.loads(out.read_text())
    assert record["scales"] == [-8, -4, 0, 4, 8] and record["n_true"] == 3 and record["shots"] == 2
    assert record["true_change"][2] == 0.0 and record["false_change"][2] == 0.0
    assert record["true_diff"][0] != record["true_diff"][4]  # the vector does something
    assert record["prefix"].count(" TRUE\n") == 1 and record["prefix"].count(" FALSE\n") == 1
    # The few-shot examples come from the training split, the statements from the held-out one.
    from saekit.probes import read_csv_dataset
    from saekit.probes.training import training_split
    from saekit.probes.training import ProbeRun

    ds = read_csv_dataset(data)
    _, train_idx, test_idx = training_split(ProbeRun(), [ds])
    shots = [line.rsplit(" Is:", 1)[0] for line in record["prefix"].splitlines()]
    assert all(ds.statements.index(s) in train_idx for s in shots)

    # The same from a saved probe, by range of scales.
    saved = tmp_path / "probe.safetensors"
    assert main(["probe", "train", "--dataset", str(data), "--hook", "resid_post.1", "--model", str(model_dir),
                 "--cache-dir", str(cache), "--save", str(saved)]) == 0
    capsys.readouterr()
    assert main(["probe", "intervene", *common, "--probe-file", str(saved), "--scales", "-1:1:0.5",
                 "--unit", "--random-control", "--plot", str(plot), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["scales"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and record["hooks"] == ["resid_post.1"]
    assert record["vector_norm"] == pytest.approx(1.0, rel=1e-5) and record["random_control"]
    assert "random control" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--hook", "resid_post.1", "--positions", "-60"], "outside the prompt"),
    (["--hook", "resid_post.1", "--template", "{statement} " + "and so on " * 12], "reads at most 128"),
    (["--hook", "resid_post.7"], "layer 7 does not exist"),
])
def test_saekit_probe_intervene_refuses_bad_input(model_dir, tmp_path, capsys, extra, message):
    code = main(["probe", "intervene", "--dataset", str(rivers(tmp_path, 16)), "--model", str(model_dir),
                 "--template", "{statement} Is:", "--shots", "0", "--cache-dir", str(tmp_path / "c"),
                 "--plot", str(tmp_path / "p.png"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before any forward pass (none cached activations)


@pytest.mark.parametrize("extra, message", [
    (["--hook", "resid_post.1", "--template", "Is it true?"], "exactly once"),
    (["--hook", "resid_post.1", "--positions", "middle"], "none of"),
    (["--hook", "resid_post.1", "--scales", "1:0:1"], "STOP >= START"),
    (["--plot", "/no/such/folder/p.png", "--hook", "resid_post.1"], "does not exist"),
    (["--hook", "resid_post.1", "--shots", "20"], "lower --shots"),
    ([], "give --probe-file"),
])
def test_bad_flags_fail_before_the_model_loads(tmp_path, capsys, extra, message):
    code = main(["probe", "intervene", "--dataset", str(rivers(tmp_path, 16)), "--model", str(tmp_path / "none"),
                 *extra])
    assert code == 2
    assert message in capsys.readouterr().err
