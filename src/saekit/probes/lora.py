"""A stronger baseline than a frozen probe: a linear head trained jointly with LoRA adapters.

A probe on frozen activations trains d + 1 numbers. A method that beats it may do so only
because it optimises more of them; this baseline lets the model's own weights move too,
through low-rank adapters (LoRA, via ``peft``) on the blocks below the hook point, trained
together with a linear head on the activation at the probe's token. Its held-out accuracy
and AUROC are reported beside a frozen logistic probe's on the identical split (the split
of ``saekit probe train``, from ``ProbeRun``), with how many parameters each trained.

Details that matter:

- The adapters go on every linear layer of the blocks before the hook's block, and of the
  hook's block too when the hook is at its output (``resid_post``, ``mlp_out``): exactly
  the blocks that can change the activation read (``layers_to_transform``). For
  ``attn_out`` and ``mlp_in`` (mid-block) the hook's own block gets none.
- The head reads the activation standardised by the training statements' mean and
  deviation (fixed before training), so one learning rate suits any activation scale; by
  default it starts from the frozen logistic probe, so training starts where the frozen
  baseline ends. It is saved unstandardised, as an ordinary probe file.
- Merging (``merge_and_unload``) folds the adapters into the weights, so inference needs
  neither peft nor any extra computation; the scores of the merged model are compared
  with the adapter model's on the held-out statements (``merged_max_diff``). The model is
  renamed after merging, so the activation cache never serves the original model's
  activations for the changed one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .activations import Position, padded_batches, statement_activations, statement_rows, tokenize_statements
from .datasets import TruthDataset
from .metrics import ProbeScore, accuracy, auroc
from .training import HELD_OUT, ProbeRun, run_probe, training_split

logger = logging.getLogger(__name__)

PEFT_INSTALL = "pip install 'saekit[probes]'"
_OUTPUT_SITES = ("resid_post", "mlp_out")  # sites at a block's output: the whole block comes before them


def require_peft() -> Any:
    """The ``peft`` module, or a ConfigError that names the extra to install."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"the LoRA baseline needs the package peft; install it with: {PEFT_INSTALL}") from None
    return peft


