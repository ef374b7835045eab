"""Gemma Scope: one ``params.npz`` per JumpReLU dictionary, read with ``allow_pickle=False``.

Gemma Scope's transcoders (gemma-scope-2b-pt-transcoders) use the same file, and nothing
in it tells them apart: pass ``target=`` to load one as a transcoder. saekit writes no
Gemma Scope files (for transcoders: saekit's own format, sparsify or SAELens).
"""

from __future__ import annotations

import io
import math
import os
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..dictionaries import Dictionary
from ..errors import FormatError
from .common import GEMMA_SCOPE_ARRAYS, GEMMA_SCOPE_PARAMS, build_checked, checked_tensor, dictionary_folder, make_config


def load_gemma_scope(path: str | os.PathLike, hook: str = "", model: str = "", target: str = "") -> Dictionary:
    """Load a Gemma Scope ``params.npz`` (the file or its folder) as a JumpReLU dictionary.

    Gemma Scope computes ``pre = x W_enc + b_enc`` without subtracting ``b_dec`` and
    ``f = 1[pre > threshold] · ReLU(pre)``; saekit subtracts ``b_dec`` first, so the
    encoder bias becomes ``b_enc + b_dec W_enc``, and clamps a negative threshold to 0
    (exact, given the ReLU). The file records neither hook point nor model
    (they live in the release's folder names): pass them, or set ``cfg.hook`` later.
    ``target``, the hook point a Gemma Scope transcoder writes, loads the file as a
    transcoder (which reads ``x`` uncentred, so ``b_enc`` is kept as it is; ``W_dec``
    may then be F × d_out). Read with ``allow_pickle=False``: nothing in the file can execute.
    """
    p = Path(path)
    file = p if p.is_file() else dictionary_folder(p) / GEMMA_SCOPE_PARAMS
    if not file.exists():
        raise FormatError(f"{file} does not exist; a Gemma Scope dictionary is a {GEMMA_SCOPE_PARAMS} file")
    found = _read_npz(file)
    arrays = {name: _float_tensor(found[name], name, file) for name in GEMMA_SCOPE_ARRAYS if name in found}
    if "W_enc" not in arrays or arrays["W_enc"].ndim != 2:
        raise FormatError(f"{file} lacks a 2-D 'W_enc' (found: {sorted(found)})")
    d, F = arrays["W_enc"].shape
    # A transcoder's output width is its decoder's; a sparse autoencoder's is its input's.
    W_dec_found = arrays.get("W_dec")
    d_out = W_dec_found.shape[-1] if target and W_dec_found is not None and W_dec_found.ndim == 2 else d
    what = f"Gemma Scope JumpReLU {'transcoder' if target else 'dictionary'}"
    W_enc = checked_tensor(arrays, "W_enc", (d, F), file, what)
    W_dec = checked_tensor(arrays, "W_dec", (F, d_out), file, what)
    b_enc = checked_tensor(arrays, "b_enc", (F,), file, what)
    b_dec = checked_tensor(arrays, "b_dec", (d_out,), file, what)
    threshold = checked_tensor(arrays, "threshold", (F,), file, what)
    transcoder = {"transcoder": True, "target": target, "d_out": d_out} if target else {}
    cfg = make_config(file, arch="jumprelu", d_in=d, d_sae=F, hook=hook, model=model, **transcoder)
    return build_checked(cfg, {
        "W_enc": W_enc, "W_dec": W_dec, "b_dec": b_dec,
        # A transcoder does not centre its input either: Gemma Scope's bias as it is.
        "b_enc": b_enc if target else b_enc + b_dec @ W_enc,
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
