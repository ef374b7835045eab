"""Round trips and error cases for the peer formats (no peer library needed)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import random_dictionary
from saekit.errors import FormatError
from saekit.io.saekit_format import save_dictionary
from saekit.io.formats import (
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

    from saekit.io.formats import load_any, load_gemma_scope

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
        assert torch.allclose(sae.encode(x), f_ref, atol=1e-4) and torch.allclose(sae.reconstruct(x), x_ref, atol=1e-4)
    raw = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        load_any(folder)


# ---------------------------------------------------------------- loaded for use, not training
def test_every_loader_returns_a_dictionary_without_gradients(tmp_path):
    """A loaded dictionary's parameters required gradients, so every encode downstream
    built an autograd graph (and torch warned about it)."""
    import numpy as np

    from saekit.io.saekit_format import load_dictionary
    from saekit.io.formats import load_gemma_scope

    folders = {}
    save_dictionary(make("topk"), tmp_path / "saekit")
    folders["saekit"] = (tmp_path / "saekit", load_dictionary)
    for fmt, (save, load, _) in SAVERS.items():
        save(make("topk"), tmp_path / fmt)
        folders[fmt] = (tmp_path / fmt, load)
    sae = make("jumprelu")
    (tmp_path / "gemma").mkdir()
    np.savez(tmp_path / "gemma" / "params.npz", **{k: v.detach().numpy() for k, v in sae.state_dict().items()})
    folders["gemma_scope"] = (tmp_path / "gemma", load_gemma_scope)
    for fmt, (folder, load) in folders.items():
        for loaded in (load(folder), load_any(folder)):
            grads = {name for name, p in loaded.named_parameters() if p.requires_grad}
            assert not grads, (fmt, grads)
            assert not loaded.encode(torch.randn(3, D)).requires_grad, fmt


# ---------------------------------------------------------------- writing into folders
def test_writer_refuses_a_folder_holding_another_format(tmp_path):
    """Writing sparsify over SAELens replaced cfg.json and kept sae_weights.safetensors: the
    folder then read as a SAELens SAE with sparsify's config."""
    from saekit.errors import OutputError

    save_saelens(make("topk", seed=1), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match=r"already holds another dictionary \(sae_weights.safetensors\).*--overwrite"):
        save_sparsify(make("topk", seed=2), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    save_dictionary(make("topk"), tmp_path / "s")
    with pytest.raises(OutputError, match="weights.safetensors"):
        save_dictionary_learning(make("topk"), tmp_path / "s")  # would replace saekit's config.json
    import saekit

    with pytest.raises(OutputError, match="sae_weights.safetensors"):
        saekit.save(make("topk"), tmp_path)  # load would then return it, beside SAELens' files
    save_saelens(make("topk", seed=3), tmp_path)  # its own format: replaced in place
    assert_same(load_any(tmp_path), make("topk", seed=3))


def test_writers_refuse_a_file_as_the_folder(tmp_path):
    from saekit.errors import OutputError

    (tmp_path / "f").write_text("x")
    for save, _, _ in SAVERS.values():
        with pytest.raises(OutputError, match="is a file, not a folder"):
            save(make("topk"), tmp_path / "f")


def run_folder(folder, sae):
    """A folder as `saekit train` leaves it, plus a file of the user's."""
    save_dictionary(sae, folder)
    for name in ("training.json", "log.jsonl", "eval.json", "report.html", "checkpoint.safetensors"):
        (folder / name).write_text("{}")
    (folder / "notes.txt").write_text("mine")
    return folder


def test_convert_refuses_a_non_empty_destination(tmp_path):
    """convert replaced a run's weights and left its eval.json, log and checkpoint
    describing the old dictionary; into another format's folder it left two dictionaries."""
    from saekit.errors import OutputError
    from saekit.io.formats import convert

    new = save_dictionary(make("topk", seed=7), tmp_path / "new")
    run = run_folder(tmp_path / "run", make("topk", seed=1))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(OutputError, match=r"is not empty \(it holds checkpoint.safetensors, .*--overwrite"):
        convert(new, run, "saelens")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert convert(new, tmp_path / "fresh", "saelens") == tmp_path / "fresh"
    # The lock file a finished convert leaves does not make a folder "not empty".
    (tmp_path / "fresh" / "cfg.json").unlink()
    (tmp_path / "fresh" / "sae_weights.safetensors").unlink()
    convert(new, tmp_path / "fresh", "sparsify")


def test_convert_overwrite_removes_everything_that_describes_the_old_dictionary(tmp_path):
    from saekit.io.formats import convert

    new = make("topk", seed=7)
    source = save_dictionary(new, tmp_path / "new")
    run = run_folder(tmp_path / "run", make("topk", seed=1))
    convert(source, run, "saelens", overwrite=True)
    names = {p.name for p in run.iterdir() if not p.name.startswith(".")}
    assert names == {"cfg.json", "sae_weights.safetensors", "notes.txt"}
    assert_same(load_any(run), new)
    # A SAELens folder converted to saekit in place of it: only saekit's files remain.
    convert(source, run, "saekit", overwrite=True)
    assert {p.name for p in run.iterdir() if not p.name.startswith(".")} == {"config.json", "weights.safetensors", "notes.txt"}
    assert detect_format(run) == "saekit"


def test_convert_onto_itself_or_a_file_is_refused(tmp_path):
    from saekit.errors import OutputError
    from saekit.io.formats import convert

    folder = save_dictionary(make("topk"), tmp_path / "d")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for src in (folder, folder / "config.json"):
        with pytest.raises(OutputError, match="is the source folder itself"):
            convert(src, folder, "saelens", overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        convert(folder, tmp_path / "file", "saelens")
    with pytest.raises(OutputError, match="no folder can be made under it"):
        convert(folder, tmp_path / "file" / "sub", "saelens")


def test_convert_checks_a_read_only_destination_before_reading(tmp_path, monkeypatch):
    import os

    from saekit.io import formats as peer_formats
    from saekit.errors import OutputError

    folder = save_dictionary(make("topk"), tmp_path / "d")
    (tmp_path / "ro").mkdir()
    real = os.access
    # Tests may run as root, for whom chmod does not make a folder read-only.
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path / "ro") else real(p, mode, **kw))
    monkeypatch.setattr(peer_formats, "load_any", lambda *a, **kw: pytest.fail("read before the destination was checked"))
    with pytest.raises(OutputError, match="read-only"):
        peer_formats.convert(folder, tmp_path / "ro" / "out", "saelens")


