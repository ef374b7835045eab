"""Mean ablation: what an ablated node becomes, for faithfulness and for the mask baseline.

Faithfulness (``faithfulness``) and the learned mask (``mask``) both set the nodes outside
a circuit to their means; their curves compare like for like only under the same means,
so both take a ``MeanAblation`` from here. It holds, per hook point, the mean features and
error term:

* ``from_data``: per aligned position (positions aligned at the end of the prompts, as
  everywhere in ``circuits``) over the prompts of the file. By default over the **patch**
  prompts when the file has them, else over the clean ones. That is the convention of
  Marks et al.'s code (github.com/saprmarks/feature-circuits, ``ablation.py``: the
  ablation values are the mean of the patch run's states, the clean run's when there is
  no patch), and it matters: a file whose clean prompts are all of one kind (singular
  subjects, say) ablated to the clean means leaves every ablated node at the clean
  prompts' typical value, so ``m(∅)`` stays near ``m(M)`` and the gap
  ``m(M) − m(∅)`` that faithfulness divides by is tiny and noisy. Patch means put
  ``m(∅)`` near the counterfactual's metric, so faithfulness reads as the share of the
  behaviour the circuit carries. ``prompts="clean"`` or ``"both"`` choose otherwise.
* ``from_batches``: pooled over the tokens of a reference corpus, the BOS position apart,
  for prompts of any length.

``active`` (``from_data`` only) records, per aligned position, which features are nonzero
on some clean prompt or some averaged prompt: a feature that is zero on every one of them
has mean zero and is zero when computed, so keeping or ablating it is the same on the
file's prompts (the mask gives such features no gate).

A ``MeanAblation`` is also a ``PatchSource``, so node effects can be taken against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .attribution import check_inputs
from .data import CircuitBatch, CircuitData
from .graph import Nodes, SplicedModel
from .metrics import Metric

MeanPrompts = Literal["patch", "clean", "both"]


class MeanAblation:
    """Mean node values per hook point, as patch values for every node.

    ``means[point]``: ``Nodes`` with features ``(P, F)`` and error ``(P, d)``. ``pooled``
    False: ``P`` is the data's number of positions, aligned at the end (row ``P − 1`` is
    the last token). ``pooled`` True: row 0 is the mean at the BOS position and row 1 the
    mean over every other token, for prompts of any length. ``active[point]``: ``(P, F)``
    bool, the features nonzero at that position on some prompt (None when not recorded).
    ``prompts``: which prompts were averaged (``"corpus"`` for pooled means).
    """

    def __init__(self, means: dict[str, Nodes], pooled: bool, name: str = "mean ablation", *,
                 active: dict[str, Tensor] | None = None, prompts: str = "clean"):
        if not means:
            raise ConfigError("mean ablation needs the means of at least one hook point")
        for p, m in means.items():
            if m.features.ndim != 2 or m.error.ndim != 2 or m.features.shape[0] != m.error.shape[0]:
                raise ConfigError(f"{p}: means must be features (P, F) and error (P, d), got "
                                  f"{tuple(m.features.shape)} and {tuple(m.error.shape)}")
            if pooled and m.features.shape[0] != 2:
                raise ConfigError(f"{p}: pooled means have two rows (BOS, other tokens), got {m.features.shape[0]}")
        if active is not None:
            for p, m in means.items():
                a = active.get(p)
                if a is None or a.dtype != torch.bool or a.shape != m.features.shape:
                    raise ConfigError(f"{p}: active features must be a bool tensor of the feature means' shape")
        self.means, self.pooled, self.name, self.active, self.prompts = means, pooled, name, active, prompts

    @property
    def points(self) -> list[str]:
        return list(self.means)

    @property
    def n_positions(self) -> int:
        """The aligned positions the means cover (per-position means only)."""
        if self.pooled:
            raise ConfigError("these means are pooled over a corpus, not per aligned position")
        return int(next(iter(self.means.values())).features.shape[0])

    @classmethod
    def from_data(cls, model: SplicedModel, data: CircuitData, batch_size: int = 8, prompts: MeanPrompts | None = None,
                  progress: ProgressCallback | None = None) -> MeanAblation:
        """Each node's mean over the prompts of ``data``, per aligned position (over the
        examples long enough to have it). ``prompts``: ``"patch"`` (the default when the
        file has patch prefixes, see the module doc for why), ``"clean"`` (the default
        without), or ``"both"``. Also records ``active`` over the clean prompts and the
        averaged ones."""
        check_inputs(model, data, batch_size, "mean ablation",
                     "need them aligned: mean ablation averages the prompts position by position")
        prompts = prompts or ("patch" if data.has_patch else "clean")
        if prompts not in ("patch", "clean", "both"):
            raise ConfigError(f"prompts must be 'patch', 'clean' or 'both', got {prompts!r}")
        if prompts != "clean" and not data.has_patch:
            raise DataError(f"{data.source}: no patch_prefix to average; take the means over the clean prompts "
                            "(prompts='clean')")
        T, dev = data.max_length, model.lm.device
        sums: dict[str, Nodes] = {}
        active: dict[str, Tensor] = {}
        counts = torch.zeros(T, 1, dtype=torch.float64, device=dev)
        phase = Phase(progress, "mean ablation: node means", len(data), unit="ex")
        with torch.no_grad():
            for batch in data.batches(batch_size):
                batch = batch.to(dev)
                start = T - batch.length
                # The clean prompts always run, for ``active``; averaged when asked.
                runs = [(batch.clean_ids, prompts != "patch")]
                if prompts != "clean":
                    runs.append((batch.patch_ids, True))
                for ids, averaged in runs:
                    run = model.run(ids, bos=batch.bos)
                    for p, n in run.computed.items():
                        if p not in sums:
                            sums[p] = Nodes(torch.zeros(T, n.features.shape[-1], dtype=torch.float64, device=dev),
                                            torch.zeros(T, n.error.shape[-1], dtype=torch.float64, device=dev))
                            active[p] = torch.zeros(T, n.features.shape[-1], dtype=torch.bool, device=dev)
                        active[p][start:] |= (n.features != 0).any(0)
                        if averaged:
                            sums[p].features[start:] += n.features.double().sum(0)
                            sums[p].error[start:] += n.error.double().sum(0)
                    if averaged:
                        counts[start:] += batch.size
                phase.advance(batch.size)
        # Every position is reached by the longest prompt, so no count is zero.
        which = {"patch": "patch prompts", "clean": "clean prompts", "both": "clean and patch prompts"}[prompts]
        return cls({p: Nodes((s.features / counts).float(), (s.error / counts).float()) for p, s in sums.items()},
                   pooled=False, name=f"mean ablation (over the examples' {which})", active=active, prompts=prompts)

    @classmethod
    def from_batches(cls, model: SplicedModel, batches: Iterable[Any], progress: ProgressCallback | None = None
                     ) -> MeanAblation:
        """Each node's mean over the tokens of a reference corpus: ``batches`` of
        ``saekit.data.TokenBatch`` (``document_batches``, ``ContextStream``), padding left
        out, the BOS position apart."""
        sums: dict[str, Nodes] = {}
        counts = torch.zeros(2, 1, dtype=torch.float64)
        phase = Phase(progress, "mean ablation: corpus means", None, unit="tok")
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(model.lm.device)
                bos = bool(batch.bos_mask.any())
                run = model.run(batch.input_ids, bos=bos)
                rows = [batch.bos_mask, batch.token_mask(keep_bos=False)]
                for p, n in run.computed.items():
                    if p not in sums:
                        sums[p] = Nodes(torch.zeros(2, n.features.shape[-1], dtype=torch.float64),
                                        torch.zeros(2, n.error.shape[-1], dtype=torch.float64))
                    for r, mask in enumerate(rows):
                        sums[p].features[r] += n.features[mask].double().sum(0).cpu()
                        sums[p].error[r] += n.error[mask].double().sum(0).cpu()
                for r, mask in enumerate(rows):
                    counts[r] += float(mask.sum())
                phase.advance(int(batch.token_mask(keep_bos=True).sum()))
        if not sums or counts[1] == 0:
            raise DataError("the reference corpus gave no tokens to take means over")
        counts = counts.clamp(min=1)
        dev = model.lm.device
        return cls({p: Nodes((s.features / counts).float().to(dev), (s.error / counts).float().to(dev))
                    for p, s in sums.items()}, pooled=True, name="mean ablation (over a reference corpus)",
                   prompts="corpus")

    def check_fits(self, model: SplicedModel, data: CircuitData | None = None) -> None:
        """Refuse means taken for other hook points, dictionaries of other widths, or (per
        aligned position) prompts of another length than ``data``'s."""
        missing = [p for p in model.points if p not in self.means]
        if missing:
            raise ConfigError(f"the mean ablation has no means for {', '.join(missing)}; take them with this model "
                              "(MeanAblation.from_data(model, data))")
        for p in model.points:
            if self.means[p].features.shape[1] != model.dictionary(p).cfg.d_sae:
                raise ConfigError(f"{p}: these means are for a dictionary of another width; take them with this model")
        if data is not None and not self.pooled and self.n_positions != data.max_length:
            raise ConfigError(f"these means cover {self.n_positions} positions, the prompts {data.max_length}; "
                              "take them on these prompts (MeanAblation.from_data(model, data))")

    def nodes_for(self, model: SplicedModel, batch: CircuitBatch) -> dict[str, Nodes]:
        """The means as ``(B, T, ·)`` nodes for ``batch``, at every point of ``model``."""
        self.check_fits(model)
        B, L = batch.size, batch.length
        out = {}
        for p in model.points:
            m = self.means[p]
            if self.pooled:
                pick = torch.ones(L, dtype=torch.long, device=m.features.device)
                if batch.bos:
                    pick[0] = 0
                f, e = m.features[pick], m.error[pick]
            else:
                if L > m.features.shape[0]:
                    raise DataError(f"these means cover {m.features.shape[0]} positions; the prompts have {L}")
                f, e = m.features[-L:], m.error[-L:]
            out[p] = Nodes(f.expand(B, -1, -1), e.expand(B, -1, -1))
        return out

    def states(self, model: SplicedModel, batch: CircuitBatch, clean: dict[str, Nodes], metric: Metric
               ) -> tuple[dict[str, Nodes], Tensor | None]:
        return self.nodes_for(model, batch), None
