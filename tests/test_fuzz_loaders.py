"""Any bytes in a dictionary's files give a consistent Dictionary or a SaekitError, never code execution.

The mutation strategies and the contract live in ``benchmarks/fuzz_loaders.py``, which
runs them at a large count and prints a table; here they run at a small count on every
test run (loaded by path: ``benchmarks/`` is a folder of scripts, not a package).
After them, one deterministic test per bug the fuzzer found, named after the bug.
"""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from saekit.io.checkpoint import load_checkpoint
from saekit.errors import CheckpointError, FormatError
from saekit.io.formats import load_any


def _import_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_loaders.py"
    spec = importlib.util.spec_from_file_location("fuzz_loaders", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


fuzz = _import_benchmark()
# Warnings the mutated files legitimately cause (odd pickle protocols, complex casts).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ = settings(
    max_examples=50, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# ---------------------------------------------------------------- the properties
@pytest.mark.parametrize("fmt,strategy", fuzz.CASES)
@FUZZ
@given(data=st.data())
def test_loader_contract(fmt, strategy, data):
    outcome = fuzz.check(fmt, data.draw(fuzz.inputs(fmt, strategy)))
    assert outcome.kind != "crash", outcome.detail


@pytest.mark.parametrize("fmt,arch", [(fmt, arch) for fmt, archs in fuzz.ARCHS.items() for arch in archs])
def test_valid_folders_are_accepted(fmt, arch):
    assert fuzz.check(fmt, dict(fuzz.baseline(fmt, arch))).kind == "accepted"


def test_the_contract_check_sees_code_run_and_inconsistent_dictionaries(monkeypatch):
    # Controls for the oracle itself: a loader that unpickles, and one that returns NaN.
    files = dict(fuzz.baseline("dictionary_learning", "relu"))
    files["ae.pt"] = pickle.dumps(fuzz.RunsCode())
    monkeypatch.setattr(fuzz, "load_any", lambda folder: pickle.loads((folder / "ae.pt").read_bytes()))
    assert fuzz.check("dictionary_learning", files).detail.startswith("CODE FROM THE FILE RAN")
    bad = fuzz.make("relu")
    with torch.no_grad():
        bad.W_dec[0, 0] = float("nan")
    monkeypatch.setattr(fuzz, "load_any", lambda folder: bad)
    assert "W_dec holds NaN" in fuzz.check("saekit", dict(fuzz.baseline("saekit", "relu"))).detail


# ---------------------------------------------------------------- helpers
CONFIG_FORMATS = ["saekit", "saelens", "sparsify", "dictionary_learning"]


def folder_of(tmp_path, fmt, arch="topk") -> Path:
    folder = tmp_path / f"{fmt}-{arch}"
    folder.mkdir()
    for name, data in fuzz.baseline(fmt, arch):
        (folder / name).write_bytes(data)
    return folder


def edit_config(folder: Path, fmt: str, edit) -> None:
    """Apply ``edit`` to the dict holding the dictionary's settings in ``fmt``'s config."""
    path = folder / fuzz.FILES[fmt][0]
    cfg = json.loads(path.read_text())
    edit(cfg["dictionary"] if fmt == "saekit" else cfg["trainer"] if fmt == "dictionary_learning" else cfg)
    path.write_text(json.dumps(cfg))


def edit_tensors(folder: Path, fmt: str, edit) -> None:
    path = folder / fuzz.FILES[fmt][1]
    tensors, metadata = fuzz.read_tensors(fmt, path.read_bytes())
    edit(tensors)
    path.write_bytes(fuzz.write_tensors(fmt, tensors, metadata))


def size_key(fmt: str) -> str:
    return {"saekit": "d_sae", "saelens": "d_sae", "sparsify": "num_latents"}.get(fmt, "dict_size")


def with_member(zip_bytes: bytes, suffix: str, content: bytes) -> bytes:
    """The zip archive with the member ending in ``suffix`` replaced (valid CRCs)."""
    src, buf = zipfile.ZipFile(io.BytesIO(zip_bytes)), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, content if info.filename.endswith(suffix) else src.read(info))
    return buf.getvalue()


