"""Inference-time optimisation: each solver against what its mathematics guarantees.

Exact recovery of sparse non-negative codes (an orthonormal decoder for every pursuit;
an incoherent overcomplete one for OMP and gradient pursuit), matching pursuit's
residual never growing, and FISTA's and ISTA's codes meeting the non-negative Lasso's
optimality conditions (and each other).
"""

import pytest
import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import ConfigError, DimensionError
from saekit.interpret import fista, gradient_pursuit, matching_pursuit, orthogonal_matching_pursuit

PURSUITS = [matching_pursuit, orthogonal_matching_pursuit, gradient_pursuit]


def decoder(W: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    d = build_dictionary(DictionaryConfig(arch="relu", d_in=W.shape[1], d_sae=W.shape[0]))
    with torch.no_grad():
        d.W_dec.copy_(W)
        d.b_dec.copy_(torch.randn(W.shape[1]))
    return d.requires_grad_(False)


def sparse_codes(N: int, F: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.zeros(N, F)
    for n in range(N):
        idx = torch.randperm(F, generator=g)[:k]
        f[n, idx] = 0.5 + torch.rand(k, generator=g) * 2
    return f


@pytest.mark.parametrize("solve", PURSUITS, ids=lambda s: s.__name__)
def test_pursuits_recover_codes_on_an_orthonormal_decoder(solve):
    Q, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(0)))
    d = decoder(Q)
    f = sparse_codes(50, 24, 4)
    x = d.decode(f).detach()
    got = solve(d, x, 4)
    torch.testing.assert_close(got, f, atol=1e-4, rtol=1e-4)


def test_on_an_incoherent_overcomplete_decoder_omp_recovers_and_gradient_pursuit_beats_matching_pursuit():
    W = torch.randn(96, 64, generator=torch.Generator().manual_seed(2))
    d = decoder(W / W.norm(dim=1, keepdim=True))
    f = sparse_codes(40, 96, 3)
    x = d.decode(f).detach()

    def error(codes):
        return float(((d.decode(codes) - x).norm(dim=1) / (x - d.b_dec).norm(dim=1)).median())

    torch.testing.assert_close(orthogonal_matching_pursuit(d, x, 3), f, atol=1e-3, rtol=1e-3)
    gp, mp = gradient_pursuit(d, x, 3), matching_pursuit(d, x, 3)
    assert ((gp > 0).sum(1) <= 3).all()
    assert error(gp) < 0.1 and error(gp) < error(mp)


def test_matching_pursuit_never_increases_the_residual():
    d = decoder(torch.nn.functional.normalize(torch.randn(80, 16, generator=torch.Generator().manual_seed(3)), dim=1))
    x = torch.randn(30, 16) * 2
    errors = [float((d.decode(matching_pursuit(d, x, k)) - x).pow(2).sum(1).max()) for k in range(1, 9)]
    assert all(b <= a + 1e-5 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]


def test_fista_meets_the_optimality_conditions_of_the_nonnegative_lasso():
    W = torch.nn.functional.normalize(torch.randn(60, 20, generator=torch.Generator().manual_seed(4)), dim=1)
    d = decoder(W)
    x = d.decode(sparse_codes(25, 60, 5)).detach() + 0.05 * torch.randn(25, 20)
    lam = 0.3
    f = fista(d, x, lam, iterations=3000, tol=1e-9)
    corr = (x - d.decode(f)) @ W.t()  # −∂/∂f of the squared error's half
    active = f > 1e-6
    # f_i > 0: corr_i = λ; f_i = 0: corr_i ≤ λ
    torch.testing.assert_close(corr[active], torch.full_like(corr[active], lam), atol=2e-3, rtol=0)
    assert float(corr[~active].max()) <= lam + 2e-3
    assert (f >= 0).all() and active.any()
    plain = fista(d, x, lam, iterations=20000, accelerated=False, tol=1e-10)
    torch.testing.assert_close(plain, f, atol=5e-3, rtol=0)


def test_bad_requests_are_refused():
    d = decoder(torch.eye(8))
    with pytest.raises(ConfigError, match="l0 must be"):
        matching_pursuit(d, torch.randn(3, 8), 0)
    with pytest.raises(ConfigError, match="l0 must be"):
        orthogonal_matching_pursuit(d, torch.randn(3, 8), 9)
    with pytest.raises(DimensionError, match="width 8"):
        gradient_pursuit(d, torch.randn(3, 7), 2)
    with pytest.raises(ConfigError, match="l1 must be"):
        fista(d, torch.randn(3, 8), -1.0)


# ------------------------------------------------- the comparison on a running model (saekit ito)

import json  # noqa: E402

import saekit  # noqa: E402
from saekit.interpret.ito_comparison import compare_codes  # noqa: E402

