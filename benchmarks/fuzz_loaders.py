"""Fuzz every dictionary loader (and the checkpoint reader) with malformed files; print a table.

    python benchmarks/fuzz_loaders.py [--examples 2000] [--seed 0] [--formats saekit ...]

Each input starts from a valid folder written by saekit's own savers (every format ×
architecture it supports), mutates one file with one strategy, loads the folder with
``saekit.io.formats.load_any`` (``load_checkpoint`` for checkpoints) and sorts the outcome:

* accepted: a ``Dictionary`` consistent with its config (types, shapes, float32, finite);
* rejected: a ``SaekitError`` whose message names the folder;
* crash: anything else: another exception, a dictionary that contradicts its config, a
  load slower than ``TIME_LIMIT_S``, or code run from the file (a sentinel file appears).

Strategies (each changes one file, or for ``folder`` the set of files): ``config-json``
(keys dropped, wrong types, contradictory sizes, unknown architectures), ``config-bytes``
(not JSON, not UTF-8, not an object, too deep), ``weights-bytes`` (truncated, flipped,
zeroed, random), ``weights-tensors`` (tensors dropped, renamed, reshaped, retyped,
NaN/Inf, overflowing), ``container`` (safetensors headers; pickles that run code or hold
no state dict; npz object arrays and huge declared shapes; damaged zip members) and
``folder`` (files missing, renamed to another format's names, or folders in their
place). For a checkpoint, "config" is the JSON skeleton in its safetensors metadata.

The strategies live here and ``tests/test_fuzz_loaders.py`` imports them, so the test
suite runs the same properties at a small count. Exits 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from saekit.io.checkpoint import _META_KEY as CKPT_META_KEY  # where a checkpoint keeps its JSON skeleton
from saekit.io.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from saekit.dictionaries import ARCHITECTURES, Dictionary, DictionaryConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.io.formats import FORMAT_FILES, SAVERS, load_any

D, F, K = 8, 24, 4
ALL_ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "gated"]
ARCHS = {
    "saekit": ALL_ARCHS, "saelens": ALL_ARCHS, "sparsify": ["topk"],
    "dictionary_learning": ALL_ARCHS, "gemma_scope": ["jumprelu"], "checkpoint": ["topk", "gated"],
}
# (config file, weights file); a checkpoint keeps its "config" in the weights' metadata.
FILES = {fmt: (files if len(files) == 2 else (None, files[0])) for fmt, files in FORMAT_FILES.items()}
FILES["checkpoint"] = (None, CHECKPOINT_FILE)
CONTAINER = {"dictionary_learning": "torch", "gemma_scope": "npz"}  # the rest: safetensors
STRATEGY_NAMES = ["config-json", "config-bytes", "weights-bytes", "weights-tensors", "container", "folder"]
# A load of an 8×24 dictionary takes milliseconds; this long means a hang.
TIME_LIMIT_S = 10
# Created by the pickles that try to run code: if it ever exists, code ran.
SENTINEL = Path(tempfile.gettempdir()) / f"saekit-fuzz-code-ran-{os.getpid()}"


# ---------------------------------------------------------------- valid starting points
def make(arch: str, seed_: int = 0) -> Dictionary:
    torch.manual_seed(seed_)
    cfg = DictionaryConfig(arch=arch, d_in=D, d_sae=F, k=K if ARCHITECTURES[arch].uses_k else None,
                           hook="blocks.1.hook_resid_post", model="tiny", context_length=64)
    sae = build_dictionary(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(F) * 0.3)
        if arch == "batchtopk":
            sae.threshold.fill_(0.2)
    return sae.eval()


def _save_gemma_scope(sae: Dictionary, folder: Path) -> None:
    # Gemma Scope does not subtract b_dec before encoding (see load_gemma_scope).
    w = {k: v.detach().numpy() for k, v in sae.state_dict().items()}
    w["b_enc"] = w["b_enc"] - w["b_dec"] @ w["W_enc"]
    np.savez(folder / "params.npz", **w)


def _save_checkpoint(sae: Dictionary, folder: Path) -> None:
    # The shape of a trainer's state (train.DictionaryTrainer.state_dict), after one Adam step.
    x = torch.randn(16, D)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    (sae.reconstruct(x) - x).pow(2).sum().backward()
    opt.step()
    state = {
        "dictionary": sae.state_dict(), "optimizer": opt.state_dict(), "tokens_since_fired": torch.zeros(F),
        "generator": torch.Generator().get_state(), "act_scale": 1.5, "step": 3, "tokens_done": 48,
        "last_x": x, "buffer": {"position": [3, 7], "seed": 0},
    }
    save_checkpoint(state, folder)


@cache
def baseline(fmt: str, arch: str) -> tuple[tuple[str, bytes], ...]:
    """The files of a valid ``fmt`` folder holding a small ``arch`` dictionary."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save = {"gemma_scope": _save_gemma_scope, "checkpoint": _save_checkpoint}.get(fmt) or SAVERS[fmt]
        save(make(arch), folder)
        return tuple(sorted((p.name, p.read_bytes()) for p in folder.iterdir() if not p.name.startswith(".")))


