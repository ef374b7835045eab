"""Transcoders in the peer formats: SAELens and sparsify read and write them, the
others refuse them; where a peer's venv is installed, the peer's own loader must give
saekit's numbers (and saekit the peer's, for a transcoder the peer saved itself)."""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import saekit
from saekit.errors import FormatError
from saekit.io.formats import (
    convert,
    detect_format,
    load_any,
    load_gemma_scope,
    load_saelens,
    load_sparsify,
    save_dictionary_learning,
    save_saelens,
    save_sparsify,
)
from saekit.io.saekit_format import save_dictionary

from conftest import random_dictionary

D_IN, D_OUT, F = 8, 6, 24
HOOK, TARGET = "mlp_in.1", "mlp_out.1"
PEERS = Path(__file__).resolve().parents[1] / ".peers"


def transcoder(arch="topk", d_out=D_OUT, skip=True, seed=0):
    """A small saekit transcoder with every tensor perturbed, so that a tensor dropped,
    transposed or read in the wrong convention changes the outputs."""
    tc = random_dictionary(arch, D_IN, F, seed, hook=HOOK, model="tiny", scale=0.3, transcoder=True, target=TARGET,
                           d_out=d_out, skip=skip)
    return tc.requires_grad_(False)


def inputs(n=64, seed=1):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


def assert_same_outputs(a, b, x=None, tol=1e-5):
    x = inputs() if x is None else x
    fa, fb = a.encode(x), b.encode(x)
    assert (fa != 0).any(), "no feature fires: the comparison would prove nothing"
    assert (fa - fb).abs().max() <= tol
    assert (a.reconstruct(x) - b.reconstruct(x)).abs().max() <= tol


# (format, arch, d_out, skip): what each peer format can hold.
SUPPORTED = (
    [("sparsify", "topk", D_IN, skip) for skip in (False, True)]
    + [("saelens", arch, D_OUT, skip) for arch in ("relu", "jumprelu", "batchtopk") for skip in (False, True)]
)
SAVE_LOAD = {"sparsify": (save_sparsify, load_sparsify), "saelens": (save_saelens, load_saelens)}


@pytest.mark.parametrize("fmt,arch,d_out,skip", SUPPORTED)
def test_round_trip(tmp_path, fmt, arch, d_out, skip):
    save, load = SAVE_LOAD[fmt]
    tc = transcoder(arch, d_out, skip)
    save(tc, tmp_path)
    assert detect_format(tmp_path) == fmt
    for back in (load(tmp_path), load_any(tmp_path), saekit.load(tmp_path)):
        c = back.cfg
        assert c.transcoder and c.skip == skip and (c.d_in, c.d_out, c.d_sae) == (D_IN, d_out, F)
        assert_same_outputs(tc, back)
        if fmt == "saelens":  # sparsify's config has no field for hook points
            assert (c.hook, c.target, c.model) == (HOOK, TARGET, "tiny")


