"""Round trips and error cases for the peer formats (no peer library needed)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import random_dictionary
from saekit.errors import FormatError
from saekit.formats import save_dictionary
from saekit.peer_formats import (
    detect_format,
    load_any,
    load_dictionary_learning,
    load_saelens,
    load_sparsify,
    save_dictionary_learning,
    save_saelens,
    save_sparsify,
)

D, F = 8, 24


def make(arch, seed=0):
    return random_dictionary(arch, D, F, seed)


SAVERS = {
    "saelens": (save_saelens, load_saelens, ["relu", "topk", "batchtopk", "jumprelu", "gated"]),
    "sparsify": (save_sparsify, load_sparsify, ["topk"]),
    "dictionary_learning": (save_dictionary_learning, load_dictionary_learning,
                            ["relu", "topk", "batchtopk", "jumprelu", "gated"]),
}
CASES = [(fmt, arch) for fmt, (_, _, archs) in SAVERS.items() for arch in archs]


def assert_same(a, b):
    x = torch.randn(64, D) * 2
    fa, fb = a.encode(x), b.encode(x)
    assert (fa - fb).abs().max() <= 1e-6
    assert (a.decode(fa) - b.decode(fa)).abs().max() <= 1e-6


@pytest.mark.parametrize("fmt,arch", CASES)
def test_round_trip(tmp_path, fmt, arch):
    save, load, _ = SAVERS[fmt]
    sae = make(arch)
    save(sae, tmp_path)
    assert detect_format(tmp_path) == fmt
    back = load(tmp_path)
    assert_same(sae, back)
    assert_same(sae, load_any(tmp_path))
    assert back.cfg.d_in == D and back.cfg.d_sae == F


def test_detect_saekit_and_unknown(tmp_path):
    save_dictionary(make("relu"), tmp_path / "s")
    assert detect_format(tmp_path / "s") == "saekit"
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "cfg.json").write_text("{}")
    with pytest.raises(FormatError, match="sae_weights.safetensors"):
        detect_format(tmp_path / "u")


def test_unsupported_arch_for_sparsify(tmp_path):
    with pytest.raises(FormatError, match="sparsify supports"):
        save_sparsify(make("relu"), tmp_path)


def test_saelens_conventions(tmp_path):
    # A hand-made SAELens folder with apply_b_dec_to_input=False and a non-unit decoder.
    torch.manual_seed(1)
    W_enc, b_enc, W_dec, b_dec = torch.randn(D, F), torch.randn(F), torch.randn(F, D), torch.randn(D)
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": D, "d_sae": F, "dtype": "float32", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "metadata": {"sae_lens_version": "6.1.0", "hook_name": "h", "model_name": "m"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_saelens(tmp_path)
    x = torch.randn(16, D)
    f = (x @ W_enc + b_enc).relu()
    assert (sae.encode(x) - f).abs().max() < 1e-5
    assert (sae.decode(f) - (f @ W_dec + b_dec)).abs().max() < 1e-5
    assert torch.equal(sae.W_dec, W_dec)  # never renormalised
    assert sae.cfg.hook == "h" and sae.cfg.model == "m"
    for norm in ("layer_norm", "expected_average_only_in"):
        (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": norm}))
        with pytest.raises(FormatError, match=norm):
            load_saelens(tmp_path)
    # expected_average_only_in with its factor folds exactly: SAELens sees x·s.
    s = 3.0
    sae = load_saelens(tmp_path, norm_scaling_factor=s)
    f_peer = (x * s @ W_enc + b_enc).relu()
    assert (sae.decode(sae.encode(x)) - (f_peer @ W_dec + b_dec) / s).abs().max() < 1e-4


def edit_peer_config(folder, fmt, edit):
    """Apply ``edit`` to the dict a peer's config keeps its dictionary settings in."""
    name = "config.json" if fmt == "dictionary_learning" else "cfg.json"
    cfg = json.loads((folder / name).read_text())
    edit(cfg["trainer"] if fmt == "dictionary_learning" else cfg)
    (folder / name).write_text(json.dumps(cfg))


