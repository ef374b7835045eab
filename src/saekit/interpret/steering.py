"""Interventions with a dictionary's features on a running model.

``steer(lm, interventions)`` is a context manager: while it is open, every forward pass
of ``lm`` (``generate`` included) applies the interventions at their hook points, and
they are undone on exit whatever happens. They compose: several dictionaries and hook
points in one call, and on one point in the order given (nested ``steer`` blocks apply
the outer one first).

* ``AddFeature``: ``x += α · W_dec[i]`` (at every position, chosen positions, or only
  where another feature fires above a threshold: conditional steering).
* ``ClampFeatures``: set features to values. The features are encoded, set, decoded, and
  the error term ``x − x̂`` is kept, so that only those features change; since decoding
  is affine in ``f``, that is exactly ``x += Σ_i (v_i − f_i(x)) · W_dec[i]``.
* ``AblateFeatures``: clamp features to zero, or to given means (the mean ablation).

Only the chosen features are encoded (``Dictionary.encode(x, features=…)``), not the whole
dictionary. A transcoder reads its input point and writes its target point: its
interventions encode the input (read in the same forward pass, which reaches the input
first) and change the target.

Positions count within one forward call: during ``generate`` with a KV cache, each new
token is a call of its own, so position-limited interventions act on the prompt.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, Union

import torch
from torch import Tensor

from ..checks import is_integer
from ..dictionaries import Dictionary
from ..errors import ConfigError, DimensionError

# Where an intervention acts: every position (None), sequence positions (negative ones
# count from the end), or a boolean mask of shape (seq,) or (batch, seq).
Positions = Union[None, Sequence[int], Tensor]
Values = Union[float, Sequence[float], Tensor]


def _feature_list(dictionary: Dictionary, features: int | Sequence[int], what: str) -> list[int]:
    chosen = [features] if isinstance(features, int) else list(features)
    F = dictionary.cfg.d_sae
    if not chosen:
        raise ConfigError(f"{what}: give at least one feature")
    bad = [i for i in chosen if not is_integer(i) or not 0 <= i < F]
    if bad:
        raise ConfigError(f"{what}: feature {bad[0]!r} is not a feature of this dictionary (0 to {F - 1})")
    return chosen


@dataclass(frozen=True)
class AddFeature:
    """``x += scale · W_dec[feature]`` where ``positions`` say, and, with ``when=(j, t)``,
    only where feature j of the same dictionary is above t (conditional steering)."""

    dictionary: Dictionary
    feature: int
    scale: float
    positions: Positions = None
    when: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        _feature_list(self.dictionary, self.feature, "AddFeature")
        if not math.isfinite(self.scale):
            raise ConfigError(f"AddFeature: the scale must be a finite number, got {self.scale}")
        if self.when is not None:
            _feature_list(self.dictionary, self.when[0], "AddFeature(when=...)")

    def change(self, read: Tensor, write: Tensor) -> Tensor:
        delta = self.scale * self.dictionary.W_dec[self.feature].to(write.dtype)
        out = delta.expand_as(write)
        if self.when is not None:
            j, threshold = self.when
            fires = self.dictionary.encode(read, features=torch.tensor([j], device=read.device))[..., 0] > threshold
            out = out * fires[..., None].to(write.dtype)
        return out


@dataclass(frozen=True)
class ClampFeatures:
    """Set ``features`` to ``values`` (one number, one per feature, or a tensor that
    broadcasts to (batch, seq, n_features)), keeping the dictionary's error term."""

    dictionary: Dictionary
    features: int | Sequence[int]
    values: Values
    positions: Positions = None
    # ``features`` checked and listed once, when built (not on every forward pass).
    indices: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(_feature_list(self.dictionary, self.features, type(self).__name__)))

    def targets(self, f: Tensor) -> Tensor:
        return torch.as_tensor(self.values, dtype=f.dtype, device=f.device).expand_as(f)

    def change(self, read: Tensor, write: Tensor) -> Tensor:
        idx = torch.tensor(self.indices, device=read.device)
        f = self.dictionary.encode(read, features=idx)
        return (self.targets(f) - f) @ self.dictionary.W_dec[idx].to(f.dtype)


