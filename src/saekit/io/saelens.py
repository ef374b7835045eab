"""SAELens 6.x: ``cfg.json`` + ``sae_weights.safetensors``.

Architectures ``standard``, ``topk``, ``jumprelu`` and ``gated``; saekit's BatchTopK is
written as SAELens writes its own BatchTopK for inference: a ``jumprelu`` with the global
threshold per feature.

Transcoders: ``transcoder`` and ``skip_transcoder`` (ReLU), ``jumprelu_transcoder`` and
``jumprelu_skip_transcoder``. The config adds ``d_out`` and the target hook point as
``metadata.hook_name_out``; ``W_dec`` is F × d_out, ``b_dec`` d_out, and ``W_skip`` is
d_out × d_in, applied as ``x W_skipᵀ``. The input is never centred by ``b_dec`` (SAELens
requires ``apply_b_dec_to_input`` false for them), as in saekit's transcoders.
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
# SAELens transcoder architecture → (saekit architecture, skip path), and what each saekit
# architecture is written as (SAELens has no TopK or gated transcoder).
SAELENS_TRANSCODERS = {
    "transcoder": ("relu", False), "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False), "jumprelu_skip_transcoder": ("jumprelu", True),
}
SAELENS_TRANSCODER_WRITTEN = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder", "batchtopk": "jumprelu_transcoder"}
SAELENS_SKIP_WRITTEN = {"transcoder": "skip_transcoder", "jumprelu_transcoder": "jumprelu_skip_transcoder"}
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
    if raw.get("reshape_activations", "none") not in ("none", None):
        raise FormatError(
            f"{cfg_path} sets reshape_activations={raw['reshape_activations']!r} (per-head hook_z "
            "inputs); saekit does not support it yet"
        )
    for key in ("hook_head_index", "hook_head_index_out"):
        if raw.get(key, meta.get(key)) is not None:
            raise FormatError(f"{cfg_path} sets {key} (a single attention head); saekit does not support it yet")
    if isinstance(arch, str) and arch in SAELENS_TRANSCODERS:
        return _load_saelens_transcoder(raw, meta, arch, d, F, cfg_path, w_path)
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
            f"'jumprelu' and 'gated', and the transcoders {', '.join(map(repr, SAELENS_TRANSCODERS))}"
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

    cfg = make_config(cfg_path, arch=SAELENS_ARCHS[arch], d_in=d, d_sae=F, k=k, **_provenance(raw, meta))
    w = read_safetensors(w_path)
    what = f"SAELens {arch} SAE"
    W_enc = checked_tensor(w, "W_enc", (d, F), w_path, what)
    W_dec = _decoder(w, F, d, w_path, what)
    b_dec = checked_tensor(w, "b_dec", (d,), w_path, what)
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
            tensors["threshold"] = _threshold(w, F, w_path, what)
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


def _load_saelens_transcoder(
    raw: dict, meta: dict, arch: str, d: int, F: int, cfg_path: Path, w_path: Path
) -> Dictionary:
    """A SAELens transcoder folder as a saekit transcoder (see the module docstring)."""
    base, skip = SAELENS_TRANSCODERS[arch]
    d_out = require_key(raw, "d_out", cfg_path)
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        # SAELens normalises a transcoder's input but not its output, and records no
        # constant for the target; no fold into the weights reproduces that.
        raise FormatError(
            f"{cfg_path} sets normalize_activations={norm!r} on a transcoder; saekit reads SAELens "
            "transcoders only with normalize_activations='none'"
        )
    # SAELens' Transcoder never subtracts b_dec from its input (its process_sae_in skips
    # it, whatever apply_b_dec_to_input says), and neither does a saekit transcoder.
    target = meta.get("hook_name_out", raw.get("hook_name_out"))
    cfg = make_config(
        cfg_path, arch=base, d_in=d, d_sae=F, transcoder=True, d_out=d_out, skip=skip,
        target=str(target or ""), **_provenance(raw, meta),
    )
    w = read_safetensors(w_path)
    what = f"SAELens {arch}"
    tensors = {
        "W_enc": checked_tensor(w, "W_enc", (d, F), w_path, what),
        "b_enc": checked_tensor(w, "b_enc", (F,), w_path, what),
        "W_dec": _decoder(w, F, d_out, w_path, what),
        "b_dec": checked_tensor(w, "b_dec", (d_out,), w_path, what),
    }
    if base == "jumprelu":
        tensors["threshold"] = _threshold(w, F, w_path, what)
    if skip:
        # SAELens adds x W_skipᵀ with W_skip d_out × d_in; saekit adds x W_skip, d_in × d_out.
        tensors["W_skip"] = checked_tensor(w, "W_skip", (d_out, d), w_path, what).T.contiguous()
    return build_checked(cfg, tensors, w_path)


def _provenance(raw: dict, meta: dict) -> dict[str, Any]:
    """The config fields that say where a SAELens dictionary's inputs come from."""
    return {
        "hook": str(meta.get("hook_name", raw.get("hook_name", raw.get("hook_point", ""))) or ""),
        "model": str(meta.get("model_name", raw.get("model_name", "")) or ""),
        "context_length": meta.get("context_size", raw.get("context_size")),
        "keep_bos": _saelens_keep_bos(raw, meta),
    }