@dataclass(frozen=True)
class LoraSettings:
    """What to train: the adapters' rank and scale, and the optimisation."""

    rank: int = 8
    alpha: float | None = None  # LoRA's scale numerator (the update is alpha/rank · BA); default 2·rank
    epochs: int = 3
    max_steps: int | None = None  # stop after this many steps even within an epoch
    lr: float = 2e-4
    batch_size: int = 16
    weight_decay: float = 0.0
    init: str = "logistic"  # the head's start: the frozen logistic probe, or "zero"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"the LoRA rank must be at least 1, not {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"the LoRA alpha must be positive, not {self.alpha}")
        if self.epochs < 1:
            raise ConfigError(f"train for at least one epoch, not {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, not {self.max_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"the learning rate must be a positive number, not {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"the batch size must be at least 1, not {self.batch_size}")
        if self.weight_decay < 0:
            raise ConfigError(f"the weight decay must be >= 0, not {self.weight_decay}")
        if self.init not in ("logistic", "zero"):
            raise ConfigError(f"the head starts from 'logistic' (the frozen probe) or 'zero', not {self.init!r}")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank


def adapter_layers(lm: Any, hook: str) -> list[int]:
    """The blocks whose adapters can change the activation at ``hook``."""
    from ..hooks import resolve_hook_point

    point = resolve_hook_point(lm, hook)
    layers = list(range(point.layer + 1 if point.site in _OUTPUT_SITES else point.layer))
    if not layers:
        raise ConfigError(f"{hook} comes before every block's weights, so no adapter can change it; choose a later "
                          "hook point (e.g. resid_post.0)")
    return layers


def target_modules(lm: Any) -> list[str]:
    """Names, relative to a block, of the block's linear layers (what LoRA adapts)."""
    from torch import nn

    from ..hooks import transformer_blocks

    kinds: tuple[type, ...] = (nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2 writes its linear layers this way

        kinds += (Conv1D,)
    except ImportError:
        pass
    block = transformer_blocks(lm)[0]
    names = sorted(name for name, module in block.named_modules() if name and isinstance(module, kinds))
    if not names:
        raise ConfigError(f"{lm.name}: its blocks have no linear layers for LoRA to adapt")
    return names


class LoraHead(torch.nn.Module):
    """score(x) = w · (x − mean) / std + b, with mean and std fixed from the training statements."""

    def __init__(self, mean: Tensor, std: Tensor, weight: Tensor, bias: float):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())
        self.weight = torch.nn.Parameter(weight.float().clone())
        self.bias = torch.nn.Parameter(torch.tensor(float(bias)))

    def forward(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight + self.bias

    def raw(self) -> tuple[Tensor, float]:
        """The same linear function on unstandardised activations: (weight, bias)."""
        w = (self.weight / self.std).detach()
        return w, float(self.bias.detach() - w @ self.mean)


@dataclass
class LoraResult:
    """The LoRA head's figures beside the frozen logistic probe's, on the same held-out split."""

    hook: str
    position: str
    rank: int
    lora_alpha: float
    adapter_layers: list[int]
    target_modules: list[str]
    n_train: int
    n_test: int
    steps: int
    epochs: int
    wall_s: float
    lora: ProbeScore
    frozen: ProbeScore
    lora_train_accuracy: float
    adapter_parameters: int
    head_parameters: int
    frozen_parameters: int
    losses: list[float] = field(default_factory=list)  # mean training loss of each epoch
    merged_max_diff: float | None = None  # max |score| difference, merged model against adapters

    @property
    def lora_parameters(self) -> int:
        return self.adapter_parameters + self.head_parameters

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lora_parameters": self.lora_parameters}


class LoraProbe:
    """A trained head on a model carrying LoRA adapters (or, after ``merge``, merged weights)."""

    def __init__(self, lm: Any, peft_model: Any, head: LoraHead, hook: str, position: Position):
        self.lm, self.peft_model, self.head, self.hook, self.position = lm, peft_model, head, hook, position
        self.merged = False

    def batch_scores(self, encoded: Sequence[tuple[list[int], int, int]]) -> Tensor:
        """Head scores (B,) for tokenized statements, with autograd on."""
        from ..hooks import read_activations

        _, ids, mask = next(padded_batches(self.lm.tokenizer, encoded, len(encoded)))  # one batch
        acts = read_activations(self.lm, [self.hook], ids, mask)[self.hook]
        x = statement_rows(acts, [(s, e) for _, s, e in encoded], self.position)
        return self.head(x.to(self.head.mean.device)).float().cpu()

    def scores(self, statements: Sequence[str], batch_size: int = 32) -> Tensor:
        """Head scores (N,) of ``statements`` (positive: true)."""
        encoded = tokenize_statements(self.lm.tokenizer, statements, self.lm.max_length, self.position)
        with torch.no_grad():
            return torch.cat([self.batch_scores(encoded[b:b + batch_size]) for b in range(0, len(encoded), batch_size)])

    def merge(self) -> None:
        """Fold the adapters into the model's weights (peft's ``merge_and_unload``)."""
        if self.merged:
            return
        self.lm.model = self.peft_model.merge_and_unload()
        self.lm.model.requires_grad_(False)
        w, b = self.head.raw()
        digest = hashlib.sha256(w.numpy().tobytes() + repr(b).encode()).hexdigest()[:12]
        self.lm.name = f"{self.lm.name}+lora-{self.hook}-{digest}"  # a new activation-cache key
        self.merged = True

    def save(self, folder: str | Path, info: dict[str, Any] | None = None) -> tuple[Path, Path]:
        """Write the merged model (``folder/model``, loadable by ``load_model`` without peft) and
        the head (``folder/head.safetensors``, a probe file ``load_probe`` reads); merges first."""
        import shutil

        from ..io.files import make_folder
        from .probes import LogisticRegressionProbe

        self.merge()
        folder = make_folder(Path(folder), "--save")
        model_dir = folder / "model"
        tmp = folder / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.lm.model.save_pretrained(tmp)
            self.lm.tokenizer.save_pretrained(tmp)
            shutil.rmtree(model_dir, ignore_errors=True)
            tmp.rename(model_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        weight, bias = self.head.raw()
        probe = LogisticRegressionProbe()
        probe._set(weight.double(), bias, weight.double())
        head_path = folder / "head.safetensors"
        probe.save(head_path, info={**(info or {}), "model": str(model_dir.resolve()), "hook": self.hook,
                                    "position": self.position})
        return model_dir, head_path


def train_lora_probe(lm: Any, settings: LoraSettings, datasets: Sequence[TruthDataset], hook: str,
                     run: ProbeRun | None = None, *, merge: bool = True, cache_dir: str | Path | None = None,
                     use_cache: bool = True, progress: ProgressCallback | None = None) -> tuple[LoraResult, LoraProbe]:
    """Fit a frozen logistic probe and a LoRA-adapted head on the same split; score both.

    ``run`` gives the token position, the held-out fraction and the seed (its probe is
    ignored: the frozen baseline is logistic regression with ``run.params``). The model is
    changed: it carries adapters, merged into its weights when ``merge`` (and renamed so
    the activation cache keeps them apart).
    """
    peft = require_peft()
    run = run or ProbeRun(probe="logistic")
    frozen_run = ProbeRun(probe="logistic", params=run.params if run.probe == "logistic" else {},
                          position=run.position, centre=False, test_fraction=run.test_fraction, seed=run.seed)
    layers = adapter_layers(lm, hook)
    modules = target_modules(lm)
    labels, train_idx, test_idx = training_split(frozen_run, datasets)
    statements = [s for ds in datasets for s in ds.statements]
    encoded = tokenize_statements(lm.tokenizer, statements, lm.max_length, frozen_run.position)

    # The frozen baseline first, while the model is still untouched.
    frozen = run_probe(lm, frozen_run, datasets, [hook], cache_dir=cache_dir, use_cache=use_cache,
                       progress=progress)[0]
    if frozen.n_train != len(train_idx):
        raise DataError("the LoRA split differs from the frozen probe's; this is a bug in saekit")
    X = torch.cat([statement_activations(lm, ds, [hook], frozen_run.position, cache_dir=cache_dir,
                                         use_cache=use_cache)[hook] for ds in datasets])
    train_X = X[train_idx].double()
    mean, std = train_X.mean(0), train_X.std(0).clamp_min(1e-6)
    if settings.init == "logistic":
        head = LoraHead(mean, std, frozen.probe.weight.double() * std, frozen.probe.bias + float(frozen.probe.weight.double() @ mean))
    else:
        head = LoraHead(mean, std, torch.zeros_like(mean), 0.0)
    head.to(lm.device)

    torch.manual_seed(settings.seed)  # LoRA's A matrices start random
    config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0, bias="none",
                             target_modules=modules, layers_to_transform=layers)
    with warnings.catch_warnings():  # transformers' deprecation notices about peft's own calls
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = peft.get_peft_model(lm.model, config)
    adapters = [p for p in peft_model.parameters() if p.requires_grad]
    adapter_parameters = sum(p.numel() for p in adapters)
    probe = LoraProbe(lm, peft_model, head, hook, frozen_run.position)
    optimizer = torch.optim.AdamW(adapters + list(head.parameters()), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    y = labels.float()
    per_epoch = math.ceil(len(train_idx) / settings.batch_size)
    total = per_epoch * settings.epochs if settings.max_steps is None else min(settings.max_steps,
                                                                                per_epoch * settings.epochs)
    phase = Phase(progress, f"LoRA r={settings.rank} at {hook}", total, unit="steps")
    generator = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    step, epochs_run = 0, 0
    started = time.perf_counter()
    with torch.enable_grad():
        while step < total:
            order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator).tolist()]
            epoch_losses = []
            for begin in range(0, len(order), settings.batch_size):
                rows = order[begin:begin + settings.batch_size]
                scores = probe.batch_scores([encoded[i] for i in rows])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, y[rows])
                if not torch.isfinite(loss):
                    raise DataError(f"the LoRA training loss became {float(loss)} at step {step}; lower --lr")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                epoch_losses.append(float(loss.detach()))
                step += 1
                phase.advance(1)
                if step >= total:
                    break
            epochs_run += 1
            losses.append(sum(epoch_losses) / len(epoch_losses))
    wall = time.perf_counter() - started
    peft_model.eval()

    held = [statements[i] for i in test_idx]
    held_scores = probe.scores(held)
    train_scores = probe.scores([statements[i] for i in train_idx])
    lora_score = ProbeScore(HELD_OUT, len(test_idx), accuracy(held_scores, labels[test_idx]),
                            auroc(held_scores, labels[test_idx]))
    result = LoraResult(
        hook=hook, position=str(frozen_run.position), rank=settings.rank, lora_alpha=settings.lora_alpha,
        adapter_layers=layers, target_modules=modules, n_train=len(train_idx), n_test=len(test_idx), steps=step,
        epochs=epochs_run, wall_s=wall, lora=lora_score, frozen=frozen.scores[0],
        lora_train_accuracy=accuracy(train_scores, labels[train_idx]), adapter_parameters=adapter_parameters,
        head_parameters=head.weight.numel() + 1, frozen_parameters=int(frozen.probe.weight.numel()) + 1,
        losses=losses)
    if merge:
        probe.merge()
        result.merged_max_diff = float((probe.scores(held) - held_scores).abs().max())
    logger.info("LoRA r=%d at %s: %d steps in %.1f s, held-out accuracy %.3f (frozen %.3f)", settings.rank, hook,
                step, wall, lora_score.accuracy, frozen.scores[0].accuracy)
    return result, probe
