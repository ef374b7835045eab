"""Reading and writing the on-disk formats of the other SAE libraries.

Every loader returns a saekit ``Dictionary`` whose ``encode``/``decode`` on raw
activations equal the peer's own ``encode``/``decode`` (saekit's conventions: ``W_enc``
d×F, ``W_dec`` F×d, ``pre = (x − b_dec) W_enc + b_enc``, ``x̂ = f W_dec + b_dec``). A
peer's decoder rows are kept as they are (never renormalised on load). Nothing is
unpickled with code execution: safetensors files, and ``torch.load(weights_only=True)``
for dictionary_learning's ``ae.pt``.

Formats (the files that identify them):

* saekit: ``config.json`` (``"format": "saekit"``) + ``weights.safetensors``;
* SAELens 6.x: ``cfg.json`` + ``sae_weights.safetensors`` (architectures ``standard``,
  ``topk``, ``jumprelu``, ``gated``; saekit's BatchTopK is written as SAELens writes its
  own BatchTopK for inference: a ``jumprelu`` with the global threshold per feature);
* sparsify (EleutherAI): ``cfg.json`` + ``sae.safetensors`` (TopK);
* dictionary_learning: ``config.json`` + ``ae.pt`` (``AutoEncoder``, ``GatedAutoEncoder``,
  ``JumpReluAutoEncoder``, ``AutoEncoderTopK``, ``BatchTopKSAE``).

Local files only: a Hub name is resolved by ``saekit.loading.load`` (what ``saekit.load``
is), which sits above this module and ``saekit.hub``. A loaded dictionary is for use,
not training: its parameters do not require gradients (``requires_grad_(True)`` turns
them back on for fine-tuning).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dictionaries import ARCHITECTURES, Dictionary, DictionaryConfig, build_dictionary
from .errors import FormatError, OutputError
from .formats import CONFIG_FILE as SAEKIT_CONFIG
from .formats import RUN_RECORD_FILES
from .formats import WEIGHTS_FILE as SAEKIT_WEIGHTS
from .formats import (
    check_finite,
    checked_tensor,
    load_dictionary,
    make_config,
    read_json,
    read_safetensors,
    save_dictionary,
)
from .outputs import (
    LOCK_FILE,
    FolderLock,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_text,
    check_writable_folder,
    make_folder,
    remove_if_empty,
    temp_path,
)

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
DL_CFG, DL_WEIGHTS = "config.json", "ae.pt"
GEMMA_SCOPE_PARAMS = "params.npz"
GEMMA_SCOPE_ARRAYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")

FORMATS = ("saekit", "saelens", "dictionary_learning", "sparsify", "gemma_scope")
FORMAT_FILES = {
    "saekit": (SAEKIT_CONFIG, SAEKIT_WEIGHTS),
    "saelens": (SAELENS_CFG, SAELENS_WEIGHTS),
    "sparsify": (SPARSIFY_CFG, SPARSIFY_WEIGHTS),
    "dictionary_learning": (DL_CFG, DL_WEIGHTS),
    "gemma_scope": (GEMMA_SCOPE_PARAMS,),
}
DICTIONARY_FILES = tuple(dict.fromkeys(name for files in FORMAT_FILES.values() for name in files))
# How the writers' messages name the folder they write into.
DESTINATION = "the destination"
# SAELens architecture → saekit architecture, and back; saekit's BatchTopK is written as
# SAELens writes its own for inference: a jumprelu with the global threshold per feature.
SAELENS_ARCHS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
SAELENS_ARCH_WRITTEN = {**{ours: theirs for theirs, ours in SAELENS_ARCHS.items()}, "batchtopk": "jumprelu"}
# The SAELens version written into saved configs: >= 6 so that SAELens reads the
# config as its 6.x layout (hook/model names under "metadata").
SAELENS_VERSION_WRITTEN = "6.0.0"


# ---------------------------------------------------------------- helpers
def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise FormatError(f"{folder} does not exist")
    return folder.parent if folder.is_file() else folder


def detect_format(path: str | os.PathLike) -> str:
    """Which format the folder (or a file inside it) holds, from the files present."""
    folder = _folder(path)
    names = {p.name for p in folder.iterdir()}
    if SAEKIT_CONFIG in names and SAEKIT_WEIGHTS in names:
        # No other format pairs these two files; the saekit loader then checks the header
        # (and names a corrupt config.json as such).
        return "saekit"
    if SAELENS_CFG in names and SAELENS_WEIGHTS in names:
        return "saelens"
    if SPARSIFY_CFG in names and SPARSIFY_WEIGHTS in names:
        return "sparsify"
    if DL_CFG in names and DL_WEIGHTS in names:
        return "dictionary_learning"
    if GEMMA_SCOPE_PARAMS in names:
        return "gemma_scope"
    found = sorted(names)[:20]
    needs = "; ".join(f"{fmt}: {' + '.join(files)}" for fmt, files in FORMAT_FILES.items())
    raise FormatError(
        f"{folder} holds no dictionary format saekit recognises (found: {found or 'nothing'}). "
        f"Each format needs: {needs} (saekit's config.json must say \"format\": \"saekit\")."
    )


def _require(cfg: dict, key: str, path: Path, kind: type | tuple = int) -> Any:
    if key not in cfg:
        raise FormatError(f"{path} is missing the key {key!r}")
    value = cfg[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise FormatError(f"{path}: {key!r} must be an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise FormatError(f"{path}: {key!r} has the wrong type ({value!r})")
    return value


def _build(cfg: DictionaryConfig, tensors: dict[str, torch.Tensor], path: Path) -> Dictionary:
    for name, t in tensors.items():
        # The file's tensors are finite (checked_tensor), but converting them to saekit's
        # conventions (b_enc + b_dec W_enc, exp(r_mag), rescaled rows) can overflow float32.
        check_finite(t, f"saekit's {name!r}, computed from the file's tensors,", path)
    dictionary = build_dictionary(cfg)
    state = dictionary.state_dict()
    assert set(state) == set(tensors), (sorted(state), sorted(tensors))
    dictionary.load_state_dict({k: v.reshape(state[k].shape).to(state[k].dtype) for k, v in tensors.items()})
    return dictionary.requires_grad_(False).eval()


def _weights(dictionary: Dictionary) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32).cpu().clone() for k, v in dictionary.state_dict().items()}


def _unsupported(fmt: str, arch: str, supported: list[str]) -> FormatError:
    return FormatError(f"a {arch} dictionary cannot be written as {fmt}; {fmt} supports {supported}")


def _writable_folder_for(fmt: str, folder: str | os.PathLike) -> Path:
    """``folder``, created, after refusing one that holds another format's dictionary.

    Two formats share file names (``cfg.json``; ``config.json``), so writing one over
    another leaves a folder whose files the detector pairs wrongly, or two dictionaries
    of which ``saekit.load`` returns the old one.
    """
    folder = check_writable_folder(folder, DESTINATION)
    if folder.is_dir():
        foreign = [name for name in DICTIONARY_FILES if name not in FORMAT_FILES[fmt] and (folder / name).exists()]
        if foreign:
            raise OutputError(
                f"{folder} already holds another dictionary ({', '.join(foreign)}); writing a {fmt} one beside it "
                "would leave two in one folder. Choose an empty folder, or replace it with "
                "`saekit convert SRC DST --overwrite`"
            )
    return make_folder(folder, DESTINATION)


# ---------------------------------------------------------------- saekit
def save_saekit(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    """``formats.save_dictionary`` after refusing a folder that holds another format's
    dictionary, as every writer here does; this is ``saekit.save``."""
    return save_dictionary(dictionary, _writable_folder_for("saekit", folder))


# ---------------------------------------------------------------- SAELens
def load_saelens(folder: str | os.PathLike, norm_scaling_factor: float | None = None) -> Dictionary:
    """Load a SAELens 6.x folder (``cfg.json`` + ``sae_weights.safetensors``).

    ``normalize_activations="expected_average_only_in"`` means the weights act on
    activations multiplied by a constant that the folder does not store (SAELens keeps it
    in its pretrained directory); pass it as ``norm_scaling_factor`` to fold it in.
    """
    folder = _folder(folder)
    cfg_path, w_path = folder / SAELENS_CFG, folder / SAELENS_WEIGHTS
    raw = read_json(cfg_path)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    # Configs older than 6.0 keep the metadata at the top level and may lack "architecture".
    arch = raw.get("architecture", "standard")
    if "architecture" not in raw and raw.get("activation_fn_str", raw.get("activation_fn")) == "topk":
        arch = "topk"
    d, F = _require(raw, "d_in", cfg_path), _require(raw, "d_sae", cfg_path)
    k = None
    if arch == "topk":
        fn_kwargs = raw.get("activation_fn_kwargs")
        k = raw.get("k", fn_kwargs.get("k") if isinstance(fn_kwargs, dict) else None)
        if k is None:
            raise FormatError(f"{cfg_path} is missing the key 'k' needed by a topk SAE")
        k = _require({"k": k}, "k", cfg_path)
    elif not isinstance(arch, str) or arch not in SAELENS_ARCHS:
        raise FormatError(
            f"{cfg_path} names SAELens architecture {arch!r}; saekit reads 'standard', 'topk', "
            "'jumprelu' and 'gated'"
        )
    norm = raw.get("normalize_activations", "none")
    if norm is False or norm is None:
        norm = "none"
    elif norm is True:
        norm = "expected_average_only_in"
    scale = 1.0
    if norm == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise FormatError(
                f"{cfg_path} sets normalize_activations='expected_average_only_in': the weights act on "
                "activations multiplied by a constant the folder does not store. Pass its "
                "norm_scaling_factor (from SAELens' pretrained directory) to fold it in."
            )
        if not norm_scaling_factor > 0:
            raise FormatError(f"norm_scaling_factor must be positive, got {norm_scaling_factor}")
        scale = float(norm_scaling_factor)
    elif norm != "none":
        raise FormatError(
            f"{cfg_path} sets normalize_activations={norm!r}, a per-token (or whitening) normalisation "
            "that cannot be folded exactly into a dictionary's weights; saekit does not support it"
        )
    if raw.get("reshape_activations", "none") not in ("none", None):
        raise FormatError(
            f"{cfg_path} sets reshape_activations={raw['reshape_activations']!r} (per-head hook_z "
            "inputs); saekit does not support it yet"
        )
    if raw.get("hook_head_index", meta.get("hook_head_index")) is not None:
        raise FormatError(f"{cfg_path} sets hook_head_index (a single attention head); saekit does not support it yet")

    cfg = make_config(
        cfg_path, arch=SAELENS_ARCHS[arch], d_in=d, d_sae=F, k=k,
        hook=str(meta.get("hook_name", raw.get("hook_name", raw.get("hook_point", ""))) or ""),
        model=str(meta.get("model_name", raw.get("model_name", "")) or ""),
        context_length=meta.get("context_size", raw.get("context_size")),
        keep_bos=_saelens_keep_bos(raw, meta),
    )
    w = read_safetensors(w_path)
    what = f"SAELens {arch} SAE"
    W_enc = checked_tensor(w, "W_enc", (d, F), w_path, what)
    W_dec = checked_tensor(w, "W_dec", (F, d), w_path, what)
    b_dec = checked_tensor(w, "b_dec", (d,), w_path, what)
    if "scaling_factor" in w:
        # Old "finetuning scaling factor": f is multiplied by it before decoding; folding
        # it into the decoder rows gives the same reconstruction with the same f.
        s = checked_tensor(w, "scaling_factor", (F,), w_path, what)
        W_dec = W_dec * s[:, None]
    apply_b_dec = raw.get("apply_b_dec_to_input", True)
    # SAELens computes pre = (x − b_dec·[apply_b_dec_to_input]) W_enc + b_enc; saekit always
    # subtracts b_dec. Without the subtraction, pre = x W_enc + b_enc = (x − b_dec) W_enc +
    # (b_enc + b_dec W_enc), so each encoder-side bias gains b_dec times its weights.
    shift = torch.zeros(F) if apply_b_dec else b_dec @ W_enc
    tensors = {"W_enc": W_enc, "W_dec": W_dec, "b_dec": b_dec}
    if arch == "gated":
        b_gate = checked_tensor(w, "b_gate", (F,), w_path, what)
        r_mag = checked_tensor(w, "r_mag", (F,), w_path, what)
        b_mag = checked_tensor(w, "b_mag", (F,), w_path, what)
        mag_shift = torch.zeros(F) if apply_b_dec else b_dec @ (W_enc * r_mag.exp())
        tensors.update(b_enc=b_gate + shift, r_mag=r_mag, b_mag=b_mag + mag_shift)
    else:
        tensors["b_enc"] = checked_tensor(w, "b_enc", (F,), w_path, what) + shift
        if arch == "jumprelu":
            if "threshold" in w:
                theta = checked_tensor(w, "threshold", (F,), w_path, what)
            elif "log_threshold" in w:
                theta = checked_tensor(w, "log_threshold", (F,), w_path, what).exp()
            else:
                raise FormatError(f"{w_path} lacks the tensor 'threshold' needed by a {what}")
            # SAELens: f = ReLU(pre)·1[pre > θ]; saekit: f = pre·1[pre > θ]. They agree
            # for θ ≥ 0, and a negative θ behaves as θ = 0 under SAELens' ReLU.
            tensors["threshold"] = theta.clamp_min(0.0)
        elif arch == "topk" and raw.get("rescale_acts_by_decoder_norm", False):
            # SAELens ranks pre·‖W_dec[i]‖ and decodes f/‖W_dec[i]‖; scaling the
            # encoder column and bias by the norm and the decoder row by its inverse
            # gives the same f and x̂ with saekit's plain TopK.
            n = W_dec.norm(dim=1)
            tensors.update(W_enc=W_enc * n, b_enc=tensors["b_enc"] * n, W_dec=W_dec / n[:, None])
    dictionary = _build(cfg, tensors, w_path)
    if scale != 1.0:
        # The SAE saw x·s, i.e. x / (1/s): saekit's fold makes it act on raw x.
        dictionary.fold_activation_scale(1.0 / scale)
    return dictionary


def _saelens_keep_bos(raw: dict, meta: dict) -> bool:
    """Whether the SAE was trained on the BOS position, where its config says so.

    saekit records it as ``saekit_keep_bos``. For SAELens' own runs: its activation
    store keeps every position of ``seqpos_slice``, the prepended BOS among them, unless
    ``exclude_special_tokens`` drops special tokens; so BOS was trained on exactly when
    ``prepend_bos`` is true, ``exclude_special_tokens`` is false and the slice starts at
    0. A config that does not say all three (older SAELens, hand-made) counts as
    False, saekit's default.
    """
    def setting(key: str) -> Any:
        return meta[key] if key in meta else raw.get(key)

    recorded = setting("saekit_keep_bos")
    if isinstance(recorded, bool):
        return recorded
    seqpos = setting("seqpos_slice")
    from_start = seqpos is None or isinstance(seqpos, list) and (not seqpos or seqpos[0] in (None, 0))
    return setting("prepend_bos") is True and setting("exclude_special_tokens") is False and from_start


def save_saelens(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    """Write a SAELens 6.x folder that ``SAE.load_from_disk`` opens."""
    c = dictionary.cfg
    w = _weights(dictionary)
    arch = SAELENS_ARCH_WRITTEN.get(c.arch)
    if arch is None:
        raise _unsupported("SAELens", c.arch, list(SAELENS_ARCH_WRITTEN))
    out = {"W_enc": w["W_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if c.arch == "gated":
        out.update(b_gate=w["b_enc"], r_mag=w["r_mag"], b_mag=w["b_mag"])
    else:
        out["b_enc"] = w["b_enc"]
    if c.arch in ("jumprelu", "batchtopk"):
        theta = w["threshold"] if c.arch == "jumprelu" else w["threshold"].expand(c.d_sae).clone()
        if bool((theta < 0).any()):
            raise FormatError(
                f"this {c.arch} dictionary has a negative threshold"
                + (" (not calibrated yet; run dictionary.calibrate(x) first)" if c.arch == "batchtopk" else "")
                + "; SAELens applies a ReLU before the threshold and cannot represent it"
            )
        out["threshold"] = theta
    cfg: dict[str, Any] = {
        "d_in": c.d_in, "d_sae": c.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION_WRITTEN, "sae_lens_training_version": SAELENS_VERSION_WRITTEN,
            "model_name": c.model or None, "hook_name": c.hook or None, "context_size": c.context_length,
            "saekit_arch": c.arch, "saekit_act_scale": c.act_scale, "saekit_keep_bos": c.keep_bos,
        },
        "architecture": arch,
    }
    if arch == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    folder = _writable_folder_for("saelens", folder)
    atomic_save_tensors(out, folder / SAELENS_WEIGHTS)
    atomic_write_text(folder / SAELENS_CFG, json.dumps(cfg, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------- sparsify
def load_sparsify(folder: str | os.PathLike) -> Dictionary:
    """Load an EleutherAI sparsify folder (``cfg.json`` + ``sae.safetensors``, TopK)."""
    folder = _folder(folder)
    cfg_path, w_path = folder / SPARSIFY_CFG, folder / SPARSIFY_WEIGHTS
    raw = read_json(cfg_path)
    d = _require(raw, "d_in", cfg_path)
    k = _require(raw, "k", cfg_path)
    F = raw.get("num_latents") or 0
    if not F:
        F = d * _require(raw, "expansion_factor", cfg_path)
    F = _require({"num_latents": F}, "num_latents", cfg_path)
    if raw.get("activation", "topk") != "topk":
        raise FormatError(f"{cfg_path} sets activation={raw['activation']!r}; saekit reads only sparsify's 'topk'")
    for flag in ("transcode", "skip_connection"):
        if raw.get(flag):
            raise FormatError(f"{cfg_path} sets {flag}=true; saekit does not support sparsify's {flag} yet")
    cfg = make_config(cfg_path, arch="topk", d_in=d, d_sae=F, k=k)
    w = read_safetensors(w_path)
    what = "sparsify TopK SAE"
    enc = checked_tensor(w, "encoder.weight", (F, d), w_path, what)
    tensors = {
        "W_enc": enc.T.contiguous(),
        "b_enc": checked_tensor(w, "encoder.bias", (F,), w_path, what),
        "W_dec": checked_tensor(w, "W_dec", (F, d), w_path, what),
        "b_dec": checked_tensor(w, "b_dec", (d,), w_path, what),
    }
    # sparsify: top-k of ReLU(pre); saekit: ReLU of top-k(pre). The kept values agree.
    return _build(cfg, tensors, w_path)


def save_sparsify(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    """Write a sparsify folder that ``SparseCoder.load_from_disk`` opens (TopK only)."""
    c = dictionary.cfg
    if c.arch != "topk":
        raise _unsupported("sparsify", c.arch, ["topk"])
    w = _weights(dictionary)
    out = {
        "encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"], "b_dec": w["b_dec"],
    }
    cfg = {
        "activation": "topk", "expansion_factor": max(1, c.d_sae // c.d_in), "normalize_decoder": True,
        "num_latents": c.d_sae, "k": c.k, "multi_topk": False, "skip_connection": False,
        "transcode": False, "d_in": c.d_in,
    }
    folder = _writable_folder_for("sparsify", folder)
    atomic_save_tensors(out, folder / SPARSIFY_WEIGHTS)
    atomic_write_text(folder / SPARSIFY_CFG, json.dumps(cfg, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------- dictionary_learning
DL_CLASSES = {
    "AutoEncoder": "relu", "GatedAutoEncoder": "gated", "JumpReluAutoEncoder": "jumprelu",
    "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
}


# torch.load(weights_only=True) runs the pickle in a restricted interpreter; damaged
# bytecode fails with whatever error the bad opcode causes there (an empty stack, a
# short read, wrong arguments to a tensor rebuilder). These are the ones
# benchmarks/fuzz_loaders.py meets with torch 2.13; each means a corrupt file.
_TORCH_LOAD_ERRORS = (
    RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
    AssertionError, struct.error, zipfile.BadZipFile,
)


def _load_ae_pt(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FormatError(f"{path} is missing")
    try:
        # weights_only=True: the unpickler only rebuilds tensors and plain containers and
        # refuses anything that would run code.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).partition("\n")[0]
        raise FormatError(f"{path} cannot be loaded without executing code, or is corrupt ({first_line})") from None
    except _TORCH_LOAD_ERRORS as e:
        raise FormatError(
            f"{path} cannot be read ({type(e).__name__}: {e}); the file is truncated or corrupt"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise FormatError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_dictionary_learning(folder: str | os.PathLike) -> Dictionary:
    """Load a dictionary_learning folder (``config.json`` + ``ae.pt``), without unpickling code."""
    folder = _folder(folder)
    cfg_path, w_path = folder / DL_CFG, folder / DL_WEIGHTS
    raw = read_json(cfg_path)
    trainer = raw.get("trainer")
    if not isinstance(trainer, dict):
        raise FormatError(f"{cfg_path} is missing the 'trainer' section")
    dict_class = _require(trainer, "dict_class", cfg_path, str)
    if dict_class not in DL_CLASSES:
        raise FormatError(f"{cfg_path} names dict_class {dict_class!r}; saekit reads {sorted(DL_CLASSES)}")
    arch = DL_CLASSES[dict_class]
    d = _require(trainer, "activation_dim", cfg_path)
    F = _require(trainer, "dict_size", cfg_path)
    k = _require(trainer, "k", cfg_path) if ARCHITECTURES[arch].uses_k else None
    buffer = raw.get("buffer") if isinstance(raw.get("buffer"), dict) else {}
    norm_factor = trainer.get("norm_factor")
    cfg = make_config(
        cfg_path, arch=arch, d_in=d, d_sae=F, k=k,
        hook=str(trainer.get("submodule_name") or ""), model=str(trainer.get("lm_name") or ""),
        # dictionary_learning folds its norm_factor into the saved biases (scale_biases)
        # before writing ae.pt, so the weights already act on raw activations.
        act_scale=1.0 if norm_factor is None else norm_factor,
        context_length=buffer.get("ctx_len"),
        # dictionary_learning itself does not record it; saekit writes its own key.
        keep_bos=trainer.get("saekit_keep_bos") is True,
    )
    w = _load_ae_pt(w_path)
    what = f"dictionary_learning {dict_class}"
    if arch in ("relu", "topk", "batchtopk"):
        b_dec = checked_tensor(w, "bias" if arch == "relu" else "b_dec", (d,), w_path, what)
        tensors = {
            "W_enc": checked_tensor(w, "encoder.weight", (F, d), w_path, what).T.contiguous(),
            "b_enc": checked_tensor(w, "encoder.bias", (F,), w_path, what),
            "W_dec": checked_tensor(w, "decoder.weight", (d, F), w_path, what).T.contiguous(),
            "b_dec": b_dec,
        }
        if arch != "relu" and "k" in w:
            kw = w["k"]
            # item() == k, not int(kw): a NaN or complex 'k' must compare unequal, not raise.
            if not isinstance(kw, torch.Tensor) or kw.numel() != 1 or kw.item() != k:
                raise FormatError(f"{w_path}: tensor 'k' ({kw}) contradicts the config's k={k}")
        if arch == "batchtopk":
            # BatchTopKSAE: f = ReLU(pre)·1[ReLU(pre) > θ], equal to saekit's for θ ≥ 0; a
            # negative θ is dictionary_learning's "not calibrated" marker, as in saekit.
            tensors["threshold"] = checked_tensor(w, "threshold", (), w_path, what)
    elif arch == "gated":
        tensors = {
            "W_enc": checked_tensor(w, "encoder.weight", (F, d), w_path, what).T.contiguous(),
            "b_enc": checked_tensor(w, "gate_bias", (F,), w_path, what),
            "r_mag": checked_tensor(w, "r_mag", (F,), w_path, what),
            "b_mag": checked_tensor(w, "mag_bias", (F,), w_path, what),
            "W_dec": checked_tensor(w, "decoder.weight", (d, F), w_path, what).T.contiguous(),
            "b_dec": checked_tensor(w, "decoder_bias", (d,), w_path, what),
        }
    else:  # jumprelu
        W_enc = checked_tensor(w, "W_enc", (d, F), w_path, what)
        b_dec = checked_tensor(w, "b_dec", (d,), w_path, what)
        # JumpReluAutoEncoder does not subtract b_dec from its input (apply_b_dec_to_input
        # is False and not saved): pre = x W_enc + b_enc = (x − b_dec) W_enc + (b_enc + b_dec W_enc).
        tensors = {
            "W_enc": W_enc,
            "b_enc": checked_tensor(w, "b_enc", (F,), w_path, what) + b_dec @ W_enc,
            "W_dec": checked_tensor(w, "W_dec", (F, d), w_path, what),
            "b_dec": b_dec,
            # f = ReLU(pre·1[pre > θ]) equals saekit's pre·1[pre > θ] once θ ≥ 0.
            "threshold": checked_tensor(w, "threshold", (F,), w_path, what).clamp_min(0.0),
        }
    return _build(cfg, tensors, w_path)


def save_dictionary_learning(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    """Write ``ae.pt`` (a plain dict of tensors) + ``config.json`` in dictionary_learning's layout."""
    c = dictionary.cfg
    w = _weights(dictionary)
    cls = {v: k for k, v in DL_CLASSES.items()}.get(c.arch)
    if cls is None:
        raise _unsupported("dictionary_learning", c.arch, sorted(DL_CLASSES.values()))
    if c.arch in ("relu", "topk", "batchtopk"):
        out = {
            "encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
            "decoder.weight": w["W_dec"].T.contiguous(),
        }
        out["bias" if c.arch == "relu" else "b_dec"] = w["b_dec"]
        if c.arch != "relu":
            out["k"] = torch.tensor(c.k, dtype=torch.int32)
            # AutoEncoderTopK's encode ignores its threshold by default; -1 = "none".
            out["threshold"] = w["threshold"].reshape(()) if c.arch == "batchtopk" else torch.tensor(-1.0)
        # Module order of the peer's state dict, so load_state_dict sees what it expects.
        order = (["bias", "encoder.weight", "encoder.bias", "decoder.weight"] if c.arch == "relu"
                 else ["k", "threshold", "decoder.weight", "encoder.weight", "encoder.bias", "b_dec"])
        out = {name: out[name] for name in order}
    elif c.arch == "gated":
        out = {
            "decoder_bias": w["b_dec"], "encoder.weight": w["W_enc"].T.contiguous(), "r_mag": w["r_mag"],
            "gate_bias": w["b_enc"], "mag_bias": w["b_mag"], "decoder.weight": w["W_dec"].T.contiguous(),
        }
    else:  # jumprelu
        if bool((w["threshold"] < 0).any()):
            raise FormatError("this jumprelu dictionary has a negative threshold; dictionary_learning "
                              "applies a ReLU after the jump and cannot represent it")
        # JumpReluAutoEncoder loads with apply_b_dec_to_input=False (pre = x W_enc + b_enc), so
        # saekit's subtraction of b_dec moves into the bias: b_enc' = b_enc − b_dec W_enc.
        out = {
            "W_enc": w["W_enc"], "b_enc": w["b_enc"] - w["b_dec"] @ w["W_enc"], "W_dec": w["W_dec"],
            "b_dec": w["b_dec"], "threshold": w["threshold"],
        }
    trainer = {
        "dict_class": cls, "activation_dim": c.d_in, "dict_size": c.d_sae,
        "lm_name": c.model or None, "submodule_name": c.hook or None, "layer": None,
        "saekit_arch": c.arch, "saekit_keep_bos": c.keep_bos,
    }
    if c.k is not None:
        trainer["k"] = c.k
    if c.act_scale != 1.0:
        trainer["norm_factor"] = c.act_scale  # provenance only: already folded, as the peer does
    config = {"trainer": trainer}
    if c.context_length is not None:
        config["buffer"] = {"ctx_len": c.context_length}
    folder = _writable_folder_for("dictionary_learning", folder)
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in out.items()}, buffer)
    atomic_write_bytes(folder / DL_WEIGHTS, buffer.getvalue())
    atomic_write_text(folder / DL_CFG, json.dumps(config, indent=4) + "\n")
    return folder