# ---------------------------------------------------------------- regressions: configs
@pytest.mark.parametrize("fmt", CONFIG_FORMATS)
def test_json_integer_past_pythons_digit_limit(tmp_path, fmt):
    # json raised ValueError("Exceeds the limit (4300 digits)..."), not a JSONDecodeError.
    folder = folder_of(tmp_path, fmt)
    path = folder / fuzz.FILES[fmt][0]
    path.write_text(path.read_text().replace('"k": 4', '"k": ' + "9" * 5000))
    with pytest.raises(FormatError, match="not valid JSON.*digits"):
        load_any(folder)


@pytest.mark.parametrize("fmt", CONFIG_FORMATS)
def test_json_nested_deeper_than_the_parser_follows(tmp_path, fmt):
    folder = folder_of(tmp_path, fmt)
    (folder / fuzz.FILES[fmt][0]).write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(FormatError, match="not valid JSON.*RecursionError"):
        load_any(folder)


@pytest.mark.parametrize("fmt", CONFIG_FORMATS)
def test_config_file_that_is_a_folder(tmp_path, fmt):
    # read_text() raised IsADirectoryError.
    folder = folder_of(tmp_path, fmt)
    config = folder / fuzz.FILES[fmt][0]
    config.unlink()
    config.mkdir()
    with pytest.raises(FormatError, match="cannot be read"):
        load_any(folder)


def test_saekit_config_that_is_not_utf8(tmp_path):
    folder = folder_of(tmp_path, "saekit")
    (folder / "config.json").write_bytes(b'{"format": "saekit\xff"}')
    with pytest.raises(FormatError, match="config.json is not valid JSON"):
        load_any(folder)


@pytest.mark.parametrize("key,value", [("arch", ["topk"]), ("arch", 5), ("d_in", 8.0), ("d_sae", "24"),
                                       ("d_in", True), ("k", 4.5), ("hook", 3), ("act_scale", "1"),
                                       ("context_length", -64), ("context_length", True)])
def test_saekit_config_value_of_the_wrong_type(tmp_path, key, value):
    # A list arch raised TypeError (unhashable); a float size reached torch.empty.
    folder = folder_of(tmp_path, "saekit")
    edit_config(folder, "saekit", lambda cfg: cfg.__setitem__(key, value))
    with pytest.raises(FormatError, match=f"config.json: '{key}' must be"):
        load_any(folder)


@pytest.mark.parametrize("d_sae", [10**12, 2**64, 10**300])
def test_saekit_huge_d_sae_is_checked_against_the_tensors_before_allocating(tmp_path, d_sae):
    # The dictionary used to be built (allocated) from the config before any shape check.
    folder = folder_of(tmp_path, "saekit")
    edit_config(folder, "saekit", lambda cfg: cfg.__setitem__("d_sae", d_sae))
    with pytest.raises(FormatError, match="'W_enc' has shape"):
        load_any(folder)


@pytest.mark.parametrize("fmt", CONFIG_FORMATS)
def test_config_size_contradicting_the_tensors(tmp_path, fmt):
    folder = folder_of(tmp_path, fmt)
    edit_config(folder, fmt, lambda cfg: cfg.__setitem__(size_key(fmt), fuzz.F * 2))
    with pytest.raises(FormatError, match=r"has shape .* but the config implies"):
        load_any(folder)


def test_saelens_activation_fn_kwargs_that_is_not_a_dict(tmp_path):
    # An old-layout topk config: "k" comes from activation_fn_kwargs, which was assumed a dict.
    folder = folder_of(tmp_path, "saelens")
    edit_config(folder, "saelens", lambda cfg: (cfg.pop("architecture"), cfg.pop("k"),
                                                cfg.update(activation_fn_str="topk", activation_fn_kwargs=[4])))
    with pytest.raises(FormatError, match="missing the key 'k'"):
        load_any(folder)