# ---------------------------------------------------------------- building blocks
# Pickles that run code when unpickled, each by another route: a loader that unpickles
# one has executed the file, and the sentinel file appears.
class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {SENTINEL}",))


class OpensFile:
    def __reduce__(self):
        return (builtins.open, (str(SENTINEL), "w"))


class Popens:
    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(SENTINEL)],))


class Evals:
    def __reduce__(self):
        return (builtins.eval, (f"open({str(SENTINEL)!r}, 'w')",))


EVIL = [RunsCode, OpensFile, Popens, Evals]
INTERESTING_KEYS = [
    "format", "format_version", "dictionary", "arch", "d_in", "d_sae", "k", "act_scale", "hook", "model",
    "context_length", "architecture", "normalize_activations", "apply_b_dec_to_input",
    "rescale_acts_by_decoder_norm", "activation_fn_str", "activation_fn_kwargs", "metadata", "context_size",
    "hook_name", "num_latents", "expansion_factor", "activation", "transcode", "skip_connection", "trainer",
    "dict_class", "activation_dim", "dict_size", "norm_factor", "buffer", "ctx_len", "__tensor__", "__dict__",
]
NAMES = [
    "relu", "topk", "batchtopk", "jumprelu", "gated", "standard", "matching_pursuit", "AutoEncoder",
    "GatedAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder", "none", "layer_norm",
    "expected_average_only_in", "saekit", "", "W_enc", "s.dictionary.W_enc",
]
NASTY = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, -1, 1, 3, D - 1, D, D + 1, K, F - 1, F, F + 1, 2 * F, 2**31, 2**63, 2**64, 10**30, -(2**63)]),
    st.integers(), st.floats(), st.sampled_from([1e308, -1e308, float("nan"), float("inf"), 0.5, 24.0, 1e-320]),
    st.text(max_size=12), st.sampled_from(NAMES),
    st.lists(st.integers(-3, 30), max_size=4),
    st.dictionaries(st.sampled_from(INTERESTING_KEYS), st.integers(-3, 30), max_size=3),
)
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]
OTHER_DTYPES = [torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool, torch.complex64]


def _positions(draw, n: int, k: int) -> list[int]:
    # Half the time near the start, where every container keeps its header.
    pos = st.one_of(st.integers(0, max(n - 1, 0)), st.integers(0, max(min(n, 256) - 1, 0)))
    return draw(st.lists(pos, min_size=1, max_size=k)) if n else []


def mutate_bytes(draw, data: bytes) -> bytes:
    """Generic damage to any file: truncation, flipped bytes, zeros, random bytes."""
    n = len(data)
    op = draw(st.sampled_from(["truncate", "flip", "zero", "empty", "random", "insert", "delete", "append"]))
    if op == "truncate":
        return data[: draw(st.integers(0, max(n - 1, 0)))]
    if op == "flip":
        out = bytearray(data)
        for i in _positions(draw, n, 8):
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if op == "zero":
        return bytes(n)
    if op == "empty":
        return b""
    if op == "random":
        return draw(st.binary(min_size=0, max_size=max(2 * n, 16)))
    i = draw(st.integers(0, n))
    if op == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=64)) + data[i:]
    if op == "delete":
        return data[:i] + data[i + draw(st.integers(1, 64)):]
    return data + draw(st.binary(min_size=1, max_size=64))


