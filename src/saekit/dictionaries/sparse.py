"""Training kernels that touch only the active (token, feature) pairs of a batch.

A dense training step costs about 10·d·F FLOPs per token: the encoder's forward
product (2dF), the decoder's forward (2dF) and backward (4dF), and the encoder's
backward (2dF for ∂W_enc, 2dF more for the input gradient autograd forms to give
``b_dec`` its share). Only the encoder's forward is inherently dense: the
architecture needs every pre-activation to decide which features fire. Everything
after that decision runs here on the active pairs only:

* ``sparse_decode``: ``x̂ = f W_dec`` for a sparse ``f``, and its backward
  (``∂f`` on the active pairs, ``∂W_dec = fᵀ ∂x̂``), each O(nnz · d).
* ``pre_acts_at``: the pre-activations at the active pairs, whose backward gives
  ``∂W_enc = (x − b_dec)ᵀ G`` for the sparse gradient G, ``∂b_enc`` as G's column
  sums, and ``∂b_dec = −W_enc (Σ_b G_b)``: the gradient of
  ``Σ_b G_b · ((x_b − b_dec) W_enc)`` with the batch summed first, a matrix–vector
  product instead of the (B, F)·(F, d) input gradient.
* ``dense_pre_acts``: the dense-path encoder with that same ``b_dec`` shortcut, for
  batches too dense for the sparse kernels and for GPUs, where dense products are cheap
  enough that the sparse kernels pay only for wide dictionaries (``sparse_cutover``).

The kernels were chosen by timing the candidates (fastest of 5 runs, 2 threads of a
shared AVX-512 AMD EPYC) at B = 4096, d = 576, F = 4608, k = 32;
benchmarks/step_kernels.py times whole steps:

* decode forward: ``embedding_bag(mode="sum", per_sample_weights)`` 10 ms; CSR
  ``torch.sparse.mm`` 70 ms; gather + bmm 240 ms.
* the sampled products ``∂f_bi = ∂x̂_b · W_dec[i]``: ``torch.sparse.sampled_addmm``
  14 ms; chunked gather and multiply-sum 63 ms; gather + bmm 220–500 ms; the dense
  product then gather 140 ms. ``sampled_addmm`` has no bf16/fp16 CPU kernel, so
  those dtypes and other devices use the chunked gather (a GPU gathers at full
  memory bandwidth).
* ``∂W = Σ values ⊗ rows`` into feature rows: sort the pairs by feature once per
  pattern (2 ms; ``_stable_order`` says why numpy sorts on CPU), then
  ``embedding_bag`` with per-feature offsets 5 ms; CSR-transpose ``mm`` 39 ms
  (136 ms unsorted); chunked ``index_add_`` 145 ms.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F_nn
from torch import Tensor

# Below this fraction of active (token, feature) pairs the ReLU-like architectures
# (ReLU, gated, JumpReLU) take the sparse kernels, above it the dense path. Measured
# with `python benchmarks/step_kernels.py --cutover` (d = 576, F = 4608 and 18432,
# B = 4096, 2 threads): the sparse step stops being faster between 8.5 % (gated,
# F = 18432) and 18 % (ReLU, F = 4608) active; the table is in that script's
# `cutover` docstring.
SPARSE_BELOW_DENSITY = 0.08
# The same cut-over on a GPU, in fp32 and under 16-bit autocast. There the dense products
# run near the device's matmul rate, about 6 times faster in bf16 than in fp32 (tensor
# cores; fp32 without TF32 does not use them), while the sparse kernels are gathers,
# sorts and launches whatever the dtype. Measured on an H200 (benchmarks/gpu_cutover.py:
# `saekit train`'s step, B = 4096, d = 576, ms per step, sparse / dense, the faster of two
# runs of 16 steps):
#
#   F = 4608,  bf16: relu 3.96/3.14  topk 3.73/3.17  batchtopk 4.28/3.43  gated 5.80/3.81  jumprelu 4.94/4.05
#   F = 4608,  fp32: relu 5.02/4.18  topk 4.15/4.63  batchtopk 4.50/4.95  gated 5.93/6.21  jumprelu 4.50/4.98
#   F = 18432, bf16: relu 5.29/4.70  topk 4.20/4.76  batchtopk 4.64/5.15  gated 6.49/9.14  jumprelu 5.57/8.09
#   F = 18432, fp32: relu 6.88/13.2  topk 5.86/13.7  batchtopk 5.98/13.8  gated 8.03/19.9  jumprelu 7.25/16.3
#
# At 4,096 tokens such a step is launch-bound (a few ms for well under 1 ms of matmuls in
# bf16), and benchmarks/train_throughput.py's interleaved runs moved these figures by
# 15-25 % from run to run. In fp32 the sparse path wins clearly at 32x and about ties at
# 8x: the CPU's cut-over is kept. Under bf16 the dense products' time grows with F while
# the sparse kernels' launches do not: the whole table run with the dense path always,
# then with a 0.5 % cut-over, gave (tokens/s, thousands) at 8x relu 1177/762, topk
# 974/788, batchtopk 864/804, gated 839/557, jumprelu 801/688, and at 32x relu 612/606,
# topk 596/725, batchtopk 569/586, gated 362/488, jumprelu 402/570: dense below
# SPARSE_MIN_FEATURES_GPU_HALF features, the 0.5 % cut-over above.
SPARSE_BELOW_DENSITY_GPU = 0.08
SPARSE_BELOW_DENSITY_GPU_HALF = 0.005
SPARSE_MIN_FEATURES_GPU_HALF = 16_384

# Gathers of rows (B·k × d and the like) are made in chunks of at most this many bytes,
# so that a GPU batch of 65k tokens does not materialise gigabytes at once. On a GPU a
# chunk is a few kernel launches whatever its size: with CPU-sized chunks the sampled
# products of a 4,096-token TopK batch took 18 chunks and about 90 launches (on an H200
# the step was launch-bound: 7 ms of wall time for 3.7 ms of kernels).
GATHER_CHUNK_BYTES = 32 * 2**20
GATHER_CHUNK_BYTES_GPU = 512 * 2**20


# ----------------------------------------------------------------------- the pattern
class SparsityPattern:
    """The (token, feature) pairs a sparse computation visits in a (B, F) batch.

    Listed token by token (``tokens`` ascending; within a token, in any order): the
    structure of a CSR matrix without its values, so that several value
    vectors can share it (gated's gate and magnitude, JumpReLU's output and its L0
    count). The by-feature order that the weight gradients need is sorted once, on
    first use, and shared by every kernel that uses this pattern.
    """

    def __init__(self, tokens: Tensor, features: Tensor, token_offsets: Tensor, n_features: int):
        self.tokens = tokens
        self.features = features
        # token_offsets[b]: where token b's run of pairs starts (length B).
        self.token_offsets = token_offsets
        self.n_tokens = token_offsets.shape[0]
        self.n_features = n_features
        self._by_feature: tuple[Tensor, Tensor] | None = None
        self._tokens_by_feature: Tensor | None = None

    @property
    def nnz(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def from_mask(cls, mask: Tensor) -> "SparsityPattern":
        """The True entries of a (B, F) boolean mask."""
        B, F = mask.shape
        pairs = mask.nonzero()
        tokens, features = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
        offsets = torch.searchsorted(tokens, torch.arange(B, device=mask.device))
        return cls(tokens, features, offsets, F)

    @classmethod
    def from_indices(cls, indices: Tensor, n_features: int) -> "SparsityPattern":
        """Each token's own features: ``indices`` of shape (B, m), distinct within each
        row (as ``topk`` returns them)."""
        B, m = indices.shape
        device = indices.device
        # expand, not repeat_interleave, which on a GPU reads its output size back
        tokens = torch.arange(B, device=device).unsqueeze(1).expand(B, m).reshape(-1)
        return cls(tokens, indices.reshape(-1).contiguous(), torch.arange(B, device=device) * m, n_features)

    @classmethod
    def from_flat(cls, flat: Tensor, n_tokens: int, n_features: int) -> "SparsityPattern":
        """Distinct flat positions ``b·F + i`` in a (B, F) batch, in any order."""
        flat = _sorted_integers(flat)
        tokens, features = flat // n_features, flat % n_features
        offsets = torch.searchsorted(tokens, torch.arange(n_tokens, device=flat.device))
        return cls(tokens, features, offsets, n_features)

    def flat_index(self) -> Tensor:
        return self.tokens * self.n_features + self.features

    def by_feature(self) -> tuple[Tensor, Tensor]:
        """``(order, feature_offsets)``: ``order`` lists the pairs feature by feature
        (stable, so sums run in a fixed order), ``feature_offsets[i]`` is where feature
        i's run starts."""
        if self._by_feature is None:
            order = _stable_order(self.features, self.n_features)
            # index_select, not ``features[order]`` (here and in the weight gradients): on
            # a loaded 2-core machine, 2 threads, a 131072-entry gather by advanced
            # indexing took 4–8 ms, by index_select 0.1 ms; the results are identical.
            sorted_features = self.features.index_select(0, order)
            starts = torch.searchsorted(sorted_features, torch.arange(self.n_features, device=self.features.device))
            self._by_feature = (order, starts)
        return self._by_feature

    def tokens_by_feature(self) -> Tensor:
        """``tokens`` in ``by_feature`` order, kept for the decoder's and the encoder's
        weight gradients, which both need it."""
        if self._tokens_by_feature is None:
            self._tokens_by_feature = self.tokens.index_select(0, self.by_feature()[0])
        return self._tokens_by_feature

    def crow_indices(self) -> Tensor:
        end = torch.tensor([self.nnz], dtype=self.token_offsets.dtype, device=self.token_offsets.device)
        return torch.cat([self.token_offsets, end])