HOOK = "resid_post.1"
KW = dict(tokens=300, batch_tokens=128)  # several model batches: the codes must follow them in order


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


def trained_like(lm, arch="topk", seed=0, **kw):
    """A random dictionary for the tiny model with unit-norm decoder rows, as trained ones have."""
    from conftest import random_dictionary

    kw.setdefault("hook", HOOK)
    d = random_dictionary(arch, lm.d_model, 48, seed, model=lm.name, scale=0.2, context_length=32, **kw)
    with torch.no_grad():
        d.after_step()
    return d.requires_grad_(False)


def exact_decoder(lm, encoder_gain=0.5, **kw):
    """A ReLU dictionary whose decoder [I; −I] writes any activation exactly with d atoms, and
    whose encoder finds the right atoms with ``encoder_gain`` times the right values (an
    error of (1 − gain)²‖x‖² for the encoder, 0 for any pursuit at L0 d)."""
    d = lm.d_model
    sae = build_dictionary(DictionaryConfig(arch="relu", d_in=d, d_sae=2 * d, model=lm.name, context_length=32,
                                            **{"hook": HOOK, **kw}))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(encoder_gain * torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.requires_grad_(False)


def test_the_encoders_figures_are_saekit_evaluates_on_the_same_tokens(lm, corpus):
    d = trained_like(lm)
    got = compare_codes(d, lm, dataset=str(corpus), methods=("encoder", "omp"), **KW)
    ref = saekit.evaluate(d, lm, dataset=str(corpus), regimes="fixed", **KW).fixed
    enc = got.method("encoder")
    for name in ("loss_recovered", "ce_diff", "ce_spliced", "fvu", "l0", "kl"):
        assert getattr(enc, name) == pytest.approx(getattr(ref, name), rel=1e-9, abs=1e-12), name
    assert got.ce_clean == pytest.approx(ref.ce_clean, rel=1e-12) and got.ce_zero == pytest.approx(ref.ce_zero, rel=1e-12)
    assert got.n_tokens == ref.n_tokens and got.n_ce_tokens == ref.n_ce_tokens
    assert got.l0 == round(ref.l0) and got.l0_source == "encoder"
    omp = got.method("omp")
    assert omp.l0 <= got.l0 + 1e-9 and omp.seconds > 0 and enc.seconds > 0
    assert omp.ce_spliced != enc.ce_spliced  # its own reconstruction was spliced in


@pytest.mark.parametrize("method", ["mp", "omp", "gp"])
def test_codes_a_decoder_can_write_exactly_recover_the_loss(lm, corpus, method):
    got = compare_codes(exact_decoder(lm), lm, dataset=str(corpus), methods=("encoder", method), **KW)
    enc, ito = got.method("encoder"), got.method(method)
    assert enc.fvu > 0.2  # ‖x − x̂‖² = (1 − 0.5)²‖x‖²: the encoder's own error
    assert ito.fvu == pytest.approx(0.0, abs=1e-8)
    assert ito.loss_recovered == pytest.approx(1.0, abs=1e-4) and ito.kl == pytest.approx(0.0, abs=1e-6)
    assert enc.kl > 1e-3  # the encoder's reconstruction does change the next-token distribution
    assert got.l0 == lm.d_model  # every coordinate of a random model's activation is non-zero


def test_a_transcoders_optimised_codes_reconstruct_its_target_from_the_decoder_alone(lm, corpus):
    """The encoder reads mlp_in.1 (and is poor); the pursuits see only mlp_out.1, which the
    decoder writes exactly, and their reconstruction replaces mlp_out.1 in the model."""
    tc = exact_decoder(lm, encoder_gain=0.3, hook="mlp_in.1", target="mlp_out.1", transcoder=True)
    got = compare_codes(tc, lm, dataset=str(corpus), methods=("encoder", "omp"), l0=lm.d_model, **KW)
    assert got.spliced_at == "mlp_out.1" and got.hook == "mlp_in.1"
    ref = saekit.evaluate(tc, lm, dataset=str(corpus), regimes="fixed", **KW).fixed
    assert got.method("encoder").loss_recovered == pytest.approx(ref.loss_recovered, rel=1e-9)
    omp = got.method("omp")
    assert omp.fvu == pytest.approx(0.0, abs=1e-8) and omp.loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert got.method("encoder").fvu > 0.1


def test_fista_is_matched_to_the_l0_and_thresholding_at_zero_is_no_thresholding(lm, corpus):
    d = trained_like(lm, "relu", seed=2)
    with torch.no_grad():
        d.b_enc.sub_(0.3)  # a sparse encoder
    got = compare_codes(d, lm, dataset=str(corpus), methods=("encoder", "gp", "fista"), fista_iterations=300,
                        thresholds=(0.5, 0.0, 1.0), **KW)
    fi = got.method("fista")
    assert fi.l1 > 0 and abs(fi.l0 - got.l0) <= 0.2 * got.l0 + 1
    t = got.thresholding
    assert t.best in ("gp", "fista") and [r.multiple for r in t.rows] == [0.0, 0.5, 1.0]
    zero, best = t.rows[0], got.method(t.best)
    assert zero.threshold == 0 and t.median > 0
    assert zero.encoder_fvu == pytest.approx(got.method("encoder").fvu, rel=1e-9)
    assert zero.encoder_l0 == pytest.approx(got.method("encoder").l0, rel=1e-9)
    assert zero.best_fvu == pytest.approx(best.fvu, rel=1e-9) and zero.best_l0 == pytest.approx(best.l0, rel=1e-9)
    assert zero.gap_explained == 0
    l0s = [r.encoder_l0 for r in t.rows]
    assert l0s == sorted(l0s, reverse=True) and l0s[-1] < l0s[0]  # higher T, fewer active codes
    r = t.rows[1]
    assert r.gap_explained == pytest.approx(1 - r.gap / zero.gap)


def test_saekit_ito_prints_and_writes_the_figures_and_the_plot(lm, model_dir, corpus, tmp_path, capsys):
    from saekit.cli import main

    saekit.save(trained_like(lm), tmp_path / "d")
    args = ["ito", str(tmp_path / "d"), "--model", str(model_dir), "--dataset", str(corpus), "--tokens", "200",
            "--methods", "encoder,mp,fista", "--fista-iterations", "100"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "matching pursuit" in out and "FISTA has no L0 knob" in out and "thresholding" in out
    record = json.loads((tmp_path / "d" / "ito.json").read_text())
    assert [m["method"] for m in record["methods"]] == ["encoder", "mp", "fista"]
    for m in record["methods"]:
        assert {"l0", "fvu", "loss_recovered", "ce_diff", "ms_per_1k_tokens"} <= m.keys()
    assert record["thresholding"]["best"] in ("mp", "fista") and record["thresholding"]["rows"][0]["multiple"] == 0
    assert record["n_tokens"] >= 200 and record["model"] == str(model_dir.resolve())
    assert (tmp_path / "d" / "ito.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_requests_fail_before_the_model_loads(lm, model_dir, corpus, tmp_path, capsys, monkeypatch):
    from saekit.cli import main

    saekit.save(trained_like(lm), tmp_path / "d")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the checks")

    monkeypatch.setattr(saekit.models, "load_model", no_model)
    base = ["ito", str(tmp_path / "d"), "--dataset", str(corpus)]
    cases = [
        (["--methods", "encoder,lasso"], "unknown method"),
        (["--l0", "0"], "l0 must be"),
        (["--l0", "49"], "l0 must be"),
        (["--tokens", "0"], "--tokens must be positive"),
        (["--thresholds", "0,-1"], "thresholds must be"),
        (["--thresholds", "0,x"], "--thresholds takes"),
        (["--hook", "resid_post.0"], "trained on resid_post.1"),
        (["--model", "another/model"], "--allow-other-model"),
        (["--json", str(tmp_path / "missing" / "x.json")], "does not exist"),
        (["--plot", str(tmp_path)], "is a folder"),
        (["--dataset", str(tmp_path / "nothing.jsonl")], "nothing.jsonl' does not exist"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra


def test_the_library_refuses_bad_arguments(lm, corpus):
    from saekit.errors import HookPointError

    d = trained_like(lm)
    with pytest.raises(ConfigError, match="unknown method"):
        compare_codes(d, lm, methods=("encoder", "pca"))
    with pytest.raises(ConfigError, match="named twice"):
        compare_codes(d, lm, methods=("omp", "omp"))
    with pytest.raises(ConfigError, match="tokens must be"):
        compare_codes(d, lm, tokens=0)
    with pytest.raises(HookPointError):
        compare_codes(trained_like(lm, hook="resid_post.7"), lm, dataset=str(corpus), tokens=50)
    wide = build_dictionary(DictionaryConfig(arch="relu", d_in=lm.d_model + 1, d_sae=8, hook=HOOK, model=lm.name))
    with pytest.raises(DimensionError, match="width"):
        compare_codes(wide, lm, dataset=str(corpus), tokens=50)


def test_a_dataset_without_held_out_text_is_refused(lm, tmp_path):
    from saekit.errors import DataError

    few = tmp_path / "few.txt"
    few.write_text("\n\n".join(f"document {i} about the river" for i in range(5)))  # none is held out
    with pytest.raises(DataError, match="held-out split"):
        compare_codes(trained_like(lm), lm, dataset=str(few), tokens=50)