def test_saelens_config_is_what_its_transcoder_classes_read(tmp_path):
    save_saelens(transcoder("jumprelu", skip=True), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_skip_transcoder" and cfg["d_out"] == D_OUT
    assert cfg["apply_b_dec_to_input"] is False  # SAELens' TranscoderConfig refuses True
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["hook_name_out"] == TARGET
    shapes = {k: tuple(v.shape) for k, v in load_file(str(tmp_path / "sae_weights.safetensors")).items()}
    assert shapes == {"W_enc": (D_IN, F), "b_enc": (F,), "W_dec": (F, D_OUT), "b_dec": (D_OUT,),
                      "threshold": (F,), "W_skip": (D_OUT, D_IN)}


def test_saelens_skip_transcoder_against_its_formula(tmp_path):
    """A hand-made SAELens skip_transcoder, read against SAELens' forward written out:
    f = ReLU(x W_enc + b_enc), y = f W_dec + b_dec + x W_skipᵀ (W_skip is d_out × d_in)."""
    g = torch.Generator().manual_seed(3)
    t = {"W_enc": torch.randn(D_IN, F, generator=g), "b_enc": torch.randn(F, generator=g),
         "W_dec": torch.randn(F, D_OUT, generator=g), "b_dec": torch.randn(D_OUT, generator=g),
         "W_skip": torch.randn(D_OUT, D_IN, generator=g)}
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": "skip_transcoder", "d_in": D_IN, "d_sae": F, "d_out": D_OUT, "dtype": "float32",
           "apply_b_dec_to_input": False, "normalize_activations": "none",
           "metadata": {"sae_lens_version": "6.54.12", "hook_name": HOOK, "hook_name_out": TARGET}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    tc = load_any(tmp_path)
    x = inputs()
    f = (x @ t["W_enc"] + t["b_enc"]).relu()
    assert (tc.encode(x) - f).abs().max() < 1e-5
    assert (tc.reconstruct(x) - (f @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T)).abs().max() < 1e-4
    assert torch.equal(tc.W_dec, t["W_dec"]) and tc.cfg.target == TARGET

    for edit, match in (
        (lambda c: c.pop("d_out"), "'d_out'"),
        (lambda c: c.update(normalize_activations="layer_norm"), "layer_norm"),
        (lambda c: c.update(d_out=D_IN), "shape"),
        (lambda c: c["metadata"].update(hook_name_out=HOOK), "to itself"),
    ):
        changed = json.loads(json.dumps(cfg))
        edit(changed)
        (tmp_path / "cfg.json").write_text(json.dumps(changed))
        with pytest.raises(FormatError, match=match):
            load_saelens(tmp_path)


def sparsify_folder(folder, transcode, skip, seed=4):
    """A hand-made sparsify folder and its tensors (sparsify's layout: encoder.weight F × d)."""
    g = torch.Generator().manual_seed(seed)
    t = {"encoder.weight": torch.randn(F, D_IN, generator=g), "encoder.bias": torch.randn(F, generator=g),
         "W_dec": torch.randn(F, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g)}
    if skip:
        t["W_skip"] = torch.randn(D_IN, D_IN, generator=g)
    folder.mkdir()
    save_file(t, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 3, "normalize_decoder": True, "num_latents": F, "k": 4,
           "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


@pytest.mark.parametrize("transcode,skip", [(True, False), (True, True), (False, True)])
def test_sparsify_against_its_formula(tmp_path, transcode, skip):
    """sparsify's SparseCoder written out: pre = (x − b_dec·[not transcode]) encoder.weightᵀ + encoder.bias,
    top-k of ReLU(pre), y = f W_dec + b_dec + x W_skipᵀ. An autoencoder with a skip
    connection comes back as a transcoder from its hook point to itself."""
    t = sparsify_folder(tmp_path / "s", transcode, skip)
    tc = load_sparsify(tmp_path / "s")
    assert tc.cfg.transcoder and tc.cfg.skip == skip
    x = inputs()
    pre = ((x if transcode else x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]).relu()
    vals, idx = pre.topk(4, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, vals)
    y = f @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].T if skip else 0)
    assert (tc.encode(x) - f).abs().max() < 1e-5
    assert (tc.reconstruct(x) - y).abs().max() < 1e-4


def test_refusals(tmp_path):
    with pytest.raises(FormatError, match="sparsify's transcoders are topk"):
        save_sparsify(transcoder("relu"), tmp_path / "a")
    with pytest.raises(FormatError, match="keep the input's width"):
        save_sparsify(transcoder("topk", d_out=D_OUT), tmp_path / "b")
    for arch in ("topk", "gated"):
        with pytest.raises(FormatError, match=f"a {arch} transcoder cannot be written as SAELens"):
            save_saelens(transcoder(arch), tmp_path / "c")
    for arch in ("relu", "topk"):
        with pytest.raises(FormatError, match="saekit's own, sparsify .*SAELens"):
            save_dictionary_learning(transcoder(arch), tmp_path / "d")
    # A batchtopk transcoder not calibrated yet: SAELens' ReLU cannot hold a negative threshold.
    tc = transcoder("batchtopk")
    tc.threshold.fill_(-1.0)
    with pytest.raises(FormatError, match="negative threshold"):
        save_saelens(tc, tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_convert_between_formats(tmp_path):
    tc = transcoder("relu", skip=True)
    src = save_dictionary(tc, tmp_path / "saekit")
    convert(src, tmp_path / "saelens", "saelens")
    convert(tmp_path / "saelens", tmp_path / "back", "saekit")
    back = saekit.load(tmp_path / "back")
    assert_same_outputs(tc, back)
    assert (back.cfg.hook, back.cfg.target, back.cfg.d_out) == (HOOK, TARGET, D_OUT)
    with pytest.raises(FormatError, match="dictionary_learning has no transcoder format"):
        convert(src, tmp_path / "dl", "dictionary_learning")
    assert not (tmp_path / "dl").exists()
    tk = transcoder("topk", d_out=D_IN, skip=True, seed=2)
    convert(save_dictionary(tk, tmp_path / "tk"), tmp_path / "sparsify", "sparsify")
    assert_same_outputs(tk, load_any(tmp_path / "sparsify"))


def test_gemma_scope_transcoder(tmp_path):
    """Gemma Scope's transcoders share the SAEs' params.npz: with target= they load as one."""
    g = np.random.default_rng(5)
    params = {"W_enc": g.normal(size=(D_IN, F)), "W_dec": g.normal(size=(F, D_IN)), "b_enc": g.normal(size=F),
              "b_dec": g.normal(size=D_IN), "threshold": np.abs(g.normal(size=F)) * 0.5}
    np.savez(tmp_path / "params.npz", **{k: v.astype(np.float32) for k, v in params.items()})
    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in params.items()}
    x = inputs()
    pre = x @ t["W_enc"] + t["b_enc"]
    f = (pre > t["threshold"]) * pre.relu()
    y = f @ t["W_dec"] + t["b_dec"]
    tc = load_gemma_scope(tmp_path, hook=HOOK, target=TARGET)
    assert tc.cfg.transcoder and tc.cfg.target == TARGET and tc.cfg.d_out == D_IN
    for d in (tc, load_any(tmp_path)):  # as a sparse autoencoder: the same numbers
        assert (d.encode(x) - f).abs().max() < 1e-4 and (d.reconstruct(x) - y).abs().max() < 1e-4