def _json_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        out += _json_paths(value, prefix + (key,))
    return out


def _at(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def mutate_json(draw, obj: Any) -> Any:
    """1–3 edits anywhere in a JSON tree: drop, set a nasty value, resize an int, add a key."""
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_json_paths(obj)))
        target = _at(obj, path)
        op = draw(st.sampled_from(["drop", "set", "resize", "add", "root"]))
        if op == "root" or (not path and op != "add"):
            return draw(NASTY)
        if op == "add":
            if isinstance(target, dict):
                target[draw(st.sampled_from(INTERESTING_KEYS))] = draw(NASTY)
            continue
        parent, key = _at(obj, path[:-1]), path[-1]
        if op == "drop":
            parent.pop(key)
        elif op == "set":
            parent[key] = draw(NASTY)
        elif isinstance(target, int) and not isinstance(target, bool):
            # Sizes that contradict the tensors (or each other) by a little or a lot.
            parent[key] = draw(st.sampled_from([target - 1, target + 1, 2 * target, target // 2, -target, 0, 10**12]))
    return obj


def mutate_text(draw, data: bytes) -> bytes:
    """Replace a JSON text with something that is not a usable JSON object."""
    op = draw(st.sampled_from(["bytes", "not-utf8", "not-object", "deep", "huge-number", "utf16", "truncate"]))
    if op == "bytes":
        return mutate_bytes(draw, data)
    if op == "not-utf8":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])) + data[i:]
    if op == "not-object":
        return json.dumps(draw(st.one_of(NASTY, st.lists(NASTY, max_size=3)))).encode()
    if op == "deep":
        n = draw(st.sampled_from([900, 1000, 5000, 100_000]))
        return draw(st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n]))
    if op == "huge-number":
        digits = b"9" * draw(st.sampled_from([400, 4301, 10_000]))
        return re.sub(rb":\s*\d+", b": " + digits, data, count=1)  # the first integer value
    if op == "utf16":
        return data.decode("utf-8", "replace").encode(draw(st.sampled_from(["utf-16", "utf-32", "utf-8-sig"])))
    return data[: draw(st.integers(0, max(len(data) - 1, 0)))]


# ---------------------------------------------------------------- containers
def read_tensors(fmt: str, data: bytes) -> tuple[dict[str, torch.Tensor], dict | None]:
    kind = CONTAINER.get(fmt, "safetensors")
    if kind == "torch":
        return torch.load(io.BytesIO(data), weights_only=True), None
    if kind == "npz":
        with np.load(io.BytesIO(data)) as npz:
            return {k: torch.from_numpy(npz[k]) for k in npz.files}, None
    n = int.from_bytes(data[:8], "little")
    return st_load(data), json.loads(data[8:8 + n]).get("__metadata__")


def write_tensors(fmt: str, tensors: dict[str, Any], metadata: dict | None = None) -> bytes:
    kind = CONTAINER.get(fmt, "safetensors")
    buf = io.BytesIO()
    if kind == "torch":
        torch.save(tensors, buf)
        return buf.getvalue()
    if kind == "npz":
        np.savez(buf, **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()})
        return buf.getvalue()
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def _dtypes(fmt: str) -> list[torch.dtype]:
    kind = CONTAINER.get(fmt, "safetensors")
    if kind == "npz":  # numpy has neither bfloat16 nor float8
        return [torch.float16, torch.float64, *OTHER_DTYPES]
    return FLOAT_DTYPES + OTHER_DTYPES


