"""dictionary_learning: ``config.json`` + ``ae.pt`` (``AutoEncoder``, ``GatedAutoEncoder``,
``JumpReluAutoEncoder``, ``AutoEncoderTopK``, ``BatchTopKSAE``). Sparse autoencoders only:
none of these classes has an output space of its own, so transcoders are refused.

Nothing is unpickled with code execution: ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from ..dictionaries import ARCHITECTURES, Dictionary
from ..errors import FormatError
from .common import DL_CFG, DL_WEIGHTS, build_checked, checked_tensor, dictionary_folder, make_config, read_json, require_key, unsupported, weights_of, writable_folder_for
from .files import atomic_write_bytes, atomic_write_text


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
    folder = dictionary_folder(folder)
    cfg_path, w_path = folder / DL_CFG, folder / DL_WEIGHTS
    raw = read_json(cfg_path)
    trainer = raw.get("trainer")
    if not isinstance(trainer, dict):
        raise FormatError(f"{cfg_path} is missing the 'trainer' section")
    dict_class = require_key(trainer, "dict_class", cfg_path, str)
    if dict_class not in DL_CLASSES:
        raise FormatError(f"{cfg_path} names dict_class {dict_class!r}; saekit reads {sorted(DL_CLASSES)}")
    arch = DL_CLASSES[dict_class]
    d = require_key(trainer, "activation_dim", cfg_path)
    F = require_key(trainer, "dict_size", cfg_path)
    k = require_key(trainer, "k", cfg_path) if ARCHITECTURES[arch].uses_k else None
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
    return build_checked(cfg, tensors, w_path)


def save_dictionary_learning(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    """Write ``ae.pt`` (a plain dict of tensors) + ``config.json`` in dictionary_learning's layout."""
    c = dictionary.cfg
    if c.transcoder:
        raise FormatError(
            "dictionary_learning has no transcoder format (its dictionary classes reconstruct their own "
            "input), so this transcoder cannot be written as it. Formats that take transcoders: saekit's own, "
            "sparsify (topk, output width = input width) and SAELens (relu, jumprelu, batchtopk)"
        )
    w = weights_of(dictionary)
    cls = {v: k for k, v in DL_CLASSES.items()}.get(c.arch)
    if cls is None:
        raise unsupported("dictionary_learning", c.arch, sorted(DL_CLASSES.values()))
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
    folder = writable_folder_for("dictionary_learning", folder)
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in out.items()}, buffer)
    atomic_write_bytes(folder / DL_WEIGHTS, buffer.getvalue())
    atomic_write_text(folder / DL_CFG, json.dumps(config, indent=4) + "\n")
    return folder
