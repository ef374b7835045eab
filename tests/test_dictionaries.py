"""Dictionary architectures: conventions, subset encoding, scale folding, the saved format."""

import json

import pytest
import torch

from saekit import load, save
from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, LossParams, build_dictionary
from saekit.errors import ConfigError, FormatError

ARCHS = sorted(ARCHITECTURES)


def make(arch: str, d: int = 16, F: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    cfg = DictionaryConfig(arch=arch, d_in=d, d_sae=F, k=6 if ARCHITECTURES[arch].uses_k else None, hook="resid_post.1", model="tiny")
    sae = build_dictionary(cfg)
    with torch.no_grad():  # move off the symmetric init so every parameter matters
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
        sae.after_step()
        if arch == "batchtopk":
            sae.threshold.fill_(0.3)
        if arch == "jumprelu":
            sae.threshold.uniform_(0.05, 0.4)
    return sae


def test_registry_has_the_five_architectures():
    assert ARCHS == ["batchtopk", "gated", "jumprelu", "relu", "topk"]


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_conventions(arch):
    sae = make(arch)
    assert sae.W_enc.shape == (16, 64) and sae.W_dec.shape == (64, 16)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)
    x = torch.randn(2, 3, 5, 16)
    f = sae.encode(x)
    assert f.shape == (2, 3, 5, 64) and sae.reconstruct(x).shape == x.shape
    # x̂ = f W_dec + b_dec, exactly
    assert torch.allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec, atol=1e-6)
    # pre-activations subtract b_dec first (tied pre-bias)
    assert torch.allclose(sae.pre_acts(x), (x - sae.b_dec) @ sae.W_enc + sae.b_enc, atol=1e-6)
    assert (f >= 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_subset_encode_matches_and_is_differentiable(arch):
    sae = make(arch)
    x = torch.randn(7, 16, requires_grad=True)
    idx = torch.tensor([0, 3, 17, 63])
    full = sae.encode(x)
    sub = sae.encode(x, idx)
    assert torch.allclose(sub, full[:, idx], atol=1e-6)
    sub.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_is_the_training_objective(arch):
    """forward(x, target, params) returns the loss; the target defaults to x."""
    sae = make(arch)
    x = torch.randn(2, 5, 16)  # any leading shape: tokens are flattened
    params = LossParams(sparsity_coeff=0.1, dead_mask=torch.arange(64) % 2 == 0)
    out = sae(x, params=params)
    assert out.loss.shape == () and out.x_hat.shape == (10, 16)
    assert out.fired.shape == (64,) and out.fired.dtype == torch.bool and out.n_active.shape == ()
    assert torch.equal(sae(x.reshape(10, 16), params=params).loss, out.loss)
    assert torch.equal(sae(x, x, params).loss, out.loss)
    assert sae(x).loss.shape == ()  # params default to LossParams()
    with pytest.raises(ValueError, match=r"target has shape \(10, 12\).*width 16 per input token"):
        sae(x, torch.randn(10, 12), params)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_codes_give_the_dense_codes(arch):
    sae = make(arch)
    x = torch.randn(3, 7, 16) * 3
    values, indices = sae.encode_sparse(x)
    assert values.shape == indices.shape and values.shape[:2] == (3, 7)
    if arch == "topk":
        assert values.shape[-1] == 6
    f = sae.encode(x)
    dense = torch.zeros_like(f).scatter_add(-1, indices, values)
    assert torch.allclose(dense, f, atol=1e-6)
    assert torch.allclose(sae.decode_sparse(values, indices), sae.reconstruct(x), atol=1e-5)
    leaf = values.detach().requires_grad_(True)
    sae.decode_sparse(leaf, indices).sum().backward()
    assert leaf.grad is not None and sae.W_dec.grad is not None


def test_topk_keeps_exactly_k():
    sae = make("topk")
    f = sae.encode(torch.randn(50, 16) * 3)
    assert ((f > 0).sum(-1) <= 6).all() and ((f > 0).sum(-1) == 6).float().mean() > 0.9


def test_batchtopk_keeps_k_times_batch_in_training_and_calibrates_its_threshold():
    sae = make("batchtopk")
    sae.threshold.fill_(-1.0)
    with pytest.raises(RuntimeError, match="threshold"):
        sae.encode(torch.randn(3, 16))
    x = torch.randn(400, 16) * 3
    out = sae(x, params=LossParams())
    assert int(out.n_active) == 6 * 400
    kept = sae.batch_activate(sae.pre_acts(x).detach())
    assert int((kept > 0).sum()) == 6 * 400 and bool(out.fired.eq((kept > 0).any(0)).all())
    sae.calibrate(x)
    assert float(sae.threshold.detach()) == pytest.approx(float(kept[kept > 0].min()))
    # at inference, the calibration batch keeps k features per token on average
    assert (sae.encode(x) > 0).sum(-1).float().mean() == pytest.approx(6, abs=0.05)


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_activation_scale(arch):
    """Weights trained on x/s, once folded, act on raw x: f scales by s, x̂ by s."""
    sae = make(arch)
    x = torch.randn(30, 16)
    s = 7.5
    f_scaled, xhat_scaled = sae.encode(x), sae.reconstruct(x)
    sae.fold_activation_scale(s)
    assert sae.cfg.act_scale == s
    assert torch.allclose(sae.encode(x * s), f_scaled * s, atol=1e-4)
    assert torch.allclose(sae.reconstruct(x * s), xhat_scaled * s, atol=1e-4)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_losses_are_finite_and_reach_every_parameter(arch):
    sae = make(arch)
    x = torch.randn(64, 16)
    out = sae(x, params=LossParams(sparsity_coeff=0.1, dead_mask=torch.arange(64) % 2 == 0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in sae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_jumprelu_threshold_gets_l0_gradient():
    sae = make("jumprelu")
    x = torch.randn(256, 16)
    pre = sae.pre_acts(x).detach()
    sae.threshold.data.copy_(pre.median(0).values)  # put thresholds among the pre-activations
    out = sae(x, params=LossParams(sparsity_coeff=1.0, jumprelu_bandwidth=0.5))
    (out.terms["l0_penalty"]).backward()
    # Raising a threshold lowers L0, so the L0 term's gradient on θ is negative.
    assert (sae.threshold.grad < 0).sum() > 32


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, tmp_path):
    sae = make(arch)
    sae.fold_activation_scale(3.0)
    save(sae, tmp_path / "d")
    back = load(tmp_path / "d")
    assert back.cfg == sae.cfg and type(back) is type(sae)
    x = torch.randn(9, 16)
    assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back.reconstruct(x), sae.reconstruct(x))
    header = json.loads((tmp_path / "d" / "config.json").read_text())
    assert header["format"] == "saekit" and header["format_version"] == 1
    assert not list((tmp_path / "d").glob("*.pt")) and not list((tmp_path / "d").glob("*.pkl"))


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FormatError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="holds no dictionary format saekit recognises.*found: nothing"):
        load(tmp_path / "empty")
    sae = make("topk")
    folder = save(sae, tmp_path / "d")
    cfg_path, w_path = folder / "config.json", folder / "weights.safetensors"
    header = json.loads(cfg_path.read_text())

    del header["dictionary"]["d_sae"]
    cfg_path.write_text(json.dumps(header))
    with pytest.raises(FormatError, match="missing the key 'd_sae'"):
        load(folder)

    header["dictionary"]["d_sae"] = 32
    cfg_path.write_text(json.dumps(header))
    with pytest.raises(FormatError, match="shape"):
        load(folder)

    header["dictionary"].update(d_sae=64, arch="mystery")
    cfg_path.write_text(json.dumps(header))
    with pytest.raises(FormatError, match="unknown architecture 'mystery'"):
        load(folder)

    header["dictionary"]["arch"] = "topk"
    cfg_path.write_text(json.dumps(header))
    w_path.write_bytes(w_path.read_bytes()[: w_path.stat().st_size // 2])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        load(folder)

    cfg_path.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        load(folder)


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown architecture"):
        DictionaryConfig(arch="nope", d_in=4, d_sae=8)
    with pytest.raises(ConfigError, match="must be smaller than the dictionary size"):
        DictionaryConfig(arch="topk", d_in=4, d_sae=8, k=8)
    with pytest.raises(ConfigError, match="needs a positive k"):
        DictionaryConfig(arch="batchtopk", d_in=4, d_sae=8)


def test_wrong_width_is_a_clear_error():
    sae = make("relu")
    with pytest.raises(ValueError, match="width 16 \\(resid_post.1 of tiny\\), but got width 20"):
        sae.encode(torch.randn(3, 20))


def test_saved_files_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        folder = save(make("relu"), tmp_path / "d")
    finally:
        os.umask(old)
    assert stat.S_IMODE((folder / "weights.safetensors").stat().st_mode) == 0o644


def test_fingerprints_tell_decoders_apart_beside_a_large_decoder_bias():
    """A residual stream's b_dec (norm ~400) once hid any difference between decoders."""
    from saekit.dictionaries import DictionaryConfig, build_dictionary, same_weights

    cfg = DictionaryConfig(arch="topk", d_in=64, d_sae=256, k=8)
    torch.manual_seed(0)
    a = build_dictionary(cfg)
    torch.manual_seed(1)
    b = build_dictionary(cfg)
    with torch.no_grad():
        a.b_dec.fill_(50.0)
        b.b_dec.fill_(50.01)
    assert not same_weights(a.fingerprint(), b.fingerprint())
    with torch.no_grad():
        b.load_state_dict(a.state_dict())
        b.W_dec.add_(1e-7 * torch.randn_like(b.W_dec))  # what a format conversion moves
    assert same_weights(a.fingerprint(), b.fingerprint())


@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruct_in_blocks_is_reconstruct_at_once(arch, monkeypatch):
    """Many tokens are reconstructed in blocks of rows; the result is the one-block result."""
    from saekit.dictionaries import base

    sae = make(arch)
    if arch == "batchtopk":
        sae.calibrate(torch.randn(300, 16))
    x = torch.randn(3, 37, 16)
    whole = sae.reconstruct(x)
    monkeypatch.setattr(base, "RECONSTRUCT_BLOCK", 64 * 5)  # blocks of 5 rows for F = 64
    blocks = sae.reconstruct(x)
    assert blocks.shape == x.shape
    torch.testing.assert_close(blocks, whole)
    torch.testing.assert_close(blocks, sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)