@pytest.mark.parametrize("value", ["128", -1, 1.5, True, [128]])
def test_context_length_of_the_wrong_type_was_accepted(tmp_path, value):
    folder = folder_of(tmp_path, "saelens")
    edit_config(folder, "saelens", lambda cfg: cfg["metadata"].__setitem__("context_size", value))
    with pytest.raises(FormatError, match="'context_length' must be a positive integer"):
        load_any(folder)
    folder = folder_of(tmp_path, "dictionary_learning")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "buffer": {"ctx_len": value}}))
    with pytest.raises(FormatError, match="'context_length' must be a positive integer"):
        load_any(folder)


@pytest.mark.parametrize("norm_factor", [10**400, -2.0, "2", float("inf")])
def test_dictionary_learning_norm_factor_that_is_not_a_positive_number(tmp_path, norm_factor):
    # float(10**400) raised OverflowError; other bad values were silently replaced by 1.
    folder = folder_of(tmp_path, "dictionary_learning")
    edit_config(folder, "dictionary_learning", lambda cfg: cfg.__setitem__("norm_factor", norm_factor))
    with pytest.raises(FormatError, match="config.json"):
        load_any(folder)


# ---------------------------------------------------------------- regressions: tensors
@pytest.mark.parametrize("fmt", ["saekit", "saelens", "sparsify", "dictionary_learning", "gemma_scope"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e300])
def test_non_finite_weight_is_an_error_naming_the_tensor(tmp_path, fmt, value):
    # Was accepted by every format (1e300: finite as float64, Inf as float32).
    arch = "jumprelu" if fmt == "gemma_scope" else "topk"
    folder = folder_of(tmp_path, fmt, arch)
    name = "encoder.bias" if fmt in ("sparsify", "dictionary_learning") else "b_enc"

    def poison(tensors):
        tensors[name] = tensors[name].double()
        tensors[name][3] = value
    edit_tensors(folder, fmt, poison)
    with pytest.raises(FormatError, match=f"'{name}' holds 1 NaN or infinite"):
        load_any(folder)


def test_finite_weights_that_overflow_once_converted(tmp_path):
    # SAELens without apply_b_dec_to_input: b_enc gains b_dec W_enc, which overflows float32.
    folder = folder_of(tmp_path, "saelens", "relu")
    edit_config(folder, "saelens", lambda cfg: cfg.__setitem__("apply_b_dec_to_input", False))
    edit_tensors(folder, "saelens",
                 lambda t: t.update(b_dec=torch.full((fuzz.D,), 1e30), W_enc=t["W_enc"].abs() * 1e30))
    with pytest.raises(FormatError, match="saekit's 'b_enc', computed from the file's tensors, holds"):
        load_any(folder)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8])
def test_saekit_integer_weights_were_cast_silently(tmp_path, dtype):
    folder = folder_of(tmp_path, "saekit")
    edit_tensors(folder, "saekit", lambda t: t.update(W_dec=t["W_dec"].to(dtype)))
    with pytest.raises(FormatError, match=f"'W_dec' has dtype {dtype}"):
        load_any(folder)


def test_dictionary_learning_nan_k_tensor(tmp_path):
    # int(tensor(nan)) raised ValueError.
    folder = folder_of(tmp_path, "dictionary_learning")
    edit_tensors(folder, "dictionary_learning", lambda t: t.update(k=torch.tensor(float("nan"))))
    with pytest.raises(FormatError, match="tensor 'k'"):
        load_any(folder)


# ---------------------------------------------------------------- regressions: containers
@pytest.mark.parametrize("pkl,error", [
    (b"\x80\x02.", "IndexError"), (b"\x80\x02K", "IndexError"), (b"\x80\x02M\x01", "error"),
    (b"\x80\x02h\x07.", "KeyError"), (b"\x80\x02K\x01Q.", "AssertionError"),
    (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "UnicodeDecodeError"),
])
def test_ae_pt_with_damaged_pickle_bytecode(tmp_path, pkl, error):
    # torch's weights-only unpickler fails with whatever error the bad opcode causes.
    folder = folder_of(tmp_path, "dictionary_learning")
    (folder / "ae.pt").write_bytes(with_member((folder / "ae.pt").read_bytes(), "data.pkl", pkl))
    with pytest.raises(FormatError, match=f"ae.pt cannot be read \\({error}"):
        load_any(folder)


