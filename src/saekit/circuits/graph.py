"""A model with dictionaries spliced in, whose feature activations and error terms are nodes.

At every hook point a dictionary writes (a sparse autoencoder's own point, a
transcoder's target), the activation ``x`` is replaced by ``decode(f) + err``, where
``f`` are the dictionary's features and ``err = x − decode(f)`` its error term, both
computed in the same forward pass. The output is the model's own (to float rounding):
nothing is hidden in the error term's absence, so the error terms are nodes of the
graph like the features (Marks et al. 2024, "Sparse Feature Circuits").

For a transcoder, ``f`` is read at its input point and ``err`` lives at its target point;
``decode`` there leaves out a skip transcoder's linear path ``x W_skip``, which is part of
the error node (it is not a feature, and a patch must move it with the input it comes from).

What ``SplicedModel.run`` can do with the nodes, per pass:

* read them: ``run.nodes[point]`` (what was written) and ``run.computed[point]`` (``f`` and
  ``err`` as functions of everything upstream, for edges between nodes);
* set them: ``set_nodes={point: Nodes(...)}``, or a function of the computed nodes
  (patch one feature, interpolate towards a patch run, ablate, gate), which receives them
  undetached, so that without ``track`` a gradient through its result flows upstream;
* differentiate the metric by them: with ``track=True`` each written ``Nodes`` is a leaf
  whose ``.grad`` a backward pass fills. A point whose nodes are computed, not set,
  passes gradients upstream exactly as the model does (``x̂ + err`` is ``x``, so its
  derivative in ``x`` is the identity); one in ``hold`` does not (the upstream nodes'
  influence through it is cut, as edge effects need).

The BOS position, where a dictionary was not trained (``cfg.keep_bos`` False), has no
feature nodes: its whole activation is the error node there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from ..dictionaries import Dictionary
from ..errors import ConfigError, DimensionError, HookPointError


@dataclass(frozen=True)
class Nodes:
    """One hook point's nodes for a batch: ``features`` (B, T, F) and ``error`` (B, T, d)."""

    features: Tensor
    error: Tensor

    def detach(self) -> Nodes:
        return Nodes(self.features.detach(), self.error.detach())

    def leaves(self) -> Nodes:
        """Copies that are leaves of a new autograd graph, to take gradients by."""
        return Nodes(self.features.detach().requires_grad_(), self.error.detach().requires_grad_())

    def lerp(self, other: Nodes, alpha: float) -> Nodes:
        """``self + alpha · (other − self)``: a point on the straight line to ``other``."""
        return Nodes(
            self.features + alpha * (other.features - self.features), self.error + alpha * (other.error - self.error)
        )

    def repeat(self, n: int) -> Nodes:
        return Nodes(self.features.repeat(n, 1, 1), self.error.repeat(n, 1, 1))

    def zeros_like(self) -> Nodes:
        return Nodes(torch.zeros_like(self.features), torch.zeros_like(self.error))


NodeSetting = Union[Nodes, Callable[[Nodes], Nodes]]


@dataclass
class SplicedRun:
    """One forward pass: the logits and, per spliced point, its nodes.

    ``nodes``: what was written (leaves with ``.grad`` after a backward pass when run with
    ``track``). ``computed``: the features and error as computed from the pass (in the
    autograd graph of everything upstream when run with ``track``), also where a function
    then set them to something else; not at points set to fixed ``Nodes`` (nothing is
    computed there).
    """

    logits: Tensor
    nodes: dict[str, Nodes]
    computed: dict[str, Nodes]


@dataclass(frozen=True)
class _Splice:
    dictionary: Dictionary
    reads: str  # where f is computed from
    writes: str  # where decode(f) + err replaces the activation