def mutate_tensor(draw, fmt: str, t: torch.Tensor) -> torch.Tensor:
    op = draw(st.sampled_from(["shape", "dtype", "nonfinite", "huge", "tiny", "empty", "scalar"]))
    if op == "shape":
        options = [t.flatten(), t.unsqueeze(0), torch.cat([t, t]) if t.ndim else t.reshape(1, 1)]
        if t.ndim == 2:
            options += [t.T, t[:-1], t[:, :-1], t.reshape(t.shape[1], t.shape[0])]
        if t.ndim == 1 and t.numel() > 1:
            options += [t[:-1], t.reshape(1, -1), t.reshape(-1, 1)]
        return draw(st.sampled_from(options)).contiguous()
    if op == "dtype":
        return t.to(draw(st.sampled_from(_dtypes(fmt))))
    if op == "nonfinite" and t.numel():
        t = t.double()  # also for the int tensor 'k'
        for i in _positions(draw, t.numel(), 3):
            t.view(-1)[i] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        return t
    if op == "huge":  # finite in float64, Inf once read as float32 (or once multiplied)
        return t.double() * draw(st.sampled_from([1e30, 1e39, 1e300]))
    if op == "tiny":
        return t.double() * 1e-320
    if op == "empty":
        return t.new_zeros((0,) * max(t.ndim, 1))
    return t.reshape(-1)[:1].reshape(()) if t.numel() else torch.tensor(1.0)


def mutate_tensors(draw, fmt: str, data: bytes) -> bytes:
    """Structured damage, re-serialised in the format's own container."""
    tensors, metadata = read_tensors(fmt, data)
    names = sorted(tensors)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "rename", "extra", "change", "change", "change"]))
        name = draw(st.sampled_from(names))
        if name not in tensors:
            continue
        if op == "drop":
            del tensors[name]
        elif op == "rename":
            new_name = draw(st.one_of(st.sampled_from(names + NAMES), st.text(min_size=1, max_size=8)))
            tensors[new_name] = tensors.pop(name)
        elif op == "extra":
            tensors[draw(st.text(min_size=1, max_size=8))] = torch.randn(3)
        else:
            tensors[name] = mutate_tensor(draw, fmt, tensors[name])
    return write_tensors(fmt, tensors, metadata)


def _safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def mutate_safetensors_container(draw, data: bytes) -> bytes:
    header, body = _safetensors_parts(data)
    op = draw(st.sampled_from(["length", "header-json", "header-json", "header-text", "body"]))
    if op == "length":
        special = [0, 1, 7, len(data) - 9, len(data), 2**63, 2**64 - 1]
        n = draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(special)))
        return n.to_bytes(8, "little") + data[8:]
    if op == "body":
        return data[: 8 + len(data) - len(body)] + mutate_bytes(draw, body)
    text = (json.dumps(mutate_json(draw, header)).encode() if op == "header-json"
            else mutate_text(draw, json.dumps(header).encode()))
    return len(text).to_bytes(8, "little") + text + body


def _evil(draw) -> Any:
    return draw(st.sampled_from(EVIL))()


def mutate_pickle_container(draw, data: bytes) -> bytes:
    """ae.pt: pickles that run code or hold no state dict, and damaged zip archives."""
    state = torch.load(io.BytesIO(data), weights_only=True)
    op = draw(st.sampled_from(["evil", "evil-raw", "not-a-state-dict", "non-tensor-values", "zip"]))
    if op == "evil":  # code hidden at the top, as a value, or beside the tensors
        where = draw(st.sampled_from(["top", "value", "nested"]))
        obj = _evil(draw) if where == "top" else {**state, "encoder.weight": _evil(draw)} if where == "value" \
            else {**state, "extra": [{"x": _evil(draw)}]}
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    if op == "evil-raw":  # a plain (non-zip) pickle: torch.load's legacy path
        return pickle.dumps({**state, "encoder.weight": _evil(draw)}, protocol=draw(st.integers(0, 5)))
    if op == "not-a-state-dict":
        obj = draw(st.sampled_from([
            list(state.values()), tuple(state.items()), state["encoder.weight"] if "encoder.weight" in state else 1,
            {"state_dict": state}, {i: v for i, v in enumerate(state.values())}, None, 3, "ae", [],
        ]))
    else:
        key = draw(st.sampled_from(sorted(state)))
        obj = {**state, key: draw(st.one_of(NASTY, st.sampled_from([[torch.zeros(2)], {"w": torch.zeros(2)}])))}
    if op in ("not-a-state-dict", "non-tensor-values"):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    return mutate_zip(draw, data)


