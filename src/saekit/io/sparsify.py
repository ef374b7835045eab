"""EleutherAI sparsify: ``cfg.json`` + ``sae.safetensors`` (TopK)."""

from __future__ import annotations

import json
import os
from pathlib import Path


from ..dictionaries import Dictionary
from ..errors import FormatError
from .common import SPARSIFY_CFG, SPARSIFY_WEIGHTS, build_checked, checked_tensor, dictionary_folder, make_config, read_json, read_safetensors, require_key, unsupported, weights_of, writable_folder_for
from .files import atomic_save_tensors, atomic_write_text


def load_sparsify(folder: str | os.PathLike) -> Dictionary:
    """Load an EleutherAI sparsify folder (``cfg.json`` + ``sae.safetensors``, TopK)."""
    folder = dictionary_folder(folder)
    cfg_path, w_path = folder / SPARSIFY_CFG, folder / SPARSIFY_WEIGHTS
    raw = read_json(cfg_path)
    d = require_key(raw, "d_in", cfg_path)
    k = require_key(raw, "k", cfg_path)
    F = raw.get("num_latents") or 0
    if not F:
        F = d * require_key(raw, "expansion_factor", cfg_path)
    F = require_key({"num_latents": F}, "num_latents", cfg_path)
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
    return build_checked(cfg, tensors, w_path)


def save_sparsify(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    """Write a sparsify folder that ``SparseCoder.load_from_disk`` opens (TopK only)."""
    c = dictionary.cfg
    if c.arch != "topk":
        raise unsupported("sparsify", c.arch, ["topk"])
    w = weights_of(dictionary)
    out = {
        "encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"], "b_dec": w["b_dec"],
    }
    cfg = {
        "activation": "topk", "expansion_factor": max(1, c.d_sae // c.d_in), "normalize_decoder": True,
        "num_latents": c.d_sae, "k": c.k, "multi_topk": False, "skip_connection": False,
        "transcode": False, "d_in": c.d_in,
    }
    folder = writable_folder_for("sparsify", folder)
    atomic_save_tensors(out, folder / SPARSIFY_WEIGHTS)
    atomic_write_text(folder / SPARSIFY_CFG, json.dumps(cfg, indent=2) + "\n")
    return folder