def test_convert_is_refused_while_another_process_writes_the_destination(tmp_path):
    from saekit.errors import FolderBusyError
    from saekit.io.files import FolderLock
    from saekit.io.formats import convert

    source = save_dictionary(make("topk"), tmp_path / "d")
    (tmp_path / "out").mkdir()
    with FolderLock(tmp_path / "out", "train"):
        # flock locks are per open file, so a second open in this process is refused too.
        with pytest.raises(FolderBusyError, match="in use by another saekit process"):
            convert(source, tmp_path / "out", "saelens")
    assert not (tmp_path / "out" / "cfg.json").exists()


# ---------------------------------------------------------------- BOS policy
@pytest.mark.parametrize("fmt", ["saelens", "dictionary_learning"])
def test_keep_bos_survives_the_formats_that_can_record_it(tmp_path, fmt):
    save, load, _ = SAVERS[fmt]
    sae = make("topk")
    sae.cfg.keep_bos = True
    save(sae, tmp_path)
    assert load(tmp_path).cfg.keep_bos is True
    sae.cfg.keep_bos = False
    save(sae, tmp_path)
    assert load(tmp_path).cfg.keep_bos is False


def test_sparsify_records_no_bos_policy(tmp_path):
    sae = make("topk")
    sae.cfg.keep_bos = True
    save_sparsify(sae, tmp_path)
    assert "keep_bos" not in (tmp_path / "cfg.json").read_text()  # sparsify's own keys only
    assert load_sparsify(tmp_path).cfg.keep_bos is False


@pytest.mark.parametrize("meta,kept", [
    ({"prepend_bos": True, "exclude_special_tokens": False}, True),
    ({"prepend_bos": True, "exclude_special_tokens": False, "seqpos_slice": [None]}, True),
    ({"prepend_bos": True, "exclude_special_tokens": False, "seqpos_slice": [1, None]}, False),
    ({"prepend_bos": True, "exclude_special_tokens": True}, False),
    ({"prepend_bos": True, "exclude_special_tokens": [1]}, False),  # which ids: unknown here, so not claimed
    ({"prepend_bos": False, "exclude_special_tokens": False}, False),
    ({"prepend_bos": True}, False),  # an older SAELens that did not record it
    ({}, False),
])
def test_saelens_bos_policy_from_its_own_metadata(tmp_path, meta, kept):
    save_saelens(make("topk"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["metadata"]["saekit_keep_bos"]
    cfg["metadata"].update(meta)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert load_saelens(tmp_path).cfg.keep_bos is kept