def mutate_zip(draw, data: bytes) -> bytes:
    """Rebuild a zip archive (valid CRCs) with a member dropped, renamed, damaged or added."""
    src = zipfile.ZipFile(io.BytesIO(data))
    members = {info.filename: src.read(info) for info in src.infolist()}
    name = draw(st.sampled_from(sorted(members)))
    op = draw(st.sampled_from(["drop", "rename", "damage", "duplicate", "huge-npy"]))
    if op == "drop":
        del members[name]
    elif op == "rename":
        members[name + draw(st.sampled_from(["x", ".bak", "/"]))] = members.pop(name)
    elif op == "damage":
        members[name] = mutate_bytes(draw, members[name])
    elif op == "duplicate":
        members[draw(st.sampled_from(sorted(members)))] = members[name]
    else:
        members[name] = huge_npy(draw)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for member, content in members.items():
            out.writestr(member, content)
    return buf.getvalue()


def huge_npy(draw) -> bytes:
    """An .npy whose header declares far more data than follows (a reader must not trust it)."""
    shape = draw(st.sampled_from([(10**6, 10**6), (2**40,), (10**5, 10**5), (D, 10**9), (2**62, 4)]))
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)


def mutate_npz_container(draw, data: bytes) -> bytes:
    """params.npz: object arrays (pickles), odd dtypes, huge declared shapes, damaged zips."""
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    op = draw(st.sampled_from(["object", "evil-object", "dtype", "zip"]))
    if op == "zip":
        return mutate_zip(draw, data)
    name = draw(st.sampled_from(sorted(arrays)))
    a = arrays[name]
    if op == "object":
        arrays[name] = a.astype(object)
    elif op == "evil-object":
        arrays[name] = np.array([_evil(draw)], dtype=object)
    else:
        arrays[name] = draw(st.sampled_from([
            a.astype(str), a.astype("S8"), a.astype(np.complex64), a.astype(">f4"), a.astype(np.float16),
            np.asfortranarray(a), a.astype("datetime64[s]") if a.ndim else a, a.astype([("x", "<f4")]),
            np.zeros(a.shape, dtype=[("x", "<f4"), ("y", "<i4")]), a.astype(np.int8), a.astype(bool),
        ]))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def mutate_container(draw, fmt: str, data: bytes) -> bytes:
    kind = CONTAINER.get(fmt, "safetensors")
    if kind == "torch":
        return mutate_pickle_container(draw, data)
    if kind == "npz":
        return mutate_npz_container(draw, data)
    return mutate_safetensors_container(draw, data)


# ---------------------------------------------------------------- strategies
def _config(fmt: str, files: dict[str, bytes]) -> bytes:
    if fmt == "checkpoint":
        _, metadata = read_tensors(fmt, files[CHECKPOINT_FILE])
        return metadata[CKPT_META_KEY].encode()
    return files[FILES[fmt][0]]


def _set_config(fmt: str, files: dict[str, bytes], text: bytes) -> None:
    if fmt == "checkpoint":
        # safetensors metadata holds str: undecodable bytes arrive as their latin-1 characters.
        tensors, _ = read_tensors(fmt, files[CHECKPOINT_FILE])
        files[CHECKPOINT_FILE] = write_tensors(fmt, tensors, {CKPT_META_KEY: text.decode("latin-1")})
    else:
        files[FILES[fmt][0]] = text


def config_json(draw, fmt: str, files: dict[str, bytes]) -> None:
    cfg = json.loads(_config(fmt, files))
    _set_config(fmt, files, json.dumps(mutate_json(draw, cfg)).encode())


def config_bytes(draw, fmt: str, files: dict[str, bytes]) -> None:
    _set_config(fmt, files, mutate_text(draw, _config(fmt, files)))


def mutate_folder(draw, fmt: str, files: dict[str, bytes | None]) -> None:
    """Files dropped, renamed to another format's names, or added (None: a folder of that name)."""
    names = sorted({name for pair in FILES.values() for name in pair if name})
    name = draw(st.sampled_from(sorted(files)))
    op = draw(st.sampled_from(["drop", "rename", "add", "add"]))
    if op == "drop":
        del files[name]
    elif op == "rename":
        files[draw(st.sampled_from(names))] = files.pop(name)
    else:
        existing = [v for v in files.values() if v is not None]
        files[draw(st.sampled_from(names))] = draw(st.one_of(
            st.none(), st.just(b""), st.sampled_from(existing), st.binary(max_size=64),
        ))