# ------------------------------------------------------------------- the sorting
# On CPU, torch sorts a 1-D integer tensor of 32768 or more entries with fbgemm's
# OpenMP radix sort, a parallel region with a barrier after every pass. With 2 threads
# on a machine whose cores other processes also use, a thread descheduled at a barrier
# stalls the other: sorting the 131072 feature indices of a TopK batch (B = 4096,
# k = 32) took 180–190 ms, a fifth of the step, where one thread took 1–2 ms (timed
# alternately in one process, the slow mode coming and going with the machine's load).
# numpy's single-threaded sorts take 0.5 ms (uint16 radix sort) to 9 ms (int64)
# whatever the load, so CPU tensors are sorted there; a GPU's sort is left to torch.
def _stable_order(keys: Tensor, n_keys: int) -> Tensor:
    """``keys.argsort(stable=True)`` for integer ``keys`` in ``[0, n_keys)``."""
    if keys.device.type != "cpu":
        return keys.argsort(stable=True)
    narrow = np.uint16 if n_keys <= 2**16 else np.int32 if n_keys <= 2**31 else np.int64
    order = keys.numpy().astype(narrow).argsort(kind="stable")
    return torch.from_numpy(order).to(torch.long)


def _sorted_integers(values: Tensor) -> Tensor:
    """``values.sort().values`` for a 1-D integer tensor (order among equal entries
    does not show)."""
    if values.device.type != "cpu":
        return values.sort().values
    return torch.from_numpy(np.sort(values.numpy()))