# ---------------------------------------------------------------- the peers' own code
def peer_python(name):
    python = PEERS / name / "bin" / "python"
    if not python.exists():
        pytest.skip(f"the {name} venv is not installed ({python}); see benchmarks/peers_setup.sh")
    return python


def run_peer(name, script, *args):
    env = {**os.environ, "SPARSIFY_DISABLE_TRITON": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([str(peer_python(name)), "-c", textwrap.dedent(script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# Each peer script: args are a tensors file with the input x, an output tensors file, a
# folder for the peer's own transcoder, then the saekit-written folders to load.
SPARSIFY_SCRIPT = """
    import sys, torch
    from safetensors.torch import load_file, save_file
    from sparsify import SparseCoder, SparseCoderConfig

    x = load_file(sys.argv[1])["x"]
    out = {}

    def run(name, sae):
        sae = sae.eval()
        with torch.no_grad():
            acts, idx, _ = sae.encode(x)
            out[name + ".f"] = torch.zeros(x.shape[0], sae.num_latents).scatter(-1, idx, acts)
            out[name + ".y"] = sae(x).sae_out

    for folder in sys.argv[4:]:
        sae = SparseCoder.load_from_disk(folder)
        assert sae.cfg.transcode and sae.num_latents == %(F)d, sae.cfg
        run(folder, sae)
    torch.manual_seed(0)
    own = SparseCoder(%(D)d, SparseCoderConfig(num_latents=%(F)d, k=4, transcode=True, skip_connection=True))
    with torch.no_grad():
        for p in own.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    own.save_to_disk(sys.argv[3])
    run("own", own)
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])
"""

SAELENS_SCRIPT = """
    import sys, torch
    from safetensors.torch import load_file, save_file
    from sae_lens import SAE, JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, Transcoder
    from sae_lens.saes.sae import SAEMetadata

    x = load_file(sys.argv[1])["x"]
    out = {}

    def run(name, sae):
        sae = sae.eval()
        with torch.no_grad():
            out[name + ".f"] = sae.encode(x)
            out[name + ".y"] = sae(x)

    for folder in sys.argv[4:]:
        sae = SAE.load_from_disk(folder)
        assert isinstance(sae, Transcoder), type(sae)
        run(folder, sae)
    torch.manual_seed(0)
    cfg = JumpReLUSkipTranscoderConfig(d_in=%(D)d, d_sae=%(F)d, d_out=%(D_OUT)d, apply_b_dec_to_input=False,
                                       metadata=SAEMetadata(hook_name="%(HOOK)s", hook_name_out="%(TARGET)s"))
    own = JumpReLUSkipTranscoder(cfg)
    with torch.no_grad():
        for p in own.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        own.threshold.copy_(torch.rand(%(F)d) * 0.3)
    own.save_model(sys.argv[3])
    run("own", own)
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])
"""

SUBST = {"D": D_IN, "D_OUT": D_OUT, "F": F, "HOOK": HOOK, "TARGET": TARGET}


@pytest.mark.parametrize("peer,fmt,script", [("sparsify", "sparsify", SPARSIFY_SCRIPT),
                                             ("sae-lens", "saelens", SAELENS_SCRIPT)])
def test_peer_loader_agrees(tmp_path, peer, fmt, script):
    peer_python(peer)
    save, load = SAVE_LOAD[fmt]
    ours = {}
    for i, (f, arch, d_out, skip) in enumerate(case for case in SUPPORTED if case[0] == fmt):
        folder = tmp_path / f"{arch}-{skip}"
        ours[str(folder)] = transcoder(arch, d_out, skip, seed=10 + i)
        save(ours[str(folder)], folder)
    x = inputs(32, seed=7)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    run_peer(peer, script % SUBST, tmp_path / "x.safetensors", tmp_path / "out.safetensors", tmp_path / "own",
             *ours)
    peer_out = load_file(str(tmp_path / "out.safetensors"))
    ours["own"] = load(tmp_path / "own")  # the peer's own transcoder, read by saekit
    assert ours["own"].cfg.transcoder and ours["own"].cfg.skip
    if fmt == "saelens":
        assert (ours["own"].cfg.hook, ours["own"].cfg.target, ours["own"].cfg.d_out) == (HOOK, TARGET, D_OUT)
    for name, tc in ours.items():
        f_peer, y_peer = peer_out[name + ".f"], peer_out[name + ".y"]
        assert (f_peer != 0).any(), name
        assert (tc.encode(x) - f_peer).abs().max() <= 1e-4, name
        assert (tc.reconstruct(x) - y_peer).abs().max() <= 1e-4, name