def _on_weights(mutate: Callable) -> Callable:
    def apply(draw, fmt: str, files: dict[str, bytes]) -> None:
        name = FILES[fmt][1]
        files[name] = mutate(draw, fmt, files[name])
    return apply


STRATEGIES: dict[str, Callable] = {
    "config-json": config_json,
    "config-bytes": config_bytes,
    "weights-bytes": _on_weights(lambda draw, fmt, data: mutate_bytes(draw, data)),
    "weights-tensors": _on_weights(mutate_tensors),
    "container": _on_weights(mutate_container),
    "folder": mutate_folder,
}
CASES = [(fmt, s) for fmt in ARCHS for s in STRATEGY_NAMES if not (fmt == "gemma_scope" and s.startswith("config"))]


@st.composite
def inputs(draw, fmt: str, strategy: str) -> dict[str, bytes]:
    """A folder's files (name → bytes): a valid ``fmt`` folder damaged by ``strategy``."""
    files = dict(baseline(fmt, draw(st.sampled_from(ARCHS[fmt]))))
    STRATEGIES[strategy](draw, fmt, files)
    return files


# ---------------------------------------------------------------- the contract
@dataclass
class Outcome:
    kind: str  # "accepted", "rejected" or "crash"
    detail: str = ""


def config_problems(cfg: Any) -> list[str]:
    if not isinstance(cfg, DictionaryConfig):
        return [f"cfg is a {type(cfg).__name__}"]
    problems = []
    for key in ("d_in", "d_sae"):
        value = getattr(cfg, key)
        if type(value) is not int or value <= 0:
            problems.append(f"cfg.{key}={value!r}")
    if cfg.arch not in ARCHITECTURES:
        problems.append(f"cfg.arch={cfg.arch!r}")
    elif ARCHITECTURES[cfg.arch].uses_k and not (type(cfg.k) is int and 0 < cfg.k < cfg.d_sae):
        problems.append(f"cfg.k={cfg.k!r}")
    if cfg.k is not None and type(cfg.k) is not int:
        problems.append(f"cfg.k={cfg.k!r}")
    if not (isinstance(cfg.hook, str) and isinstance(cfg.model, str)):
        problems.append(f"cfg.hook/model={cfg.hook!r}/{cfg.model!r}")
    if type(cfg.act_scale) is not float or not (0 < cfg.act_scale < float("inf")):
        problems.append(f"cfg.act_scale={cfg.act_scale!r}")
    if cfg.context_length is not None and (type(cfg.context_length) is not int or cfg.context_length <= 0):
        problems.append(f"cfg.context_length={cfg.context_length!r}")
    return problems


def dictionary_problems(sae: Any) -> list[str]:
    """What is wrong with a dictionary a loader returned (empty: it is consistent)."""
    if not isinstance(sae, Dictionary):
        return [f"returned a {type(sae).__name__}"]
    problems = config_problems(sae.cfg)
    if problems:
        return problems
    if type(sae) is not ARCHITECTURES[sae.cfg.arch]:
        return [f"a {type(sae).__name__} for arch {sae.cfg.arch!r}"]
    with torch.device("meta"):
        expected = build_dictionary(sae.cfg).state_dict()
    state = sae.state_dict()
    if set(state) != set(expected):
        return [f"tensors {sorted(state)}, expected {sorted(expected)}"]
    for name, t in state.items():
        if t.shape != expected[name].shape or t.dtype != torch.float32:
            problems.append(f"{name}: {t.dtype} {tuple(t.shape)}, config implies float32 {tuple(expected[name].shape)}")
        elif not bool(torch.isfinite(t).all()):
            problems.append(f"{name} holds NaN/Inf")
    if not problems and not (sae.cfg.arch == "batchtopk" and float(sae.threshold) < 0):
        out = sae.reconstruct(torch.randn(2, sae.cfg.d_in))  # usable, not just well-shaped
        if out.shape != (2, sae.cfg.d_in):
            problems.append(f"reconstruct gave shape {tuple(out.shape)}")
    return problems


