"""Typed configuration: one place for every default, validated when built.

The CLI builds its flags from these fields (name, type, default and the help text in
each field's metadata), so a new option is added here once and nowhere else.
``SourceConfig`` holds what decides which activations are read (model, hook point,
data, context); ``TrainConfig`` and ``CacheConfig`` extend it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .dictionaries import ARCHITECTURES
from .errors import ConfigError
from .models import parse_dtype

ARCH_CHOICES = tuple(sorted(ARCHITECTURES))

# Sparsity coefficients measured on the embedded model's resid_post.9 at the default
# budget (300k tokens, 8x), activations scaled to E‖x‖² = d: relu λ=2 → L0 37, gated
# λ=2 → L0 56, jumprelu λ=1 → L0 77 (see benchmarks/architectures.py).
DEFAULT_SPARSITY_COEFF = {"l1": 2.0, "l0": 1.0}
DEFAULT_K = 32  # active features per token, for the TopK family
DEFAULT_EXPANSION = 8  # dictionary size as a multiple of the activation width
DEFAULT_CONTEXT_LENGTH = 128  # tokens per training context, BOS included

# Fraction of the run after which dead-feature resampling stops, so the learning-rate
# decay phase is not disturbed by fresh features.
RESAMPLE_STOP_FRACTION = 0.8


def _opt(help: str, **kw: Any) -> Any:
    """A dataclass field with CLI help text attached."""
    default = kw.pop("default")
    return field(default=default, metadata={"help": help, **kw})


def _bad(msg: str) -> None:
    raise ConfigError(msg)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def flag_name(f: dataclasses.Field) -> str:
    """The CLI flag of a config field (its ``flag`` metadata, else ``--field-name``)."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def field_type(hint: Any) -> tuple[type, bool]:
    """A field's type without ``| None``, and whether None is allowed (``int | None`` → (int, True))."""
    args = typing.get_args(hint)
    optional = type(None) in args
    return next((a for a in args if a is not type(None)), hint) if optional else hint, optional


# The flags only some architectures take: the flag, its field, and which take it.
ARCH_SPECIFIC_FLAGS: tuple[tuple[str, str, Callable[[type], bool]], ...] = (
    ("--k", "k", lambda c: c.uses_k),
    ("--l1", "l1_coeff", lambda c: c.sparsity_penalty == "l1"),
    ("--l0-coeff", "l0_coeff", lambda c: c.sparsity_penalty == "l0"),
)


def archs_taking(has: Callable[[type], bool]) -> str:
    """The architectures whose class ``has``, as a message names them ("batchtopk and topk")."""
    return " and ".join(a for a, c in sorted(ARCHITECTURES.items()) if has(c))


def _refuse_for_other_archs(flag: str, arch: str, has: Callable[[type], bool]) -> None:
    """A flag that only some architectures take, given to another: name the ones that take it."""
    _bad(f"{flag} applies to {archs_taking(has)}, not {arch}")


def _is_type(value: Any, base: type) -> bool:
    if base is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False  # True is an int to Python, not a size or a rate to a user
    if base is int:
        return isinstance(value, numbers.Integral)
    if base is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, base)


