"""Time one training step per architecture: the dense objective against saekit's kernels.

    .venv/bin/python benchmarks/step_kernels.py                  # d = 576, F = 4608 and 18432, B = 4096
    .venv/bin/python benchmarks/step_kernels.py --dead-fraction 0.05   # with the aux-k loss at work
    .venv/bin/python benchmarks/step_kernels.py --cutover        # where the sparse path stops paying
    .venv/bin/python benchmarks/step_kernels.py --sorts          # saekit's CPU sorts against torch's

A step is what the trainer does with a batch: the loss, its backward, the removal of
the decoder gradient along the rows, Adam, and the row renormalisation. The "dense"
step is the objective as saekit computed it before the sparse kernels, reimplemented
here with plain autograd on dense (B, F) tensors (the reference tests/test_kernels.py
checks the kernels against); the "sparse" step is ``Dictionary.forward``. Each has its
own copy of the dictionary and its own Adam, started alike, and their steps alternate
(in alternating order) so machine noise hits both; the figure is the median step time.

The data are sparse combinations of random unit directions plus noise, scaled as the
trainer scales them (E‖x‖² = d); each dictionary starts from ``init_from_data``, so
the ReLU-like architectures start near 64 active features per token, as in training.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, LossParams, build_dictionary, sparse

ARCHS = ["topk", "batchtopk", "relu", "gated", "jumprelu"]
SPARSITY_COEFF = {"relu": 2.0, "gated": 2.0, "jumprelu": 1.0}  # saekit's defaults (config.py)


# --------------------------------------------------------------- the dense step
def _step_estimators(pre, theta, eps):
    """JumpReLU's f and H with the straight-through gradients in θ, by plain autograd."""
    H = (pre > theta).to(pre.dtype)
    K = ((pre - theta).abs() < eps / 2).to(pre.dtype) / eps
    td = theta.detach()
    return pre * H + td * K * (td - theta), H.detach() + K * (td - theta)