def checkpoint_problems(state: Any) -> list[str]:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        return [f"load_checkpoint returned a {type(state).__name__}, not a mapping of names"]
    return []


class _Timeout(BaseException):
    """Not an Exception: a loader's `except Exception` must not swallow it."""


@contextmanager
def time_limit(seconds: float):
    def expire(*_):
        raise _Timeout(f"still loading after {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check(fmt: str, files: dict[str, bytes]) -> Outcome:
    """Write ``files`` to a fresh folder, load it, and judge the outcome against the contract."""
    SENTINEL.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sae"
        folder.mkdir()
        for name, data in files.items():
            if data is None:
                (folder / name).mkdir()
            else:
                (folder / name).write_bytes(data)
        try:
            with time_limit(TIME_LIMIT_S):
                result = load_checkpoint(folder) if fmt == "checkpoint" else load_any(folder)
                problems = checkpoint_problems(result) if fmt == "checkpoint" else dictionary_problems(result)
            outcome = Outcome("crash", "accepted but " + "; ".join(problems)) if problems else Outcome("accepted")
        except SaekitError as e:
            named = str(folder) in str(e)
            outcome = Outcome("rejected") if named else Outcome("crash", f"error names no file: {e}")
        except (Exception, _Timeout) as e:
            outcome = Outcome("crash", f"{type(e).__name__}: {str(e)[:300]}".replace(str(folder), "<folder>"))
    if SENTINEL.exists():
        SENTINEL.unlink()
        outcome = Outcome("crash", "CODE FROM THE FILE RAN (sentinel file created)")
    return outcome


# ---------------------------------------------------------------- the benchmark
@dataclass
class Tally:
    counts: Counter
    crashes: dict[str, int]
    slowest_s: float = 0.0


def run_case(fmt: str, strategy: str, examples: int, seed_: int) -> Tally:
    tally = Tally(Counter(), {})

    @seed(seed_)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(files=inputs(fmt, strategy))
    def record(files):
        t = time.perf_counter()
        outcome = check(fmt, files)
        tally.slowest_s = max(tally.slowest_s, time.perf_counter() - t)
        tally.counts[outcome.kind] += 1
        if outcome.kind == "crash":
            # One entry per distinct message (numbers stripped, so sizes do not multiply them).
            key = "".join(c for c in outcome.detail if not c.isdigit())[:160]
            tally.crashes[key] = tally.crashes.get(key, 0) + 1

    record()
    return tally


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=2000, help="inputs per format × strategy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", nargs="*", default=list(ARCHS), choices=list(ARCHS))
    a = p.parse_args()
    warnings.simplefilter("ignore")  # damaged files warn (odd pickle protocols) before they fail
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    print(f"{'format':<20} {'strategy':<16} {'tried':>7} {'accepted':>9} {'rejected':>9} {'crashes':>8} {'slowest':>8}")
    total, crashes, start = Counter(), {}, time.perf_counter()
    for fmt, strategy in CASES:
        if fmt not in a.formats:
            continue
        tally = run_case(fmt, strategy, a.examples, a.seed)
        c = tally.counts
        total.update(c)
        print(f"{fmt:<20} {strategy:<16} {sum(c.values()):>7} {c['accepted']:>9} {c['rejected']:>9} "
              f"{c['crash']:>8} {tally.slowest_s:>7.2f}s", flush=True)
        if tally.crashes:
            crashes[f"{fmt}/{strategy}"] = tally.crashes
    print(f"{'total':<37} {sum(total.values()):>7} {total['accepted']:>9} {total['rejected']:>9} {total['crash']:>8}"
          f"   ({time.perf_counter() - start:.0f} s, seed {a.seed})")
    for case, messages in crashes.items():
        print(f"{case}: {len(messages)} distinct crash(es); the first {min(3, len(messages))}:")
        for message, n in list(messages.items())[:3]:
            print(f"  ×{n}: {message}")
    sys.exit(1 if total["crash"] else 0)


if __name__ == "__main__":
    main()
