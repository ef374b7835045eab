"""A dictionary's loss and gradients captured once in a CUDA graph and replayed every step.

At a few thousand tokens a GPU training step is bound by kernel launches, not by
arithmetic: on an H200 a bf16 step at B = 4096 queued about 180 kernels of a few
microseconds each, and the host took longer to queue them than the device to run them
(benchmarks/gpu_profile.py). A CUDA graph (``torch.cuda.graph``) records the forward,
the backward and the decoder-gradient projection once and launches them as one: the
ReLU step at F = 4608 went from 3.0 ms to 1.2 ms, now as long as its kernels, and with
Adam and the bookkeeping 10 launches in all (``GRAPH_MAX_FEATURES`` has the table).

A graph replays fixed kernels on fixed memory, so:

* the batch is copied into the graph's own input tensor, and the step's sparsity
  coefficient and dead-feature mask into its own (the coefficient is a 0-d device
  tensor, which the dictionaries' losses accept);
* the loss, the reconstruction, the activity counts and every parameter's ``.grad``
  come out in the same tensors at every replay (read them before the next one);
* the step runs under ``sparse.static_shapes``: the dense path, and no shape or branch
  that depends on a value read back from the device;
* whether the batch and the loss were finite comes back as flags computed inside the
  graph, read once after the replay, before Adam steps, so a non-finite step raises
  with the weights untouched, as the eager step does.

Adam (fused, a couple of kernels), the decoder renormalisation, dead-feature
bookkeeping and resampling stay outside: they are few launches, or change Python state.
Graphs of one process share one memory pool: a replay's intermediates are dead once it
ends, and each graph's outputs stay its own.
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import torch
from torch import Tensor

from ..dictionaries import Dictionary, LossOutput, LossParams
from ..dictionaries.sparse import static_shapes

# Untimed forward-backward passes on a side stream before the capture, as the CUDA
# graphs documentation asks (they initialise cuBLAS workspaces and autograd's state).
WARMUP_PASSES = 3
# The widest dictionary whose step is graphed, by precision ("bf16" or "none", as
# ``--autocast``) and architecture ("*": the others). A graph needs the dense path, so it
# pays where saekit's step is dense anyway, or where the launches it saves outweigh the
# dense products. Measured on an H200 (benchmarks/gpu_graphs.py: B = 4096, d = 576, ms
# per step, op by op on saekit's own path / replayed from a graph):
#
#   F = 4608,  bf16: relu 3.02/1.23  topk 3.37/2.23  batchtopk 4.30/2.31  gated 4.10/2.54  jumprelu 3.94/2.63
#   F = 9216,  bf16: relu 2.79/1.85  topk 3.71/3.51  batchtopk 4.52/3.95  gated 5.07/4.38  jumprelu 4.47/3.92
#   F = 18432, bf16: relu 5.62/2.93  topk 4.59/6.06  batchtopk 4.94/6.60  gated 7.37/7.74  jumprelu 5.99/7.10
#   F = 4608,  fp32: relu 4.98/3.95  topk 3.56/6.19  batchtopk 4.44/6.46  gated 6.22/5.84  jumprelu 5.26/4.99
#   F = 9216,  fp32: relu 5.61/6.48  topk 4.35/11.5  batchtopk 4.89/11.7  gated 7.11/10.1  jumprelu 6.27/8.83
#   F = 18432, fp32: relu 7.60/12.0  topk 6.46/21.4  batchtopk 7.69/23.0  gated 8.97/18.5  jumprelu 8.19/16.2
#
# Under bf16 the graph wins wherever the step is dense anyway (below
# sparse.SPARSE_MIN_FEATURES_GPU_HALF), and for ReLU, the cheapest dense step, at 32x too.
# In fp32 the TopK family's sparse step (k pairs per token) beats a graphed dense one even
# at 8x; the ReLU-like architectures gain 5-26 % at 8x and lose from 16x on. A dense
# step's time is then mostly its passes over the (B, F) batch, which were cut after this
# table (benchmarks/step_traffic.py, bf16: relu 22 -> 17, topk 45 -> 34, gated 101 -> 47.5,
# jumprelu 72 -> 23.5 tensors' worth): rerun benchmarks/gpu_graphs.py before widening.
GRAPH_MAX_FEATURES: dict[tuple[str, str], int] = {
    ("bf16", "relu"): 32_768,
    ("bf16", "*"): 16_383,
    ("none", "relu"): 6_144,
    ("none", "gated"): 4_608,
    ("none", "jumprelu"): 4_608,
    ("none", "*"): 0,
}

# The pool the graphs of this process share, and the graphs that hold it: once every
# graph on a pool is gone, its handle must not be used for another capture.
_pool: tuple | None = None
_pool_users: "weakref.WeakSet[GraphedObjective]" = weakref.WeakSet()


def graph_pays(device: torch.device, arch: str, n_features: int, autocast: str) -> bool:
    """Whether a dictionary of architecture ``arch`` and ``n_features`` steps faster from a
    CUDA graph on ``device`` under ``autocast`` ("none" or "bf16") than op by op: on CUDA
    devices, up to ``GRAPH_MAX_FEATURES``."""
    widest = GRAPH_MAX_FEATURES.get((autocast, arch), GRAPH_MAX_FEATURES[(autocast, "*")])
    return device.type == "cuda" and n_features <= widest


def _shared_pool(user: "GraphedObjective") -> tuple:
    global _pool
    if _pool is None or not _pool_users:
        _pool = torch.cuda.graph_pool_handle()
    _pool_users.add(user)
    return _pool


class GraphedObjective:
    """``sae``'s training objective and its backward on batches shaped like ``x``
    (and ``target``), captured in a CUDA graph at construction.

    ``params`` holds the step's constant hyper-parameters; its ``sparsity_coeff`` and
    ``dead_mask`` are replaced each step by the values handed to ``__call__``.
    """

    def __init__(self, sae: Dictionary, x: Tensor, target: Tensor | None, params: LossParams, bf16: bool):
        if x.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {x.device}")
        self.sae = sae
        self.bf16 = bf16
        self.x = x.detach().clone()
        self.target = None if target is None else target.detach().clone()
        self.coeff = torch.tensor(float(params.sparsity_coeff), device=x.device)
        self.dead = None if params.dead_mask is None else params.dead_mask.clone()
        self.params = replace(params, sparsity_coeff=self.coeff, dead_mask=self.dead)
        self.parameters = [p for p in sae.parameters() if p.requires_grad]

        device = x.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                sae.zero_grad(set_to_none=True)
                self._pass()
        torch.cuda.current_stream(device).wait_stream(side)
        sae.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=_shared_pool(self)):
            out, self.flags = self._pass()
        self.grads = [p.grad for p in self.parameters]
        # The outputs without their autograd graph, which would keep the capture's
        # gradient accumulators (and its stream) alive for the eager steps' backward.
        self.out = LossOutput(
            out.loss.detach(), out.x_hat.detach(), {name: t.detach() for name, t in out.terms.items()},
            out.fired, out.n_active,
        )

    def _pass(self) -> tuple[LossOutput, Tensor]:
        """Forward, backward and the decoder-gradient projection; the finiteness flags
        (input, target, loss) as one tensor."""
        # autocast's weight cache must be off in a capture (a cast cached in one replay
        # would be stale in the next).
        with static_shapes():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
                out = self.sae(self.x, self.target, self.params)
            out.loss.backward()
            self.sae.remove_parallel_decoder_grad()
        target = self.x if self.target is None else self.target
        flags = torch.stack([torch.isfinite(self.x).all(), torch.isfinite(target).all(), torch.isfinite(out.loss)])
        return out, flags

    def fits(self, x: Tensor, target: Tensor | None) -> bool:
        """Whether this graph can step on ``x`` (and ``target``): same shapes."""
        same_target = (target is None) == (self.target is None) and (
            target is None or target.shape == self.target.shape
        )
        return x.shape == self.x.shape and same_target

    def __call__(
        self, x: Tensor, target: Tensor | None, sparsity_coeff: float, dead_mask: Tensor | None
    ) -> tuple[LossOutput, tuple[bool, bool, bool]]:
        """Replay on ``x`` (scaled, on the device): the loss output (the graph's own
        tensors), and whether the input, the target and the loss were finite. Each
        parameter's ``.grad`` then holds this batch's gradient."""
        self.x.copy_(x)
        if self.target is not None:
            self.target.copy_(target)
        self.coeff.fill_(float(sparsity_coeff))
        if self.dead is not None:
            self.dead.copy_(dead_mask)
        # An eager step in between (a batch of another size) may have dropped the
        # gradients with zero_grad(set_to_none=True): point them back at the graph's.
        for p, g in zip(self.parameters, self.grads):
            p.grad = g
        self.graph.replay()
        x_ok, target_ok, loss_ok = (bool(v) for v in self.flags.tolist())
        return self.out, (x_ok, target_ok, loss_ok)