@pytest.mark.parametrize("fmt", list(SAVERS))
def test_missing_key(tmp_path, fmt):
    save, load, _ = SAVERS[fmt]
    save(make("topk"), tmp_path)
    edit_peer_config(tmp_path, fmt, lambda cfg: cfg.pop("k"))
    with pytest.raises(FormatError, match="'k'"):
        load(tmp_path)


@pytest.mark.parametrize("fmt", list(SAVERS))
def test_wrong_shape(tmp_path, fmt):
    save, load, _ = SAVERS[fmt]
    save(make("topk"), tmp_path)
    size_key = {"dictionary_learning": "dict_size", "saelens": "d_sae"}.get(fmt, "num_latents")
    edit_peer_config(tmp_path, fmt, lambda cfg: cfg.__setitem__(size_key, F + 1))
    with pytest.raises(FormatError, match="shape"):
        load(tmp_path)


@pytest.mark.parametrize("fmt", list(SAVERS))
def test_missing_tensor(tmp_path, fmt):
    save, load, _ = SAVERS[fmt]
    save(make("topk"), tmp_path)
    if fmt == "dictionary_learning":
        w = torch.load(tmp_path / "ae.pt", weights_only=True)
        del w["b_dec"]
        torch.save(w, tmp_path / "ae.pt")
    else:
        from safetensors.torch import load_file
        wp = tmp_path / ("sae_weights.safetensors" if fmt == "saelens" else "sae.safetensors")
        w = load_file(str(wp))
        del w["b_dec"]
        save_file(w, str(wp))
    with pytest.raises(FormatError, match="b_dec"):
        load(tmp_path)


@pytest.mark.parametrize("fmt", list(SAVERS))
def test_truncated(tmp_path, fmt):
    save, load, _ = SAVERS[fmt]
    save(make("topk"), tmp_path)
    wp = {"saelens": "sae_weights.safetensors", "sparsify": "sae.safetensors", "dictionary_learning": "ae.pt"}[fmt]
    data = (tmp_path / wp).read_bytes()
    (tmp_path / wp).write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        load(tmp_path)


def test_dictionary_learning_refuses_pickled_code(tmp_path):
    save_dictionary_learning(make("relu"), tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"encoder.weight": Evil()}, tmp_path / "ae.pt")
    with pytest.raises(FormatError, match="executing code"):
        load_dictionary_learning(tmp_path)


def test_unknown_architecture(tmp_path):
    save_saelens(make("relu"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["architecture"] = "matching_pursuit"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="matching_pursuit"):
        load_saelens(tmp_path)


def test_gemma_scope_params_npz(tmp_path):
    import numpy as np

    from saekit.peer_formats import load_any, load_gemma_scope

    g = np.random.default_rng(0)
    d, f = 16, 48
    params = {
        "W_enc": g.normal(size=(d, f)).astype(np.float32), "W_dec": g.normal(size=(f, d)).astype(np.float32),
        "b_enc": g.normal(size=f).astype(np.float32), "b_dec": g.normal(size=d).astype(np.float32),
        "threshold": np.abs(g.normal(size=f)).astype(np.float32),
    }
    params["threshold"][0] = -0.5  # a negative threshold: the reference's ReLU makes it 0
    folder = tmp_path / "layer_3" / "width_16k"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    x = torch.from_numpy(g.normal(size=(64, d)).astype(np.float32))
    t = {k: torch.from_numpy(v) for k, v in params.items()}
    pre = x @ t["W_enc"] + t["b_enc"]  # Gemma Scope's own encode: no b_dec subtracted
    f_ref = (pre > t["threshold"]) * pre.relu()
    x_ref = f_ref @ t["W_dec"] + t["b_dec"]
    for sae in (load_any(folder), load_any(folder / "params.npz"), load_gemma_scope(folder, hook="resid_post.3")):
        assert sae.cfg.arch == "jumprelu" and (sae.cfg.d_in, sae.cfg.d_sae) == (d, f)
        assert torch.allclose(sae.encode(x), f_ref, atol=1e-4) and torch.allclose(sae(x), x_ref, atol=1e-4)
    raw = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        load_any(folder)