# ---------------------------------------------------------------- Gemma Scope
def load_gemma_scope(path: str | os.PathLike, hook: str = "", model: str = "") -> Dictionary:
    """Load a Gemma Scope ``params.npz`` (the file or its folder) as a JumpReLU dictionary.

    Gemma Scope computes ``pre = x W_enc + b_enc`` without subtracting ``b_dec`` and
    ``f = 1[pre > threshold] · ReLU(pre)``; saekit subtracts ``b_dec`` first, so the
    encoder bias becomes ``b_enc + b_dec W_enc``, and clamps a negative threshold to 0
    (exact, given the ReLU). The file records neither hook point nor model
    (they live in the release's folder names): pass them, or set ``cfg.hook`` later.
    Read with ``allow_pickle=False``: nothing in the file can execute.
    """
    p = Path(path)
    file = p if p.is_file() else _folder(p) / GEMMA_SCOPE_PARAMS
    if not file.exists():
        raise FormatError(f"{file} does not exist; a Gemma Scope dictionary is a {GEMMA_SCOPE_PARAMS} file")
    found = _read_npz(file)
    arrays = {name: _float_tensor(found[name], name, file) for name in GEMMA_SCOPE_ARRAYS if name in found}
    if "W_enc" not in arrays or arrays["W_enc"].ndim != 2:
        raise FormatError(f"{file} lacks a 2-D 'W_enc' (found: {sorted(found)})")
    d, F = arrays["W_enc"].shape
    what = "Gemma Scope JumpReLU dictionary"
    W_enc = checked_tensor(arrays, "W_enc", (d, F), file, what)
    W_dec = checked_tensor(arrays, "W_dec", (F, d), file, what)
    b_enc = checked_tensor(arrays, "b_enc", (F,), file, what)
    b_dec = checked_tensor(arrays, "b_dec", (d,), file, what)
    threshold = checked_tensor(arrays, "threshold", (F,), file, what)
    cfg = make_config(file, arch="jumprelu", d_in=d, d_sae=F, hook=hook, model=model)
    return _build(cfg, {
        "W_enc": W_enc, "W_dec": W_dec, "b_dec": b_dec, "b_enc": b_enc + b_dec @ W_enc,
        "threshold": threshold.clamp_min(0.0),
    }, file)


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    """The ``.npy`` arrays of an ``.npz`` archive, each checked against its header first.

    ``np.load`` allocates the size an array's header declares before reading the data,
    so a damaged header could ask for terabytes; here the declared size must equal the
    bytes the archive holds. Object arrays (pickles) are refused, never unpickled.
    """
    arrays = {}
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    # read() holds no more than the archive does, and checks the CRC.
                    arrays[info.filename[:-4]] = _read_npy(archive.read(info), info.filename, file)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as e:
        # NotImplementedError: a compression method zipfile lacks.
        raise FormatError(f"{file} cannot be read ({e}); the file is truncated or corrupt") from None
    return arrays