# ------------------------------------------------------------------- the primitives
def _weighted_row_sums(table: Tensor, rows: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    """``out[s] = Σ_{j in segment s} weights[j] · table[rows[j]]``, segments given by
    their start ``offsets`` (an empty segment gives zeros)."""
    return F_nn.embedding_bag(
        rows, table.contiguous(), offsets, mode="sum", per_sample_weights=weights.to(table.dtype).contiguous()
    )


def _sampled_dots(a: Tensor, b: Tensor, pattern: SparsityPattern) -> Tensor:
    """``a[t] · b[i]`` for every pair (t, i) of the pattern: the entries of ``a bᵀ``
    the pattern visits, without the rest of that (B, F) product."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and b.dtype == a.dtype:
        return _sampled_dots_csr(a, b, pattern)
    return _sampled_dots_gathered(a, b, pattern)


def _sampled_dots_csr(a: Tensor, b: Tensor, pattern: SparsityPattern) -> Tensor:
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta": the one call used here is tested
        # against the dense product in tests/test_kernels.py.
        warnings.simplefilter("ignore", UserWarning)
        # The CPU kernel computes each stored entry on its own, so the columns need not
        # be sorted within a row (CSR's usual invariant; sorting top-k indices cost
        # 32 ms a step); the check is switched off explicitly for that reason.
        structure = torch.sparse_csr_tensor(
            pattern.crow_indices(),
            pattern.features,
            a.new_zeros(pattern.nnz),
            (pattern.n_tokens, pattern.n_features),
            check_invariants=False,
        )
        return torch.sparse.sampled_addmm(structure, a, b.t(), beta=0.0).values()


def _sampled_dots_gathered(a: Tensor, b: Tensor, pattern: SparsityPattern) -> Tensor:
    out = a.new_empty(pattern.nnz, dtype=torch.promote_types(a.dtype, b.dtype))
    chunk = GATHER_CHUNK_BYTES if a.device.type == "cpu" else GATHER_CHUNK_BYTES_GPU
    step = max(1, chunk // (2 * a.shape[1] * a.element_size()))
    for start in range(0, pattern.nnz, step):
        t = pattern.tokens[start : start + step]
        i = pattern.features[start : start + step]
        out[start : start + step] = (a.index_select(0, t) * b.index_select(0, i)).sum(-1)
    return out


def _transposed(rows: Tensor, block: int = 256) -> Tensor:
    """``rows.t()`` (F, d) → (d, F), contiguous, as the gradient of a (d, F) parameter.

    A transposed view would be copied to the parameter's layout by autograd anyway,
    element by element across the whole matrix: 33 ms at F = 18432, d = 576 on 2 CPU
    threads, where copying blocks of 256 rows (each block's source stays in cache)
    takes 17 ms. A GPU's transposing copy is already fast.
    """
    if rows.device.type != "cpu":
        return rows.t()
    out = rows.new_empty(rows.shape[1], rows.shape[0])
    for start in range(0, rows.shape[0], block):
        out[:, start : start + block].copy_(rows[start : start + block].t())
    return out


def _feature_sums(values: Tensor, pattern: SparsityPattern) -> Tensor:
    """Σ over tokens of ``values`` per feature (the column sums of the sparse matrix)."""
    return values.new_zeros(pattern.n_features).index_add_(0, pattern.features, values)


# ---------------------------------------------------------------------- the decoder
class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, W_dec: Tensor, pattern: SparsityPattern) -> Tensor:
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        return _weighted_row_sums(W_dec, pattern.features, pattern.token_offsets, values)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, W_dec = ctx.saved_tensors
        pattern: SparsityPattern = ctx.pattern
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_dots(grad_out, W_dec, pattern).to(values.dtype)
        if ctx.needs_input_grad[1]:
            order, starts = pattern.by_feature()
            grad_W = _weighted_row_sums(
                grad_out, pattern.tokens_by_feature(), starts, values.index_select(0, order)
            )
        return grad_values, grad_W, None


def sparse_decode(values: Tensor, pattern: SparsityPattern, W_dec: Tensor) -> Tensor:
    """``f W_dec`` of shape (B, d) for the sparse ``f`` holding ``values`` at ``pattern``
    (no decoder bias), differentiable in ``values`` and ``W_dec``."""
    return _SparseDecode.apply(values, W_dec, pattern)


# ---------------------------------------------------------------------- the encoder
def _bias_gradients(G_features: Tensor, W_enc: Tensor, needs_b_enc: bool, needs_b_dec: bool):
    """∂b_enc = Σ_b G_b and ∂b_dec = −W_enc (Σ_b G_b): b_dec enters every token's
    pre-activations as ``−b_dec W_enc``, so its gradient needs only the batch sum of
    the pre-activation gradients, never the (B, d) input gradient."""
    grad_b_enc = G_features if needs_b_enc else None
    grad_b_dec = -(W_enc @ G_features.to(W_enc.dtype)) if needs_b_dec else None  # False when b_dec is None
    return grad_b_enc, grad_b_dec


class _PreActsAt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, pre: Tensor, pattern: SparsityPattern) -> Tensor:
        ctx.save_for_backward(x, W_enc, b_dec)
        ctx.pattern = pattern
        return pre.reshape(-1).index_select(0, pattern.flat_index())

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, W_enc, b_dec = ctx.saved_tensors
        pattern: SparsityPattern = ctx.pattern
        needs_x, needs_W, needs_b_enc, needs_b_dec = ctx.needs_input_grad[:4]
        grad = grad.to(W_enc.dtype)
        grad_x = grad_W = None
        if needs_W:
            order, starts = pattern.by_feature()
            centred = (x if b_dec is None else x - b_dec).to(W_enc.dtype)
            # (F, d) rows summed feature by feature, returned as the d × F gradient.
            grad_W = _transposed(
                _weighted_row_sums(centred, pattern.tokens_by_feature(), starts, grad.index_select(0, order))
            )
        if needs_x:
            grad_x = _weighted_row_sums(W_enc.t(), pattern.features, pattern.token_offsets, grad).to(x.dtype)
        G_features = _feature_sums(grad, pattern) if (needs_b_enc or needs_b_dec) else None
        grad_b_enc, grad_b_dec = _bias_gradients(G_features, W_enc, needs_b_enc, needs_b_dec)
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None


def pre_acts_at(
    pre: Tensor, pattern: SparsityPattern, x: Tensor, W_enc: Tensor, b_enc: Tensor | None, b_dec: Tensor | None
) -> Tensor:
    """The entries of ``pre`` at ``pattern``, differentiable as the entries of
    ``(x − b_dec) W_enc + b_enc`` (without ``+ b_enc`` when it is None, and without
    ``− b_dec`` when that is None: a transcoder's input has no pre-bias).

    ``pre`` must hold that product for the batch, computed without gradient (every
    architecture computes it anyway to choose its active pairs); the backward pass
    then costs O(nnz · d) plus one d × F matrix–vector product for ``b_dec``.
    """
    return _PreActsAt.apply(x, W_enc, b_enc, b_dec, pre, pattern)


class _DensePreActs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, pre: Tensor | None) -> Tensor:
        centred = x if b_dec is None else x - b_dec
        ctx.save_for_backward(centred, W_enc)
        # The products' dtype under 16-bit autocast, which the backward (run outside
        # autocast) keeps: a bf16 step's weight gradient in fp32 took longer than the rest
        # of its products together on a GPU without TF32.
        ctx.dtype = autocast_dtype(x.device) or W_enc.dtype
        if pre is not None:
            # Copied only out of the reused CPU buffer; elsewhere it is the caller's own
            # (a copy was a pass over the (B, F) batch each way on a GPU).
            return pre.clone() if _is_scratch(pre) else pre.view_as(pre)
        return centred @ W_enc if b_enc is None else torch.addmm(b_enc, centred, W_enc)

    @staticmethod
    def backward(ctx, grad: Tensor):
        centred, W_enc = ctx.saved_tensors
        needs_x, needs_W, needs_b_enc, needs_b_dec = ctx.needs_input_grad[:4]
        G_features = grad.sum(0, dtype=W_enc.dtype) if (needs_b_enc or needs_b_dec) else None
        grad = grad.to(ctx.dtype)
        grad_x = (grad @ W_enc.to(ctx.dtype).t()).to(centred.dtype) if needs_x else None
        grad_W = (centred.to(ctx.dtype).t() @ grad).to(W_enc.dtype) if needs_W else None
        grad_b_enc, grad_b_dec = _bias_gradients(G_features, W_enc, needs_b_enc, needs_b_dec)
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None


def dense_pre_acts(
    x: Tensor, W_enc: Tensor, b_enc: Tensor | None, b_dec: Tensor | None, pre: Tensor | None = None
) -> Tensor:
    """``(x − b_dec) W_enc + b_enc`` of shape (B, F) (without ``+ b_enc`` or ``− b_dec``
    when it is None), whose backward gives ``b_dec`` its gradient by a matrix–vector product
    instead of the (B, F)·(F, d) input gradient (2·d·F FLOPs per token saved).

    ``pre``, when given, is that product already computed without gradient (to choose
    the path); it is used rather than computed again (copied if it is ``scratch``).
    """
    return _DensePreActs.apply(x, W_enc, b_enc, b_dec, pre)


# ------------------------------------------------------------------------- helpers
def activity(values: Tensor, pattern: SparsityPattern) -> tuple[Tensor, Tensor]:
    """``(fired, n_active)`` of a sparse batch: which features are positive on some
    token (bool, (F,)), and how many positive activations it holds (a 0-d tensor).
    Both stay on the device: reading them would make a GPU wait."""
    on = values > 0
    hits = torch.zeros(pattern.n_features, dtype=torch.int32, device=values.device)
    hits.index_add_(0, pattern.features, on.to(torch.int32))
    return hits > 0, on.sum()


def dense_activity(f: Tensor) -> tuple[Tensor, Tensor]:
    """``activity`` for a dense (B, F) batch of activations (one pass over it: the
    per-feature counts give both)."""
    counts = (f > 0).sum(0)
    return counts > 0, counts.sum()


def weighted_l1(f: Tensor, norms: Tensor) -> Tensor:
    """``Σ_i f_bi ‖W_dec[i]‖`` averaged over the B tokens of a dense (B, F) batch, as
    ``(Σ_b f_b) · norms / B``: summing over tokens first takes one pass over the batch
    instead of a product the size of the batch and its backward."""
    # The column sums in f's dtype (torch accumulates a bf16 sum in fp32), whose gradient
    # is then a broadcast view: summed into fp32 from a bf16 f, it came back as an fp32
    # (B, F) tensor cast to bf16. A product and a sum rather than ``@``, which autocast
    # would run in bf16.
    return (f.sum(0).to(norms.dtype) * norms).sum() / f.shape[0]


_mode = threading.local()


@contextlib.contextmanager
def static_shapes() -> Iterator[None]:
    """Within this block a training step has shapes that do not depend on the data and
    never reads a device value on the host, as capturing it in a CUDA graph requires
    (``training.graphed_step``): the dense path always (``sparse_cutover`` is 0),
    BatchTopK's selection by one ``topk`` over the batch, and aux-k's dead latents chosen
    by a mask rather than by listing them. The step computes the same loss and gradients
    (up to the order of floating-point sums)."""
    before = getattr(_mode, "static", False)
    _mode.static = True
    try:
        yield
    finally:
        _mode.static = before


def shapes_static() -> bool:
    """Whether the step runs under ``static_shapes``."""
    return getattr(_mode, "static", False)


def sparse_cutover(device: torch.device, n_features: int) -> float:
    """The share of active (token, feature) pairs below which the sparse kernels beat the
    dense products for a dictionary of ``n_features`` on ``device``: ``SPARSE_BELOW_DENSITY``
    on a CPU; on a GPU ``SPARSE_BELOW_DENSITY_GPU``, or under bf16 or fp16 autocast, whose
    dense products are several times faster, ``SPARSE_BELOW_DENSITY_GPU_HALF`` from
    ``SPARSE_MIN_FEATURES_GPU_HALF`` features on and 0 (always dense) below; 0 under
    ``static_shapes``, whose step must not depend on a count."""
    if shapes_static():
        return 0.0
    if torch.device(device).type == "cpu":
        return SPARSE_BELOW_DENSITY
    if autocast_dtype(device) in (torch.bfloat16, torch.float16):
        return SPARSE_BELOW_DENSITY_GPU_HALF if n_features >= SPARSE_MIN_FEATURES_GPU_HALF else 0.0
    return SPARSE_BELOW_DENSITY_GPU


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs products in on ``device``'s kind, None where it is off."""
    kind = torch.device(device).type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def sparse_mask(values: Tensor, cut: Tensor | float) -> Tensor | None:
    """The (B, F) mask of the pairs with ``values > cut`` when they are few enough for the
    sparse kernels (fewer than ``sparse_cutover`` of all pairs), else None: the dense path.
    One device-to-host read per step (the sparse path's shapes depend on the count anyway);
    where the cut-over is 0 none, and the mask is not even formed (a pass over the batch)."""
    cutover = sparse_cutover(values.device, values.shape[-1])
    if cutover == 0:
        return None
    mask = values > cut
    return mask if int(torch.count_nonzero(mask)) < cutover * mask.numel() else None


_workspace = threading.local()


def _is_scratch(t: Tensor) -> bool:
    """Whether ``t`` lives in this thread's ``scratch`` buffer."""
    buf = getattr(_workspace, "buffer", None)
    same_memory = buf is not None and t.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
    return same_memory and t.device == buf.device


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor for the no-gradient (B, F) pre-activations.

    On CPU a fresh tensor above 32 MB (glibc's largest mmap threshold) comes from the
    kernel, zero-filled page by page, every step: measured 40 ms for B = 4096,
    F = 4608 (a quarter of the sparse TopK step). One buffer per thread is kept and
    reused instead; it never leaves the loss computation, which copies out what it
    keeps. Other devices have caching allocators and get a plain ``torch.empty``.
    """
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    n = math.prod(shape)
    buf = getattr(_workspace, "buffer", None)
    if buf is None or buf.dtype != dtype or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype)
        _workspace.buffer = buf
    return buf[:n].view(shape)
