"""SAELens 6.x: ``cfg.json`` + ``sae_weights.safetensors``.

Architectures ``standard``, ``topk``, ``jumprelu`` and ``gated``; saekit's BatchTopK is
written as SAELens writes its own BatchTopK for inference: a ``jumprelu`` with the global
threshold per feature.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..dictionaries import Dictionary
from ..errors import FormatError
from .common import SAELENS_CFG, SAELENS_WEIGHTS, build_checked, checked_tensor, dictionary_folder, make_config, read_json, read_safetensors, require_key, unsupported, weights_of, writable_folder_for
from .files import atomic_save_tensors, atomic_write_text


# SAELens architecture → saekit architecture, and back; saekit's BatchTopK is written as
# SAELens writes its own for inference: a jumprelu with the global threshold per feature.
SAELENS_ARCHS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
SAELENS_ARCH_WRITTEN = {**{ours: theirs for theirs, ours in SAELENS_ARCHS.items()}, "batchtopk": "jumprelu"}
# The SAELens version written into saved configs: >= 6 so that SAELens reads the
# config as its 6.x layout (hook/model names under "metadata").
SAELENS_VERSION_WRITTEN = "6.0.0"


def load_saelens(folder: str | os.PathLike, norm_scaling_factor: float | None = None) -> Dictionary:
    """Load a SAELens 6.x folder (``cfg.json`` + ``sae_weights.safetensors``).

    ``normalize_activations="expected_average_only_in"`` means the weights act on
    activations multiplied by a constant that the folder does not store (SAELens keeps it
    in its pretrained directory); pass it as ``norm_scaling_factor`` to fold it in.
    """
    folder = dictionary_folder(folder)
    cfg_path, w_path = folder / SAELENS_CFG, folder / SAELENS_WEIGHTS
    raw = read_json(cfg_path)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    # Configs older than 6.0 keep the metadata at the top level and may lack "architecture".
    arch = raw.get("architecture", "standard")
    if "architecture" not in raw and raw.get("activation_fn_str", raw.get("activation_fn")) == "topk":
        arch = "topk"
    d, F = require_key(raw, "d_in", cfg_path), require_key(raw, "d_sae", cfg_path)
    k = None
    if arch == "topk":
        fn_kwargs = raw.get("activation_fn_kwargs")
        k = raw.get("k", fn_kwargs.get("k") if isinstance(fn_kwargs, dict) else None)
        if k is None:
            raise FormatError(f"{cfg_path} is missing the key 'k' needed by a topk SAE")
        k = require_key({"k": k}, "k", cfg_path)
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
    dictionary = build_checked(cfg, tensors, w_path)
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
    w = weights_of(dictionary)
    arch = SAELENS_ARCH_WRITTEN.get(c.arch)
    if arch is None:
        raise unsupported("SAELens", c.arch, list(SAELENS_ARCH_WRITTEN))
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
    folder = writable_folder_for("saelens", folder)
    atomic_save_tensors(out, folder / SAELENS_WEIGHTS)
    atomic_write_text(folder / SAELENS_CFG, json.dumps(cfg, indent=2) + "\n")
    return folder