def _read_npy(data: bytes, member: str, file: Path) -> np.ndarray:
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version not in ((1, 0), (2, 0)):
            raise FormatError(f"{file}: {member} is a .npy version {version} file; saekit reads versions 1 and 2")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fp)
    except (ValueError, SyntaxError, TypeError, tokenize.TokenError) as e:
        # The header is a Python dict literal; numpy passes on the errors of the ast and
        # tokenize modules it parses a damaged one with.
        raise FormatError(f"{file}: {member} has a corrupt .npy header ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise FormatError(f"{file}: {member} holds Python objects, which only unpickling could read; refused")
    declared, held = math.prod(shape) * dtype.itemsize, len(data) - fp.tell()
    if declared != held:
        raise FormatError(
            f"{file}: {member} declares shape {shape} of {dtype} ({declared} bytes) but holds {held} bytes; "
            "the file is truncated or corrupt"
        )
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def _float_tensor(a: np.ndarray, name: str, file: Path) -> torch.Tensor:
    # Floating-point arrays only: a cast to float32 would parse numeric strings and drop
    # imaginary parts instead of reporting a corrupt file.
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise FormatError(f"{file}: array {name!r} has dtype {a.dtype}, expected floating point")
    return torch.from_numpy(a.astype(a.dtype.newbyteorder("="), copy=False))


# ---------------------------------------------------------------- dispatch
LOADERS = {
    "saekit": load_dictionary, "saelens": load_saelens,
    "sparsify": load_sparsify, "dictionary_learning": load_dictionary_learning,
    "gemma_scope": load_gemma_scope,
}


SAVERS = {
    "saekit": save_saekit, "saelens": save_saelens,
    "sparsify": save_sparsify, "dictionary_learning": save_dictionary_learning,
}


def load_any(path: str | os.PathLike, format: str | None = None, device: str | torch.device = "cpu") -> Dictionary:
    """Load a local dictionary folder (or a file in it) in any supported format, detected
    unless ``format`` is given. For a Hub name too, use ``saekit.load``."""
    fmt = format or detect_format(path)
    if fmt not in LOADERS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return LOADERS[fmt](path).to(device).requires_grad_(False).eval()


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, format: str | None = None, overwrite: bool = False
) -> Path:
    """Read the local dictionary ``src`` (any format) and write it into the folder ``dst`` as ``to``.

    ``dst`` must be new or empty (see ``check_destination``); with ``overwrite``, every
    dictionary file of any format and every file of a training run (training.json,
    log.jsonl, eval.json, report.html, the checkpoint) is removed from it first, since
    they describe the dictionary written over; other files are left. ``dst`` is locked
    against other saekit processes while it is written. For a Hub name as ``src``, use
    ``saekit.loading.convert``.
    """
    check_written_format(to)
    source = _folder(src)
    dst = check_destination(dst, overwrite, source)  # before the source is read
    dictionary = load_any(src, format)
    created = not dst.exists()
    make_folder(dst, DESTINATION)
    try:
        _write_converted(dictionary, dst, to, overwrite, source)
    except BaseException:
        if created:
            remove_if_empty(dst)
        raise
    return dst