@pytest.mark.parametrize("evil", fuzz.EVIL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_ae_pt_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, evil, container):
    folder = folder_of(tmp_path, "dictionary_learning")
    state = torch.load(folder / "ae.pt", weights_only=True)
    if container == "torch.save":
        torch.save({**state, "encoder.weight": evil()}, folder / "ae.pt")
    else:
        (folder / "ae.pt").write_bytes(pickle.dumps({**state, "encoder.weight": evil()}))
    fuzz.SENTINEL.unlink(missing_ok=True)
    with pytest.raises(FormatError, match="without executing code"):
        load_any(folder)
    assert not fuzz.SENTINEL.exists()


def test_gemma_scope_object_array_is_never_unpickled(tmp_path):
    folder = folder_of(tmp_path, "gemma_scope", "jumprelu")
    with np.load(folder / "params.npz") as npz:
        arrays = dict(npz)
    fuzz.SENTINEL.unlink(missing_ok=True)
    np.savez(folder / "params.npz", **{**arrays, "W_dec": np.array([fuzz.RunsCode()], dtype=object)})
    with pytest.raises(FormatError, match="W_dec.npy holds Python objects"):
        load_any(folder)
    assert not fuzz.SENTINEL.exists()


@pytest.mark.parametrize("kind", ["<U32", "S8", "complex64", "int32", "bool", "structured"])
def test_gemma_scope_array_that_is_not_floating_point(tmp_path, kind):
    # Cast to float32 before: numeric strings parsed, imaginary parts dropped, ints
    # accepted, a structured array raised TypeError.
    folder = folder_of(tmp_path, "gemma_scope", "jumprelu")
    with np.load(folder / "params.npz") as npz:
        arrays = dict(npz)
    w = arrays["W_dec"]
    arrays["W_dec"] = w.astype([("x", "<f4")]) if kind == "structured" else w.astype(kind)
    np.savez(folder / "params.npz", **arrays)
    with pytest.raises(FormatError, match="array 'W_dec' has dtype .* expected floating point"):
        load_any(folder)


def test_gemma_scope_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    # np.load allocated the declared 4 TB first: MemoryError (or, below RAM, a huge allocation).
    folder = folder_of(tmp_path, "gemma_scope", "jumprelu")
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)
    (folder / "params.npz").write_bytes(with_member((folder / "params.npz").read_bytes(), "W_dec.npy", npy))
    with pytest.raises(FormatError, match=r"W_dec.npy declares shape \(1000000, 1000000\).*holds 64 bytes"):
        load_any(folder)


def test_gemma_scope_npy_header_that_numpy_cannot_tokenize(tmp_path):
    # numpy's header parser let tokenize.TokenError through.
    folder = folder_of(tmp_path, "gemma_scope", "jumprelu")
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (8, 24, }"
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(4 * 8 * 24)
    (folder / "params.npz").write_bytes(with_member((folder / "params.npz").read_bytes(), "W_enc.npy", npy))
    with pytest.raises(FormatError, match="corrupt .npy header"):
        load_any(folder)


# ---------------------------------------------------------------- regressions: checkpoints
def _checkpoint_with_skeleton(tmp_path, skeleton: str) -> Path:
    folder = folder_of(tmp_path, "checkpoint")
    path = folder / "checkpoint.safetensors"
    path.write_bytes(st_save(st_load(path.read_bytes()), metadata={fuzz.CKPT_META_KEY: skeleton}))
    return folder


@pytest.mark.parametrize("skeleton", ["null", "3", '"s"', "[1, 2]", '{"__dict__": [[1, 2]]}'])
def test_checkpoint_skeleton_that_is_not_a_state(tmp_path, skeleton):
    # Was returned as the state; train() then failed with a TypeError.
    with pytest.raises(CheckpointError, match="not a training state"):
        load_checkpoint(_checkpoint_with_skeleton(tmp_path, skeleton))


def test_checkpoint_skeleton_nested_too_deep(tmp_path):
    with pytest.raises(CheckpointError, match="RecursionError"):
        load_checkpoint(_checkpoint_with_skeleton(tmp_path, "[" * 100_000 + "]" * 100_000))
