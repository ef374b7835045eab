"""EleutherAI sparsify: ``cfg.json`` + ``sae.safetensors`` (TopK sparse autoencoders and transcoders).

sparsify's ``SparseCoder`` (eai-sparsify 1.3) stores ``encoder.weight`` (F × d_in),
``encoder.bias`` (F), ``W_dec`` (F × d_in), ``b_dec`` (d_in) and, with
``skip_connection``, ``W_skip`` (d_in × d_in, applied as ``x W_skipᵀ``). With
``transcode`` its encoder reads ``x`` without subtracting ``b_dec``. The config holds
``d_in`` and nothing for an output width, so its transcoders map d_in to d_in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


from ..dictionaries import Dictionary
from ..errors import FormatError
from .common import SPARSIFY_CFG, SPARSIFY_WEIGHTS, build_checked, checked_tensor, dictionary_folder, make_config, read_json, read_safetensors, require_key, unsupported, weights_of, writable_folder_for
from .files import atomic_save_tensors, atomic_write_text


def _flag(raw: dict, key: str, path: Path) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise FormatError(f"{path}: {key!r} must be true or false, got {value!r}")
    return value


def load_sparsify(folder: str | os.PathLike) -> Dictionary:
    """Load an EleutherAI sparsify folder (``cfg.json`` + ``sae.safetensors``, TopK):
    a sparse autoencoder, or a transcoder (``transcode``, ``skip_connection``)."""
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
    transcode, skip = _flag(raw, "transcode", cfg_path), _flag(raw, "skip_connection", cfg_path)
    # A skip connection needs a transcoder in saekit; sparsify also allows one on an
    # autoencoder, which is then a transcoder from the hook point to itself (below).
    cfg = make_config(cfg_path, arch="topk", d_in=d, d_sae=F, k=k, transcoder=transcode or skip, skip=skip)
    w = read_safetensors(w_path)
    what = f"sparsify TopK {'transcoder' if transcode else 'SAE'}{' with a skip connection' if skip else ''}"
    enc = checked_tensor(w, "encoder.weight", (F, d), w_path, what)
    tensors = {
        "W_enc": enc.T.contiguous(),
        "b_enc": checked_tensor(w, "encoder.bias", (F,), w_path, what),
        "W_dec": checked_tensor(w, "W_dec", (F, d), w_path, what),
        "b_dec": checked_tensor(w, "b_dec", (d,), w_path, what),
    }
    if skip:
        # sparsify adds x W_skipᵀ (W_skip is out × in); saekit adds x W_skip (in × out).
        tensors["W_skip"] = checked_tensor(w, "W_skip", (d, d), w_path, what).T.contiguous()
        if not transcode:
            # An autoencoder's pre = (x − b_dec) W_enc + b_enc = x W_enc + (b_enc − b_dec W_enc):
            # the same numbers from a saekit transcoder, which does not subtract b_dec.
            tensors["b_enc"] = tensors["b_enc"] - tensors["b_dec"] @ tensors["W_enc"]
    # sparsify: top-k of ReLU(pre); saekit: ReLU of top-k(pre). The kept values agree.
    return build_checked(cfg, tensors, w_path)


def save_sparsify(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    """Write a sparsify folder that ``SparseCoder.load_from_disk`` opens (TopK only;
    a transcoder with or without its skip path, when its output width is its input's)."""
    c = dictionary.cfg
    if c.arch != "topk" and c.transcoder:
        raise FormatError(
            f"a {c.arch} transcoder cannot be written as sparsify; sparsify's transcoders are topk. Write it as "
            "saekit's own format, or as SAELens (which has relu, jumprelu and batchtopk transcoders)"
        )
    if c.arch != "topk":
        raise unsupported("sparsify", c.arch, ["topk"])
    if c.transcoder and c.d_out != c.d_in:
        raise FormatError(
            f"this transcoder maps width {c.d_in} to width {c.d_out}; sparsify's transcoders keep the input's "
            "width (its config has no output width), so it cannot be written as sparsify. Write it as saekit's "
            "own format or SAELens (for relu/jumprelu/batchtopk transcoders)"
        )
    w = weights_of(dictionary)
    out = {
        "encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"], "b_dec": w["b_dec"],
    }
    if c.skip:
        out["W_skip"] = w["W_skip"].T.contiguous()  # sparsify's W_skip is out × in
    cfg = {
        "activation": "topk", "expansion_factor": max(1, c.d_sae // c.d_in), "normalize_decoder": True,
        "num_latents": c.d_sae, "k": c.k, "multi_topk": False, "skip_connection": c.skip,
        "transcode": c.transcoder, "d_in": c.d_in,
    }
    folder = writable_folder_for("sparsify", folder)
    atomic_save_tensors(out, folder / SPARSIFY_WEIGHTS)
    atomic_write_text(folder / SPARSIFY_CFG, json.dumps(cfg, indent=2) + "\n")
    return folder