def _check_types(cfg: Any) -> None:
    """Every field holds a value of its declared type, before any range check runs.

    The CLI parses flags into the right types; this catches the Python API, where
    ``TrainConfig(tokens="100")`` would otherwise fail later with a TypeError deep in
    the loop, and ``k=2.5`` would be silently accepted.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        base, optional = field_type(hints[f.name])
        if value is None and optional:
            continue
        if base is str and isinstance(value, os.PathLike):
            value = os.fspath(value)  # paths are kept as strings (they go into JSON records)
            setattr(cfg, f.name, value)
        or_none = " or None" if optional else ""
        if not _is_type(value, base):
            _bad(f"{flag_name(f)} ({f.name}=) must be {_TYPE_NAMES.get(base, base.__name__)}{or_none}, got {value!r}")
        if base is float and not math.isfinite(value):
            _bad(f"{flag_name(f)} ({f.name}=) must be a finite number{or_none}, got {value!r}")
        if base in (int, float, bool):
            setattr(cfg, f.name, base(value))  # numpy scalars become Python numbers (they go into JSON)


@dataclass
class SourceConfig:
    """Which activations: model, hook point, text, and how the text is cut."""

    model: str | None = _opt(
        "Hub id, local folder or .gguf file; default: the embedded SmolLM2-135M-Instruct",
        default=None,
    )
    hook: str | None = _opt(
        "hook point, e.g. resid_post.9, mlp_out.9, attn_out.9, mlp_in.9, resid_pre.9; several separated by commas, "
        "or a pattern such as 'resid_post.*' (one dictionary each, from one forward pass; with --activation-cache, "
        "which of the cache's points); default: resid_post at 30%% of the depth (resid_post.9 for SmolLM2's 30 "
        "layers), or every point of an activation cache",
        default=None,
    )
    dataset: str | None = _opt(
        "embedded Wikipedia summaries by default; a local .txt/.jsonl/.json/.parquet "
        "file or folder; or a Hugging Face dataset name (streamed, shuffled through a 10,000-document buffer), "
        "optionally name:config",
        default=None,
    )
    text_field: str = _opt("field/column holding the text in .jsonl/.parquet/HF data", default="text")
    context_length: int | None = _opt(
        f"tokens per context (BOS included); default {DEFAULT_CONTEXT_LENGTH}, or with --activation-cache the "
        "cache's (another value contradicts the cache)",
        default=None,
    )
    model_batch_size: int = _opt("contexts per forward pass of the language model", default=32)
    keep_bos: bool = _opt("keep the BOS position (excluded by default: it carries no information about the text)", default=False)
    seed: int = _opt("random seed (init, data order, shuffling)", default=0)
    device: str = _opt("cpu, cuda, cuda:1, ... or auto", default="auto")
    dtype: str = _opt("language-model dtype: float32, bfloat16, float16", default="float32")

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("context_length", "model_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                _bad(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        # Without BOS, a context needs a token spliced and the token it predicts after the
        # BOS: at 2, the only prediction scored is BOS's own, which no splice changes, and
        # the downstream figures would show a perfect dictionary.
        shortest = 2 if self.keep_bos else 3
        if self.context_length is not None and self.context_length < shortest:
            _bad(f"--context-length must be at least {shortest} (a BOS token, a token the dictionary reconstructs"
                 f"{'' if self.keep_bos else ' and the token it predicts'}), got {self.context_length}")
        if self.seed < 0:
            _bad(f"--seed must be zero or positive, got {self.seed}")
        parse_dtype(self.dtype)  # the one reader of dtype names; raises ConfigError
        if self.device != "auto":
            try:
                dev = torch.device(self.device)
            except RuntimeError:
                _bad(f"--device {self.device!r} is not a device; use cpu, cuda, cuda:N or auto")
            if dev.type not in ("cpu", "cuda", "mps", "xpu"):
                _bad(f"--device {self.device!r}: saekit runs on cpu, cuda, cuda:N or auto")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def context_tokens(self) -> int:
        """The context length to cut text into (``--context-length``, default 128)."""
        return self.context_length if self.context_length is not None else DEFAULT_CONTEXT_LENGTH


@dataclass
class CacheConfig(SourceConfig):
    """``saekit cache``: run the model once and store activations as .npy shards."""

    out: str = _opt("folder to write", default="", required=True)
    tokens: int = _opt("training activations to write", default=1_000_000)
    heldout_tokens: int = _opt("held-out activations to write (for evaluation after training)", default=32_768)
    shard_tokens: int = _opt("activations per shard file", default=262_144)
    storage_dtype: str = _opt(
        "dtype of the stored activations (bfloat16 keeps float32's range at half the size)",
        default="float32", choices=("float32", "float16", "bfloat16"),
    )
    overwrite: bool = _opt("replace the contents of a non-empty --out folder", default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.out:
            _bad("--out is required: the folder to write the activations to")
        for name in ("tokens", "shard_tokens"):
            if getattr(self, name) <= 0:
                _bad(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.heldout_tokens < 0:
            _bad(f"--heldout-tokens must be zero or positive, got {self.heldout_tokens}")
        if self.storage_dtype not in ("float32", "float16", "bfloat16"):
            _bad(f"--storage-dtype must be float32, float16 or bfloat16, got {self.storage_dtype!r}")


# The settings that may differ between dictionaries trained from one pass (a sweep):
# what the dictionary is and how its own optimisation runs. Everything else decides
# which tokens arrive in which batches, and so is shared.
DICTIONARY_FIELDS = frozenset({
    "arch", "k", "expansion", "dict_size", "l1_coeff", "l0_coeff", "lr", "lr_warmup", "lr_decay",
    "sparsity_warmup", "dead_after_tokens", "auxk_coeff", "resample", "jumprelu_bandwidth", "skip",
})


@dataclass
class TrainConfig(SourceConfig):
    """``saekit train``: everything that decides a training run."""

    # What to train on (besides SourceConfig's model, hook and data).
    activation_cache: str | None = _opt(
        "read activations from a folder written by `saekit cache` instead of running the model",
        default=None,
    )
    # A transcoder instead of a sparse autoencoder.
    target: str | None = _opt(
        "train transcoders: the hook point each dictionary reconstructs from its --hook input (e.g. --hook "
        "mlp_in.6 --target mlp_out.6), later in the forward pass; several or a pattern pair with --hook's points "
        "in forward order (one target may serve every input); default: none, a sparse autoencoder reconstructs "
        "its own input",
        default=None,
    )
    skip: bool = _opt("give each transcoder a learned linear skip path from input to target (needs --target)", default=False)
    # The dictionary.
    arch: str = _opt(f"architecture: {', '.join(ARCH_CHOICES)}", default="topk", choices=ARCH_CHOICES)
    k: int | None = _opt("active features per token (topk, batchtopk; default 32)", default=None)
    expansion: int | None = _opt("dictionary size as a multiple of the activation width (default 8)", default=None)
    dict_size: int | None = _opt("dictionary size in features (instead of --expansion)", default=None)
    l1_coeff: float | None = _opt(
        "L1 sparsity coefficient λ (relu, gated); default 2.0 (L0 ≈ 40-60 at the defaults; "
        "activations are scaled to E‖x‖²=d, so λ means the same at every layer)",
        default=None,
        flag="--l1",
    )
    l0_coeff: float | None = _opt(
        "L0 sparsity coefficient λ (jumprelu); default 1.0. Thresholds start where each feature "
        "fires on 64/F of the data and move about one learning rate per step, so λ acts over "
        "thousands of steps; Adam normalises gradient scale, so its effect saturates: sweep on "
        "a log scale and read off L0",
        default=None,
    )
    # The budget and the optimiser.
    tokens: int = _opt("activations to train on", default=300_000)
    batch_size: int = _opt("activations per optimiser step", default=1024)
    lr: float | None = _opt(
        "Adam learning rate; default 1.6e-3 scaled by 1/sqrt(F/4096) (smaller for larger dictionaries)",
        default=None,
    )
    lr_warmup: float = _opt("fraction of the run for linear learning-rate warm-up", default=0.02)
    lr_decay: float = _opt("fraction of the run, at its end, for linear decay to zero", default=0.2)
    sparsity_warmup: float = _opt("fraction of the run for linear sparsity-coefficient warm-up", default=0.05)
    buffer_tokens: int = _opt("activations shuffled together in the buffer", default=65_536)
    dead_after_tokens: int | None = _opt(
        "a feature silent for this many tokens counts as dead (aux-k target, resampling); "
        "default: a tenth of the run, between 50k and 10M",
        default=None,
    )
    auxk_coeff: float = _opt("weight of the auxiliary-k loss (topk family)", default=1 / 32)
    resample: bool = _opt("resample dead features (relu, gated, jumprelu)", default=True)
    jumprelu_bandwidth: float = _opt("straight-through kernel bandwidth ε (jumprelu)", default=0.05)
    max_norm_ratio: float | None = _opt(
        "drop tokens whose norm exceeds this multiple of the median norm (e.g. 10), for models with massive "
        "activations; off by default, since the evaluation counts every token and a dictionary trained without "
        "the outliers is still judged on them. Every dictionary of one pass trains on the same tokens: a token "
        "over the cap at any hook point read is dropped for all",
        default=None,
    )
    # Where and how.
    parallel: str = _opt(
        "under torchrun: 'data' trains every dictionary on all ranks, each stepping on its share of every "
        "global batch (DDP; --batch-size stays the global batch); 'dictionaries' deals the dictionaries out to "
        "the ranks, each running its own model pass",
        default="data", choices=("data", "dictionaries"),
    )
    autocast: str = _opt(
        "mixed precision for the dictionaries' step: none (fp32) or bf16 (torch.autocast on the device: the "
        "products in bf16, weights, gradients and Adam's state in fp32); several times faster on GPUs with bf16 "
        "tensor cores, usually slower on CPUs",
        default="none", choices=("none", "bf16"),
    )
    cuda_graphs: bool = _opt(
        "on a GPU, capture each dictionary's forward and backward in a CUDA graph, replayed every step (one "
        "launch instead of a hundred, where a step at a few thousand tokens is bound by kernel launches); used "
        "where it was measured to pay (training/graphed_step.py), ignored on CPUs and under DDP",
        default=True,
    )
    out: str | None = _opt("output folder; default runs/<model>-<hook>-<arch>", default=None)
    resume: bool = _opt("continue the run in --out from its last checkpoint", default=False)
    overwrite: bool = _opt("replace an --out folder that holds a different run", default=False)
    checkpoint_every: int | None = _opt(
        "tokens between checkpoints; default a tenth of the run", default=None
    )
    eval_tokens: int = _opt(
        "held-out tokens per context regime to evaluate on at the end (0 to skip); `saekit eval` measures more",
        default=16_384,
    )
    log_every: int = _opt("optimiser steps between log lines", default=10)
    wandb: bool = _opt("also log to Weights & Biases (WANDB_MODE=offline works)", default=False)
    wandb_project: str = _opt("W&B project", default="saekit")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arch not in ARCHITECTURES:
            _bad(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCH_CHOICES)}")
        cls = ARCHITECTURES[self.arch]
        if self.expansion is not None and self.dict_size is not None:
            _bad("give --expansion or --dict-size, not both")
        if self.expansion is not None and self.expansion <= 0:
            _bad(f"--expansion must be positive, got {self.expansion}")
        if self.dict_size is not None and self.dict_size <= 0:
            _bad(f"--dict-size must be positive, got {self.dict_size}")
        if not cls.uses_k and self.k is not None:
            _refuse_for_other_archs("--k", self.arch, lambda c: c.uses_k)
        if cls.uses_k and self.k is None:
            self.k = DEFAULT_K
        if cls.uses_k and self.k <= 0:
            _bad(f"--k must be positive, got {self.k}")
        if self.dict_size is not None and cls.uses_k and self.k >= self.dict_size:
            _bad(f"--k {self.k} must be smaller than --dict-size {self.dict_size}")
        for flag, value, penalty in (("--l1", self.l1_coeff, "l1"), ("--l0-coeff", self.l0_coeff, "l0")):
            if value is None:
                continue
            if cls.sparsity_penalty != penalty:
                _refuse_for_other_archs(flag, self.arch, lambda c, p=penalty: c.sparsity_penalty == p)
            if not (math.isfinite(value) and value >= 0):
                _bad(f"{flag} must be a finite non-negative number, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            _bad(f"--lr must be a finite positive number, got {self.lr}")
        if self.tokens <= 0:
            _bad(f"--tokens must be positive, got {self.tokens}")
        for name in ("batch_size", "buffer_tokens", "log_every"):
            if getattr(self, name) <= 0:
                _bad(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.buffer_tokens < self.batch_size:
            _bad(f"--buffer-tokens ({self.buffer_tokens}) must hold at least one batch (--batch-size {self.batch_size})")
        if self.batch_size > self.tokens:
            _bad(f"--batch-size ({self.batch_size}) is larger than the whole run (--tokens {self.tokens}); lower it or train longer")
        for name in ("lr_warmup", "lr_decay", "sparsity_warmup"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                _bad(f"--{name.replace('_', '-')} is a fraction of the run and must lie in [0, 1], got {v}")
        if self.lr_warmup + self.lr_decay > 1.0:
            _bad(
                f"learning-rate warm-up ({self.lr_warmup}) and decay ({self.lr_decay}) together exceed "
                "the run (fractions summing above 1); shorten one of them"
            )
        if self.dead_after_tokens is not None and self.dead_after_tokens <= 0:
            _bad(f"--dead-after-tokens must be positive, got {self.dead_after_tokens}")
        if self.out is not None and not self.out.strip():
            _bad("--out is empty; name a folder, or leave --out out for the default under runs/")
        if self.checkpoint_every is not None and self.checkpoint_every <= 0:
            _bad(f"--checkpoint-every must be positive, got {self.checkpoint_every}")
        if self.eval_tokens < 0:
            _bad(f"--eval-tokens must be zero or positive, got {self.eval_tokens}")
        if self.max_norm_ratio is not None and self.max_norm_ratio <= 1.0:
            _bad(f"--max-norm-ratio must exceed 1 (a multiple of the median norm), got {self.max_norm_ratio}")
        if self.jumprelu_bandwidth <= 0:
            _bad(f"--jumprelu-bandwidth must be positive, got {self.jumprelu_bandwidth}")
        if self.auxk_coeff < 0:
            _bad(f"--auxk-coeff must be zero or positive, got {self.auxk_coeff}")
        if self.target is not None:
            if not self.target.strip():
                _bad("--target is empty; give the hook point the transcoder reconstructs, e.g. mlp_out.6")
            if self.hook is None:
                _bad(f"--target {self.target} needs --hook: the hook point each transcoder reads (e.g. --hook mlp_in.6)")
        if self.skip and self.target is None:
            _bad("--skip adds a skip path to a transcoder; give --target (the hook point it reconstructs) or drop --skip")
        if self.autocast not in ("none", "bf16"):
            _bad(f"--autocast must be none or bf16, got {self.autocast!r}")
        if self.parallel not in ("data", "dictionaries"):
            _bad(f"--parallel must be data or dictionaries, got {self.parallel!r}")
        if self.resume and self.overwrite:
            _bad("--resume continues the run in --out and --overwrite replaces it; choose one")

    # ----------------------------------------------------- derived settings
    def dictionary_size(self, d_in: int) -> int:
        if self.dict_size is not None:
            return self.dict_size
        return d_in * (self.expansion or DEFAULT_EXPANSION)

    def sparsity_coeff(self) -> float:
        penalty = ARCHITECTURES[self.arch].sparsity_penalty
        if penalty is None:
            return 0.0
        given = self.l1_coeff if penalty == "l1" else self.l0_coeff
        return given if given is not None else DEFAULT_SPARSITY_COEFF[penalty]

    def learning_rate(self, d_sae: int) -> float:
        # Larger dictionaries want smaller steps (sparsify's 1/sqrt(F) rule); the base
        # is set for short CPU budgets, where a too-small rate never leaves the ground.
        return self.lr if self.lr is not None else 1.6e-3 / math.sqrt(d_sae / 4096)

    def trainable_tokens(self) -> int:
        """``--tokens`` rounded down to whole batches: what a run trains on when data suffices
        (every batch is full; see ``activations.ActivationBuffer``)."""
        return self.tokens // self.batch_size * self.batch_size

    def dead_window(self) -> int:
        if self.dead_after_tokens is not None:
            return self.dead_after_tokens
        return int(min(10_000_000, max(50_000, self.tokens // 10)))

    def pass_settings(self) -> dict[str, Any]:
        """The settings every dictionary trained from one pass over the activations must
        share: the source, the data, the budget and the run's mechanics (everything but
        ``DICTIONARY_FIELDS``)."""
        return {k: v for k, v in self.to_dict().items() if k not in DICTIONARY_FIELDS}

    def checkpoint_interval(self) -> int:
        return self.checkpoint_every if self.checkpoint_every is not None else max(self.tokens // 10, self.batch_size)