class SplicedModel:
    """A loaded model and dictionaries at distinct hook points, spliced in per ``run``.

    The dictionaries are checked first, against the model and each other: each must fit
    the model (its hook points exist and have its widths; trained on this model unless
    ``allow_other_model``), they must record the same model, and no two may write the same
    hook point. ``points`` lists the written points in forward order.
    """

    def __init__(self, lm: Any, dictionaries: Sequence[Dictionary], *, allow_other_model: bool = False):
        from ..evaluation import check_dictionary_fits, same_model
        from ..hooks import HookPoint

        dictionaries = list(dictionaries)
        if not dictionaries:
            raise ConfigError("give at least one dictionary to splice into the model")
        for d in dictionaries:
            if not isinstance(d, Dictionary):
                raise ConfigError(f"expected saekit dictionaries (saekit.load), got {type(d).__name__}")
        recorded = [(d.cfg.model, d.cfg.hook) for d in dictionaries if d.cfg.model]
        for model, hook in recorded[1:]:
            if not same_model(model, recorded[0][0]):
                raise DimensionError(
                    f"the dictionaries were trained on different models: the one for {recorded[0][1]} on "
                    f"{recorded[0][0]}, the one for {hook} on {model}; a circuit needs dictionaries of one model"
                )
        splices: dict[str, _Splice] = {}
        for d in dictionaries:
            check_dictionary_fits(d, lm, model_name=None if allow_other_model else lm.name)
            writes = d.cfg.output_hook
            if writes in splices:
                raise HookPointError(
                    f"two dictionaries write {writes}; give one dictionary per hook point (a circuit's nodes at a "
                    "point are one dictionary's features and its error)"
                )
            if d.W_dec.device != lm.device:
                raise ConfigError(
                    f"the dictionary for {writes} is on {d.W_dec.device} but the model on {lm.device}; "
                    "move it first (dictionary.to(lm.device))"
                )
            splices[writes] = _Splice(d, d.cfg.hook, writes)
        order = sorted(splices, key=lambda p: (HookPoint.parse(p), HookPoint.parse(splices[p].reads)))
        self.lm = lm
        self._splices = {p: splices[p] for p in order}

    @property
    def points(self) -> list[str]:
        """The hook points whose nodes this model has, in forward order."""
        return list(self._splices)

    def dictionary(self, point: str) -> Dictionary:
        return self._splice(point).dictionary

    def reads(self, point: str) -> str:
        """Where the features of ``point`` are computed from (a transcoder's input point)."""
        return self._splice(point).reads

    def layer(self, point: str) -> int:
        """The first block a pass must run for ``point``'s nodes (that of its read point)."""
        from ..hooks import HookPoint

        return HookPoint.parse(self.reads(point)).layer

    def _splice(self, point: str) -> _Splice:
        if point not in self._splices:
            raise HookPointError(f"no dictionary writes {point}; this model's nodes are at {', '.join(self._splices)}")
        return self._splices[point]

    def run(
        self,
        input_ids: Tensor,
        *,
        bos: bool = False,
        points: Collection[str] | None = None,
        set_nodes: Mapping[str, NodeSetting] | None = None,
        track: bool = False,
        hold: Collection[str] = (),
        start: tuple[int, Tensor] | None = None,
    ) -> SplicedRun:
        """One forward pass of ``input_ids`` (B, T) with the dictionaries of ``points``
        (default: all) spliced in.

        ``bos``: position 0 is a BOS token (no feature nodes there for dictionaries not
        trained on it). ``set_nodes``: per point, the nodes to write instead of the computed
        ones, or a function from the computed nodes to them (the computed nodes as they are,
        in the autograd graph of everything upstream under grad mode; with ``track`` what it
        returns becomes a leaf all the same). ``track``: the
        written nodes are leaves to take gradients by (see the module doc); ``hold``: points
        whose nodes pass no gradient upstream. ``start=(layer, resid_pre)``: begin at block
        ``layer`` from its cached residual stream (``hooks.skip_to_block``); no spliced
        point may be read before it.

        Runs under the caller's grad mode: wrap it in ``torch.no_grad()`` when no gradient
        is wanted.
        """
        from ..hooks import edit_activations, skip_to_block

        points = [points] if isinstance(points, str) else points
        hold = [hold] if isinstance(hold, str) else hold
        chosen = self.points if points is None else [p for p in self.points if p in set(points)]
        unknown = sorted(set(points or ()) - set(self._splices)) + sorted(
            (set(set_nodes or {}) | set(hold)) - set(chosen))
        if unknown:
            raise HookPointError(f"{unknown[0]} is not a spliced point of this pass; the points are {', '.join(chosen)}")
        if start is not None:
            early = [p for p in chosen if self.layer(p) < start[0]]
            if early:
                raise ConfigError(f"a pass starting at block {start[0]} cannot splice {early[0]}, read before it")
        set_nodes = dict(set_nodes or {})
        nodes: dict[str, Nodes] = {}
        computed: dict[str, Nodes] = {}
        inputs: dict[str, Tensor] = {}
        T = input_ids.shape[1]

        def capture(name: str) -> Callable[[Tensor], Tensor]:
            def keep(a: Tensor) -> Tensor:
                inputs[name] = a
                return a

            return keep

        def splice(point: str) -> Callable[[Tensor], Tensor]:
            s = self._splices[point]
            d = s.dictionary
            no_features = bos and not d.cfg.keep_bos

            def compute(y: Tensor) -> Nodes:
                source = y if s.reads == point else inputs[s.reads]
                f = d.encode(source.float())
                if no_features:
                    keep = torch.ones(T, 1, dtype=f.dtype, device=f.device)
                    keep[0] = 0
                    f = f * keep
                return Nodes(f, y.float() - d.decode(f))

            def apply(y: Tensor) -> Tensor:
                setting = set_nodes.get(point)
                fresh = None if isinstance(setting, Nodes) else compute(y)
                if fresh is not None:
                    computed[point] = fresh
                if setting is None:
                    value = fresh.detach() if track else fresh
                elif isinstance(setting, Nodes):
                    value = setting
                else:
                    # Live, not detached: a pass that differentiates through what the function
                    # returns (the mask's gates) reaches the points upstream through it.
                    value = setting(fresh)
                _check_shape(value, y, d, point)
                if track:
                    value = value.leaves()
                nodes[point] = value
                out = d.decode(value.features) + value.error
                if track and setting is None and point not in hold:
                    out = out + (y - y.detach())  # the model's own derivative upstream: d(x̂ + err)/dx = I
                return out.to(y.dtype)

            return apply

        edits: dict[str, list[Callable[[Tensor], Tensor]]] = {}
        for point in chosen:
            edits.setdefault(point, []).insert(0, splice(point))
        for point in chosen:
            reads = self._splices[point].reads
            if reads != point:
                # After any splice at the same point, so that a transcoder reads the nodes written there.
                edits.setdefault(reads, []).append(capture(reads))

        def chain(fns: list[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
            def apply_all(a: Tensor) -> Tensor:
                for fn in fns:
                    a = fn(a)
                return a

            return apply_all

        skipping = skip_to_block(self.lm, start[0], start[1]) if start is not None else contextlib.nullcontext()
        with _frozen([self._splices[p].dictionary for p in chosen]), edit_activations(
            self.lm, {name: chain(fns) for name, fns in edits.items()}
        ), skipping:
            logits = self.lm.model(input_ids=input_ids.to(self.lm.device), use_cache=False).logits
        missing = [p for p in chosen if p not in nodes]
        if missing:
            raise HookPointError(f"the forward pass never reached {', '.join(missing)}")
        return SplicedRun(logits=logits, nodes=nodes, computed=computed)


def _check_shape(value: Nodes, y: Tensor, d: Dictionary, point: str) -> None:
    want_f = (*y.shape[:-1], d.cfg.d_sae)
    if tuple(value.features.shape) != want_f or tuple(value.error.shape) != tuple(y.shape):
        raise DimensionError(
            f"nodes set at {point} have features {tuple(value.features.shape)} and error {tuple(value.error.shape)}; "
            f"this pass needs {want_f} and {tuple(y.shape)}"
        )


@contextlib.contextmanager
def _frozen(dictionaries: list[Dictionary]) -> Iterator[None]:
    """No gradient for the dictionaries' weights while the block runs (only the nodes'
    are wanted, and a backward pass would otherwise fill ``.grad`` of every weight)."""
    saved = [(p, p.requires_grad) for d in dictionaries for p in d.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