def dense_loss(sae, x, params):
    """The objective as a dense autograd graph: (B, F) activations, dense products."""
    arch, k = sae.cfg.arch, sae.cfg.k
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    pre = (x - b_dec) @ W_enc + b_enc
    norms = W_dec.norm(dim=1)
    extra = 0.0
    if arch == "topk":
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    elif arch == "batchtopk":
        flat = pre.relu().flatten()
        vals, idx = flat.topk(min(k * x.shape[0], flat.numel()), sorted=False)
        f = torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)
    elif arch == "relu":
        f = pre.relu()
        extra = params.sparsity_coeff * (f * norms).sum(-1).mean()
    elif arch == "gated":
        mag = (x - b_dec) @ (W_enc * sae.r_mag.exp()) + sae.b_mag
        f = (pre > 0).to(x.dtype) * mag.relu()
        gate_hat = pre.relu() @ W_dec.detach() + b_dec.detach()
        extra = params.sparsity_coeff * (pre.relu() * norms).sum(-1).mean() + ((x - gate_hat) ** 2).sum(-1).mean()
    else:
        f, steps = _step_estimators(pre, sae.threshold, params.jumprelu_bandwidth)
        extra = params.sparsity_coeff * steps.sum(-1).mean()
    x_hat = f @ W_dec + b_dec
    loss = ((x - x_hat) ** 2).sum(-1).mean() + extra
    dead = params.dead_mask
    if arch in ("topk", "batchtopk") and dead is not None and bool(dead.any()):
        aux_k = min(params.aux_k or sae.cfg.d_in // 2, int(dead.sum()))
        vals, idx = pre.masked_fill(~dead, float("-inf")).topk(aux_k, dim=-1, sorted=False)
        e_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ W_dec
        residual = (x - x_hat).detach()
        aux = ((e_hat - residual) ** 2).sum(-1).mean() / (residual**2).sum(-1).mean().clamp_min(1e-8)
        loss = loss + params.auxk_coeff * aux
    return loss


def sparse_loss(sae, x, params):
    return sae(x, params=params).loss


# Wall-clock by default; ``--clock cpu`` reads the process's CPU time instead, which on a
# machine shared with other jobs still measures the work itself. Use it with
# ``--threads 1``: with more threads it also counts OpenMP threads spinning at barriers,
# which on a loaded machine can be most of the step.
CLOCK = time.perf_counter


def train_step(loss_fn, sae, opt, x, params) -> float:
    start = CLOCK()
    loss = loss_fn(sae, x, params)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_parallel_decoder_grad()
    opt.step()
    sae.after_step()
    return CLOCK() - start


# ---------------------------------------------------------------------- the data
def make_data(d: int, n_batches: int, batch: int, seed: int = 0) -> list[torch.Tensor]:
    """Sparse combinations (about 32 of 16384 random unit directions per token) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    n_dirs, per_token = 16384, 32
    dirs = torch.randn(n_dirs, d, generator=gen)
    dirs /= dirs.norm(dim=1, keepdim=True)
    batches = []
    for _ in range(n_batches):
        idx = torch.randint(0, n_dirs, (batch, per_token), generator=gen)
        mags = torch.empty(batch, per_token).exponential_(generator=gen)
        x = torch.einsum("bk,bkd->bd", mags, dirs[idx]) + 0.1 * torch.randn(batch, d, generator=gen)
        batches.append(x)
    scale = torch.cat(batches).pow(2).sum(-1).mean().div(d).sqrt()
    return [x / scale for x in batches]


def new_pair(arch: str, d: int, F: int, k: int, sample: torch.Tensor, initial_l0: float = 64.0, fused: bool = False):
    """Two identical dictionaries, each with its own Adam (as the trainer makes it)."""
    torch.manual_seed(0)
    sae = build_dictionary(DictionaryConfig(arch=arch, d_in=d, d_sae=F, k=k if ARCHITECTURES[arch].uses_k else None))
    sae.init_from_data(sample, initial_l0=initial_l0)
    twin = copy.deepcopy(sae)
    lr = 1.6e-3 / (F / 4096) ** 0.5
    adam = {"lr": lr, "betas": (0.9, 0.999), **({"fused": True} if fused else {})}
    return (sae, torch.optim.Adam(sae.parameters(), **adam)), (twin, torch.optim.Adam(twin.parameters(), **adam))


def interleaved(a, b, batches, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per step of the two step functions ``a(x)`` and ``b(x)``, alternated."""
    times_a, times_b = [], []
    for i, x in enumerate(batches):
        if i % 2 == 0:
            ta, tb = a(x), b(x)
        else:
            tb, ta = b(x), a(x)
        if i >= warmup:
            times_a.append(ta)
            times_b.append(tb)
    return times_a, times_b


# ----------------------------------------------------------------------- figures
def compare(args) -> None:
    print(f"d = {args.d}, batch {args.batch}, fp32, {torch.get_num_threads()} threads, k = {args.k}, "
          f"dead fraction {args.dead_fraction}, {'fused' if args.fused_adam else 'default'} Adam; "
          f"{args.steps} steps after {args.warmup} warm-up: median (and fastest) step")
    print(f"{'arch':<10} {'F':>6} {'dense ms':>15} {'sparse ms':>15} {'speed-up':>15} {'L0':>7}  path")
    batches = make_data(args.d, args.steps + args.warmup, args.batch)
    for F in args.sizes:
        dead = (torch.arange(F) % round(1 / args.dead_fraction) == 0) if args.dead_fraction > 0 else None
        for arch in args.archs:
            (dense_sae, dense_opt), (sparse_sae, sparse_opt) = new_pair(
                arch, args.d, F, args.k, batches[0], fused=args.fused_adam
            )
            params = LossParams(sparsity_coeff=SPARSITY_COEFF.get(arch, 0.0), dead_mask=dead)
            dense_times, sparse_times = interleaved(
                lambda x: train_step(dense_loss, dense_sae, dense_opt, x, params),
                lambda x: train_step(sparse_loss, sparse_sae, sparse_opt, x, params),
                batches,
                args.warmup,
            )
            t_dense, t_sparse = statistics.median(dense_times), statistics.median(sparse_times)
            best_dense, best_sparse = min(dense_times), min(sparse_times)
            with torch.no_grad():
                out = sparse_sae(batches[-1], params=params)
            l0 = float(out.n_active) / args.batch
            path = "sparse" if arch in ("topk", "batchtopk") or l0 / F < sparse.SPARSE_BELOW_DENSITY else "dense"
            print(f"{arch:<10} {F:>6} {t_dense * 1e3:>7.0f} ({best_dense * 1e3:>5.0f}) "
                  f"{t_sparse * 1e3:>7.0f} ({best_sparse * 1e3:>5.0f}) {t_dense / t_sparse:>6.2f}x "
                  f"({best_dense / best_sparse:>5.2f}x) {l0:>7.1f}  {path}")


def cutover(args) -> None:
    """Time the sparse and the dense path of each ReLU-like architecture on the same
    batches at a range of densities (set through ``init_from_data``'s initial L0).

    Measured (``--cutover --steps 3 --warmup 1 --densities 0.02 0.05 0.1 0.2``, 2
    threads of a shared AMD EPYC, d = 576, B = 4096), sparse step time ÷ dense step
    time at densities of about 2 %, 4 %, 8.5 %, 18 %:

        F = 4608    relu 0.53 0.53 0.72 0.99   gated 0.26 0.48 0.59 0.83   jumprelu 0.39 0.37 0.51 0.85
        F = 18432   relu 0.42 0.47 0.75 1.65   gated 0.28 0.53 1.08 1.41   jumprelu 0.30 0.42 0.64 1.27

    The earliest crossing is gated's at F = 18432, near 8.5 % (its two sparse decodes
    and its magnitude path make the most per-pair work); hence SPARSE_BELOW_DENSITY =
    0.08. saekit starts these architectures near 64 active features per token (1.4 %
    of F = 4608), well inside the sparse side.
    """
    print(f"d = {args.d}, batch {args.batch}, {torch.get_num_threads()} threads; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'arch':<10} {'F':>6} {'density':>8} {'dense ms':>9} {'sparse ms':>10} {'sparse/dense':>13}")
    batches = make_data(args.d, args.steps + args.warmup, args.batch)
    for F in args.sizes:
        for arch in [a for a in args.archs if a in SPARSITY_COEFF]:
            for target in args.densities:
                (a_sae, a_opt), (b_sae, b_opt) = new_pair(arch, args.d, F, args.k, batches[0], initial_l0=target * F)
                params = LossParams(sparsity_coeff=SPARSITY_COEFF[arch])

                def forced(threshold, sae, opt):
                    def step(x):
                        saved, sparse.SPARSE_BELOW_DENSITY = sparse.SPARSE_BELOW_DENSITY, threshold
                        try:
                            return train_step(sparse_loss, sae, opt, x, params)
                        finally:
                            sparse.SPARSE_BELOW_DENSITY = saved
                    return step

                times = interleaved(forced(0.0, a_sae, a_opt), forced(1.01, b_sae, b_opt), batches, args.warmup)
                t_dense, t_sparse = (statistics.median(t) for t in times)
                with torch.no_grad():
                    measured = float(b_sae(batches[-1], params=params).n_active) / (args.batch * F)
                print(f"{arch:<10} {F:>6} {measured:>8.3f} {t_dense * 1e3:>9.0f} {t_sparse * 1e3:>10.0f} "
                      f"{t_sparse / t_dense:>13.2f}")


def sorts(args) -> None:
    """Time the sparse step of each architecture with saekit's CPU sorts (numpy,
    single-threaded; ``sparse._stable_order``) against torch's own (``argsort`` and
    ``sort``, an OpenMP radix sort for 1-D integer tensors), alternated on the same batches.
    """
    print(f"d = {args.d}, batch {args.batch}, {torch.get_num_threads()} threads, k = {args.k}, "
          f"dead fraction {args.dead_fraction}; median (and fastest) of {args.steps} steps after {args.warmup}")
    print(f"{'arch':<10} {'F':>6} {'torch sort ms':>15} {'numpy sort ms':>15} {'speed-up':>15}")
    batches = make_data(args.d, args.steps + args.warmup, args.batch)
    ours_order, ours_sorted = sparse._stable_order, sparse._sorted_integers

    def torch_order(keys, n_keys):
        return keys.argsort(stable=True)

    def torch_sorted(values):
        return values.sort().values

    for F in args.sizes:
        dead = (torch.arange(F) % round(1 / args.dead_fraction) == 0) if args.dead_fraction > 0 else None
        for arch in args.archs:
            (a_sae, a_opt), (b_sae, b_opt) = new_pair(arch, args.d, F, args.k, batches[0])
            params = LossParams(sparsity_coeff=SPARSITY_COEFF.get(arch, 0.0), dead_mask=dead)

            def with_sorts(order, sorted_, sae, opt):
                def step(x):
                    sparse._stable_order, sparse._sorted_integers = order, sorted_
                    try:
                        return train_step(sparse_loss, sae, opt, x, params)
                    finally:
                        sparse._stable_order, sparse._sorted_integers = ours_order, ours_sorted
                return step

            t_torch, t_ours = interleaved(
                with_sorts(torch_order, torch_sorted, a_sae, a_opt),
                with_sorts(ours_order, ours_sorted, b_sae, b_opt),
                batches,
                args.warmup,
            )
            m_torch, m_ours = statistics.median(t_torch), statistics.median(t_ours)
            print(f"{arch:<10} {F:>6} {m_torch * 1e3:>7.0f} ({min(t_torch) * 1e3:>5.0f}) "
                  f"{m_ours * 1e3:>7.0f} ({min(t_ours) * 1e3:>5.0f}) {m_torch / m_ours:>6.2f}x "
                  f"({min(t_torch) / min(t_ours):>5.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS)
    p.add_argument("--sizes", nargs="+", type=int, default=[8 * 576, 32 * 576], help="dictionary sizes F")
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed steps per library and setting")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dead-fraction", type=float, default=0.0,
                   help="fraction of features marked dead (the TopK family's aux-k loss then runs)")
    p.add_argument("--fused-adam", action="store_true",
                   help="Adam(fused=True) for both steps (the trainer uses the default Adam)")
    p.add_argument("--cutover", action="store_true", help="time the sparse and dense paths over densities instead")
    p.add_argument("--sorts", action="store_true",
                   help="time the sparse step with torch's CPU sorts against saekit's (numpy) instead")
    p.add_argument("--densities", nargs="+", type=float, default=[0.01, 0.02, 0.04, 0.08, 0.16, 0.32])
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time steps by the wall clock or by this process's CPU time (see CLOCK)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"clock: {args.clock}")
    (cutover if args.cutover else sorts if args.sorts else compare)(args)


if __name__ == "__main__":
    main()