def _write_converted(dictionary: Dictionary, dst: Path, to: str, overwrite: bool, source: Path) -> None:
    with FolderLock(dst, "convert"):
        check_destination(dst, overwrite, source)  # again, now that no other saekit process can write there
        removed = _remove_dictionary_and_run_files(dst) if overwrite else []
        try:
            SAVERS[to](dictionary, dst)
        except OutputError as e:
            if removed:
                raise OutputError(
                    f"{e}. --overwrite had removed the old dictionary and its run files ({', '.join(removed)}) from "
                    f"{dst} first; the source {source} is unchanged"
                ) from None
            raise


def check_written_format(to: str) -> None:
    if to not in SAVERS:
        raise FormatError(f"saekit cannot write {to!r}; it writes {', '.join(SAVERS)}")


def check_destination(dst: str | os.PathLike, overwrite: bool = False, source: Path | None = None) -> Path:
    """Refuse a destination for ``convert`` that cannot or may not be written; changes nothing.

    It must be a writable folder (or creatable), not the source folder itself, and
    empty unless ``overwrite``: a folder holding a training run or another dictionary
    would be left with files that describe a dictionary no longer there.
    """
    dst = check_writable_folder(dst, DESTINATION)
    if source is not None and dst.exists() and dst.resolve() == source.resolve():
        raise OutputError(
            f"{DESTINATION} {dst} is the source folder itself; convert writes the dictionary into another folder: "
            "choose a new destination"
        )
    if overwrite or not dst.is_dir():
        return dst
    present = sorted(p.name for p in dst.iterdir() if p.name != LOCK_FILE)
    if present:
        shown = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "")
        raise OutputError(
            f"{DESTINATION} {dst} is not empty (it holds {shown}); choose a new folder, or pass --overwrite to "
            "replace the dictionary there (its training and evaluation files are removed with it)"
        )
    return dst


def _remove_dictionary_and_run_files(folder: Path) -> list[str]:
    """Remove what describes the dictionary in ``folder`` (and a crash's temporary copies); return the names."""
    removed = []
    for name in (*DICTIONARY_FILES, *RUN_RECORD_FILES):
        for path in (folder / name, temp_path(folder / name)):
            if path.is_file() or path.is_symlink():
                try:
                    path.unlink()
                except OSError as e:
                    done = f"{', '.join(removed)} were removed before it; " if removed else ""
                    raise OutputError(
                        f"cannot remove {path} (--overwrite): {e.strerror or e}; {done}no new dictionary was written"
                    ) from None
                removed.append(path.name)
    return removed