@dataclass(frozen=True)
class AblateFeatures(ClampFeatures):
    """Clamp ``features`` to zero, or with ``mean`` (one value per feature of the whole
    dictionary, e.g. their mean activations over a corpus) to their means."""

    values: Values = 0.0
    mean: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mean is not None and tuple(self.mean.shape) != (self.dictionary.cfg.d_sae,):
            raise DimensionError(
                f"AblateFeatures: mean must hold one value per feature ({self.dictionary.cfg.d_sae}), "
                f"got shape {tuple(self.mean.shape)}"
            )

    def targets(self, f: Tensor) -> Tensor:
        if self.mean is None:
            return torch.zeros_like(f)
        return self.mean[list(self.indices)].to(f.dtype).to(f.device).expand_as(f)


Intervention = Union[AddFeature, ClampFeatures, AblateFeatures]


def _mask(positions: Positions, like: Tensor) -> Tensor | None:
    """(batch, seq, 1) where an intervention acts, or None for everywhere."""
    if positions is None:
        return None
    batch, seq = like.shape[0], like.shape[1]
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        mask = positions.to(like.device)
        if mask.shape[-1] != seq or mask.ndim not in (1, 2) or (mask.ndim == 2 and mask.shape[0] not in (1, batch)):
            raise DimensionError(
                f"a positions mask of shape {tuple(mask.shape)} does not fit activations of (batch {batch}, seq {seq})"
            )
        return mask.expand(batch, seq)[..., None]
    chosen = [int(p) for p in (positions.tolist() if isinstance(positions, Tensor) else positions)]
    bad = [p for p in chosen if not -seq <= p < seq]
    if bad:
        raise ConfigError(f"position {bad[0]} is outside this forward pass's {seq} positions")
    mask = torch.zeros(seq, dtype=torch.bool, device=like.device)
    mask[chosen] = True
    return mask.expand(batch, seq)[..., None]


@contextlib.contextmanager
def steer(lm: Any, interventions: Intervention | Sequence[Intervention], allow_other_model: bool = False) -> Iterator[None]:
    """Apply ``interventions`` to every forward pass of ``lm`` while the block runs.

    Each dictionary is checked against the model first (its hook points exist and have
    its widths; it was trained on this model unless ``allow_other_model``).
    """
    from ..evaluation import check_dictionary_fits
    from ..hooks import edit_activations

    items = [interventions] if not isinstance(interventions, (list, tuple)) else list(interventions)
    for item in items:
        if not isinstance(item, (AddFeature, ClampFeatures)):
            raise ConfigError(f"steer takes AddFeature, ClampFeatures or AblateFeatures, got {type(item).__name__}")
        check_dictionary_fits(item.dictionary, lm, model_name=None if allow_other_model else lm.name)

    # A transcoder reads its input point, earlier in the pass than the target it changes:
    # an identity edit there keeps the input for the edits at the target.
    seen: dict[str, Tensor] = {}
    edits: dict[str, list[Callable[[Tensor], Tensor]]] = {}
    for item in items:
        cfg = item.dictionary.cfg
        read_at, write_at = cfg.hook, (cfg.output_hook)
        if read_at != write_at and read_at not in edits:

            def keep(a: Tensor, name: str = read_at) -> Tensor:
                seen[name] = a
                return a

            edits.setdefault(read_at, []).insert(0, keep)

        def apply(a: Tensor, item: Intervention = item, read_at: str = read_at, write_at: str = write_at) -> Tensor:
            # Differentiable (in the activations and the weights), for attribution through an intervention.
            source = a if read_at == write_at else seen[read_at]
            delta = item.change(source.float(), a.float())
            mask = _mask(item.positions, a)
            if mask is not None:
                delta = delta * mask.to(delta.dtype)
            return a + delta.to(a.dtype)

        edits.setdefault(write_at, []).append(apply)

    def chain(fns: list[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
        def run(a: Tensor) -> Tensor:
            for fn in fns:
                a = fn(a)
            return a

        return run

    with edit_activations(lm, {name: chain(fns) for name, fns in edits.items()}):
        try:
            yield
        finally:
            seen.clear()


@dataclass
class SteeredGeneration:
    """A prompt's continuation without and with interventions (same sampling seed)."""

    prompt: str
    without: str
    steered: str
    new_tokens: int


def generate_with_and_without(
    lm: Any, prompt: str, interventions: Intervention | Sequence[Intervention], *, max_new_tokens: int = 40,
    temperature: float = 0.0, seed: int = 0, allow_other_model: bool = False,
) -> SteeredGeneration:
    """Continue ``prompt`` twice, without and with ``interventions``: greedily at
    ``temperature`` 0, else sampled with the same ``seed`` both times, so that the
    interventions are the only difference."""
    if max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"the temperature must be zero (greedy) or positive, got {temperature}")
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(lm.device)
    if ids.shape[1] == 0:
        raise ConfigError("the prompt is empty")
    if ids.shape[1] + max_new_tokens > lm.max_length:
        raise ConfigError(
            f"the prompt ({ids.shape[1]} tokens) and {max_new_tokens} new tokens exceed the model's "
            f"{lm.max_length}-token context; shorten the prompt or lower --max-new-tokens"
        )
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id

    def continuation() -> str:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    pad_token_id=pad, **sampling)
        return lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    without = continuation()
    with steer(lm, interventions, allow_other_model=allow_other_model):
        steered = continuation()
    return SteeredGeneration(prompt, without, steered, max_new_tokens)