def _decoder(w: dict, F: int, width: int, w_path: Path, what: str) -> torch.Tensor:
    W_dec = checked_tensor(w, "W_dec", (F, width), w_path, what)
    if "scaling_factor" in w:
        # Old "finetuning scaling factor": f is multiplied by it before decoding; folding
        # it into the decoder rows gives the same reconstruction with the same f.
        s = checked_tensor(w, "scaling_factor", (F,), w_path, what)
        W_dec = W_dec * s[:, None]
    return W_dec


def _threshold(w: dict, F: int, w_path: Path, what: str) -> torch.Tensor:
    if "threshold" in w:
        theta = checked_tensor(w, "threshold", (F,), w_path, what)
    elif "log_threshold" in w:
        theta = checked_tensor(w, "log_threshold", (F,), w_path, what).exp()
    else:
        raise FormatError(f"{w_path} lacks the tensor 'threshold' needed by a {what}")
    # SAELens: f = ReLU(pre)·1[pre > θ]; saekit: f = pre·1[pre > θ]. They agree
    # for θ ≥ 0, and a negative θ behaves as θ = 0 under SAELens' ReLU.
    return theta.clamp_min(0.0)


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
    """Write a SAELens 6.x folder that ``SAE.load_from_disk`` opens (a transcoder as one of
    SAELens' transcoder classes)."""
    c = dictionary.cfg
    w = weights_of(dictionary)
    if c.transcoder:
        arch = SAELENS_TRANSCODER_WRITTEN.get(c.arch)
        if arch is None:
            raise FormatError(
                f"a {c.arch} transcoder cannot be written as SAELens; SAELens has transcoders for "
                f"{sorted(SAELENS_TRANSCODER_WRITTEN)} (batchtopk as its jumprelu_transcoder). "
                + ("Write it as sparsify (topk transcoders) or saekit's own format"
                   if c.arch == "topk" else "Write it as saekit's own format")
            )
        if c.skip:
            arch = SAELENS_SKIP_WRITTEN[arch]
    else:
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
    if c.skip:
        out["W_skip"] = w["W_skip"].T.contiguous()  # SAELens' W_skip is d_out × d_in
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
    if c.transcoder:
        # SAELens refuses apply_b_dec_to_input for transcoders; they read x uncentred, as saekit's do.
        cfg.update(apply_b_dec_to_input=False, d_out=c.d_out)
        cfg["metadata"].update(hook_name_out=c.target or None, saekit_target_scale=c.target_scale)
    if arch == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    folder = writable_folder_for("saelens", folder)
    atomic_save_tensors(out, folder / SAELENS_WEIGHTS)
    atomic_write_text(folder / SAELENS_CFG, json.dumps(cfg, indent=2) + "\n")
    return folder