@dataclass
class ScaleSweep:
    """Next-token log-probabilities after a prompt, per steering scale (rows) and watched
    token (columns)."""

    prompt: str
    feature: int
    scales: list[float]
    tokens: list[str]
    logprobs: list[list[float]]


@torch.no_grad()
def scale_sweep(
    lm: Any, prompt: str, dictionary: Dictionary, feature: int, scales: Sequence[float],
    tokens: Sequence[str] | None = None, allow_other_model: bool = False,
) -> ScaleSweep:
    """For each scale α, the log-probability of each watched token being the next token
    after ``prompt`` with ``α · W_dec[feature]`` added at every position.

    ``tokens`` are strings that must each be one token of the model's vocabulary (say
    ``" Paris"`` with its leading space); by default, the three likeliest next tokens
    without steering and the three likeliest at the largest scale.
    """
    scales = [float(a) for a in scales]
    if not scales or not all(math.isfinite(a) for a in scales):
        raise ConfigError(f"give one or more finite scales to sweep, got {scales}")
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(lm.device)
    if ids.shape[1] == 0 or ids.shape[1] > lm.max_length:
        raise ConfigError(f"the prompt must have 1 to {lm.max_length} tokens, it has {ids.shape[1]}")

    def next_logprobs(alpha: float) -> Tensor:
        with steer(lm, AddFeature(dictionary, feature, alpha), allow_other_model=allow_other_model):
            return torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].float(), dim=-1)

    rows = [next_logprobs(a) for a in scales]
    if tokens is None:
        clean = next_logprobs(0.0)
        picked = dict.fromkeys(clean.topk(3).indices.tolist() + rows[max(range(len(scales)), key=lambda i: abs(scales[i]))].topk(3).indices.tolist())
        token_ids = list(picked)
        names = [lm.tokenizer.decode([t]) for t in token_ids]
    else:
        token_ids, names = [], list(tokens)
        for text in tokens:
            pieces = lm.tokenizer.encode(text, add_special_tokens=False)
            if len(pieces) != 1:
                raise ConfigError(
                    f"{text!r} is {len(pieces)} tokens of this model ({[lm.tokenizer.decode([p]) for p in pieces]}), "
                    "not one; watch single tokens (mind the leading space, e.g. ' Paris')"
                )
            token_ids.append(pieces[0])
    return ScaleSweep(prompt, feature, scales, names, [[float(r[t]) for t in token_ids] for r in rows])
