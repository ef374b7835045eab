"""The sparse training kernels give the dense objective's loss and gradients.

Every architecture's ``forward`` is compared, in float64, with a plain dense autograd
implementation of the same objective written out here from the papers (the maths the
dictionaries had before the kernels): loss, terms, x̂, the firing record and every
parameter's gradient, at odd sizes (one token, F not a multiple of anything, k = 1 and
k = F − 1), with and without dead features, on both the sparse and the dense path of
the ReLU-like architectures. The custom autograd Functions pass ``gradcheck``.
"""

import pytest
import torch
from torch.autograd import gradcheck

from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, LossParams, build_dictionary, sparse
from saekit.dictionaries.sparse import SparsityPattern, dense_pre_acts, pre_acts_at, sparse_decode

ARCHS = sorted(ARCHITECTURES)
RELU_LIKE = ["gated", "jumprelu", "relu"]


def make(arch: str, d: int, F: int, k: int | None = None, seed: int = 0, **transcoder):
    torch.manual_seed(seed)
    uses_k = ARCHITECTURES[arch].uses_k
    cfg = DictionaryConfig(arch=arch, d_in=d, d_sae=F, k=(k or 3) if uses_k else None, **transcoder)
    sae = build_dictionary(cfg).double()
    with torch.no_grad():  # off the symmetric init, so every parameter matters
        for p in sae.parameters():
            p.add_(0.3 * torch.randn_like(p))
        sae.after_step()
        if arch == "jumprelu":
            sae.threshold.uniform_(0.05, 0.6)
        if arch in ("relu", "gated"):
            sae.b_enc.sub_(0.3)  # some pre-activations below zero
    return sae


# ----------------------------------------------------------- the dense reference
def _step_estimators(pre, theta, eps):
    """JumpReLU's f and H with the straight-through gradients of Rajamanoharan et al.
    (2024): ∂f/∂θ = −(θ/ε)K, ∂H/∂θ = −K/ε, K the rectangle on |pre − θ| < ε/2, and no
    gradient of H in pre. Written with detach(): the added terms are zero in value."""
    H = (pre > theta).to(pre.dtype)
    K = ((pre - theta).abs() < eps / 2).to(pre.dtype) / eps
    td = theta.detach()
    f = pre * H + td * K * (td - theta)
    steps = H.detach() + K * (td - theta)
    return f, steps


def reference(sae, x, target, params):
    """The dense objective by plain autograd: ``(loss, terms, x_hat, f)``."""
    arch, k = sae.cfg.arch, sae.cfg.k
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    # A transcoder's input has no pre-bias; a skip transcoder adds x W_skip to x̂.
    centred = x if sae.cfg.transcoder else x - b_dec
    out_bias = b_dec + x @ sae.W_skip if sae.cfg.skip else b_dec
    u = centred @ W_enc
    # addmm, as the dictionary computes it, so that top-k picks the same features.
    pre = torch.addmm(b_enc, centred, W_enc)
    norms = W_dec.norm(dim=1)
    terms = {}
    if arch == "topk":
        vals, idx = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    elif arch == "batchtopk":
        flat = pre.relu().flatten()
        vals, idx = flat.topk(min(k * x.shape[0], flat.numel()))
        f = torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)
    elif arch == "relu":
        f = pre.relu()
        terms["l1"] = (f * norms).sum(-1).mean()
    elif arch == "gated":
        gate = u + b_enc
        mag = centred @ (W_enc * sae.r_mag.exp()) + sae.b_mag
        f = (gate > 0).to(x.dtype) * mag.relu()
        terms["l1"] = (gate.relu() * norms).sum(-1).mean()
        terms["aux"] = ((target - (gate.relu() @ W_dec.detach() + out_bias.detach())) ** 2).sum(-1).mean()
    elif arch == "jumprelu":
        f, steps = _step_estimators(pre, sae.threshold, params.jumprelu_bandwidth)
        terms["l0_penalty"] = steps.sum(-1).mean()
    x_hat = f @ W_dec + out_bias
    terms["mse"] = ((target - x_hat) ** 2).sum(-1).mean()
    loss = terms["mse"]
    if arch in ("topk", "batchtopk"):
        terms["auxk"] = x.new_zeros(())
        dead = params.dead_mask
        if dead is not None and dead.any():
            aux_k = min(params.aux_k or sae.cfg.d_in // 2, int(dead.sum()))
            vals, idx = pre.masked_fill(~dead, float("-inf")).topk(aux_k, dim=-1)
            e_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ W_dec
            residual = (target - x_hat).detach()
            terms["auxk"] = ((e_hat - residual) ** 2).sum(-1).mean() / (residual**2).sum(-1).mean().clamp_min(1e-8)
        loss = loss + params.auxk_coeff * terms["auxk"]
    elif arch == "gated":
        loss = loss + params.sparsity_coeff * terms["l1"] + terms["aux"]
    elif arch == "relu":
        loss = loss + params.sparsity_coeff * terms["l1"]
    else:
        loss = loss + params.sparsity_coeff * terms["l0_penalty"]
    return loss, terms, x_hat, f


def grads(sae, loss):
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters()}


def check_against_reference(sae, x, params, target=None):
    target_ = x if target is None else target
    ref_loss, ref_terms, ref_x_hat, f = reference(sae, x, target_, params)
    ref_grads = grads(sae, ref_loss)
    out = sae(x, target, params)
    got_grads = grads(sae, out.loss)
    torch.testing.assert_close(out.loss, ref_loss)
    torch.testing.assert_close(out.x_hat, ref_x_hat)
    assert out.terms.keys() == ref_terms.keys()
    for name in ref_terms:
        torch.testing.assert_close(out.terms[name], ref_terms[name], msg=f"term {name}")
    assert torch.equal(out.fired, (f > 0).any(0))
    assert int(out.n_active) == int((f > 0).sum())
    assert got_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], msg=lambda m: f"gradient of {name}: {m}")
    return out


# Every architecture on each of its paths: the ReLU-like ones choose per batch by the
# active share, TopK and BatchTopK by k / F against the device's cut-over (dense on a GPU).
# "static" is the dense path under ``sparse.static_shapes``, as a CUDA graph captures it
# (aux-k and BatchTopK's selection without data-dependent shapes).
CASES = [(arch, path) for path in ("sparse", "dense", "static") for arch in ARCHS]


def force_path(monkeypatch, path: str) -> None:
    monkeypatch.setattr(sparse, "SPARSE_BELOW_DENSITY", 1.01 if path == "sparse" else 0.0)
    if path == "static":
        monkeypatch.setattr(sparse._mode, "static", True, raising=False)


# (B, d, F, k): one token; F prime; k = 1; k = F − 1.
# (65, 8, 211, 4): large enough that BatchTopK's selection takes its sampled cut-off.
SIZES = [(1, 5, 7, 1), (7, 6, 13, 3), (7, 6, 13, 12), (33, 8, 50, 5), (65, 8, 211, 4)]
DEAD = {
    "none-given": lambda F: None,
    "no-dead": lambda F: torch.zeros(F, dtype=torch.bool),
    "all-dead": lambda F: torch.ones(F, dtype=torch.bool),
    "some-dead": lambda F: torch.arange(F) % 3 == 1,
}


@pytest.mark.parametrize(
    "arch,path,dead",
    [(a, p, dead) for a, p in CASES for dead in (sorted(DEAD) if a in ("topk", "batchtopk") else ["some-dead"])],
)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "B{}-d{}-F{}-k{}".format(*s))
def test_forward_matches_the_dense_objective(arch, path, dead, size, monkeypatch):
    force_path(monkeypatch, path)
    B, d, F, k = size
    sae = make(arch, d, F, k)
    x = torch.randn(B, d, dtype=torch.float64) * 1.5
    params = LossParams(sparsity_coeff=0.3, dead_mask=DEAD[dead](F), jumprelu_bandwidth=0.4)
    out = check_against_reference(sae, x, params)
    assert out.x_hat.shape == (B, d)


@pytest.mark.parametrize("arch,path", CASES)
def test_a_different_target_is_what_the_reconstruction_is_compared_with(arch, path, monkeypatch):
    """A transcoder's loss: x̂ from x, compared with another activation."""
    force_path(monkeypatch, path)
    sae = make(arch, 8, 40, 4)
    x = torch.randn(9, 8, dtype=torch.float64)
    target = torch.randn(9, 8, dtype=torch.float64)
    params = LossParams(sparsity_coeff=0.2, dead_mask=torch.arange(40) % 2 == 0, aux_k=3, jumprelu_bandwidth=0.4)
    out = check_against_reference(sae, x, params, target)
    assert not torch.allclose(out.terms["mse"], sae(x, params=params).terms["mse"])


@pytest.mark.parametrize("arch,path", CASES)
@pytest.mark.parametrize("skip", [False, True], ids=["transcoder", "skip-transcoder"])
@pytest.mark.parametrize("size", [(1, 5, 7, 1), (9, 8, 40, 4)], ids=lambda s: "B{}-d{}-F{}-k{}".format(*s))
def test_transcoders_match_the_dense_objective(arch, path, skip, size, monkeypatch):
    """A transcoder (input uncentred, output of another width, optional skip path)
    against the reference, with dead features for the aux-k term."""
    force_path(monkeypatch, path)
    B, d, F, k = size
    sae = make(arch, d, F, k, transcoder=True, d_out=d + 3, skip=skip)
    x = torch.randn(B, d, dtype=torch.float64) * 1.5
    target = torch.randn(B, d + 3, dtype=torch.float64)
    params = LossParams(sparsity_coeff=0.3, dead_mask=torch.arange(F) % 3 == 1, aux_k=3, jumprelu_bandwidth=0.4)
    out = check_against_reference(sae, x, params, target)
    assert out.x_hat.shape == (B, d + 3)
    assert ("W_skip" in dict(sae.named_parameters())) == skip


@pytest.mark.parametrize("arch,path", CASES)
def test_ties_at_zero(arch, path, monkeypatch):
    """A token equal to b_dec with b_enc = 0 has every pre-activation exactly 0: TopK then
    picks k zeros, none of which fires or passes a gradient."""
    force_path(monkeypatch, path)
    sae = make(arch, 6, 11, 4)
    with torch.no_grad():
        sae.b_enc.zero_()
        if arch == "gated":
            sae.b_mag.zero_()
    x = torch.randn(5, 6, dtype=torch.float64)
    x[2] = sae.b_dec.detach()
    out = check_against_reference(sae, x, LossParams(sparsity_coeff=0.1, dead_mask=torch.ones(11, dtype=torch.bool)))
    assert torch.equal(out.x_hat[2], sae.b_dec.detach())


@pytest.mark.parametrize("arch,path", [case for case in CASES if case[0] in RELU_LIKE])
def test_a_batch_where_nothing_fires(arch, path, monkeypatch):
    force_path(monkeypatch, path)
    sae = make(arch, 6, 11)
    with torch.no_grad():
        sae.b_enc.fill_(-1e3)
        if arch == "jumprelu":
            sae.threshold.fill_(1e3)
    out = check_against_reference(sae, torch.randn(4, 6, dtype=torch.float64), LossParams(sparsity_coeff=0.1))
    assert int(out.n_active) == 0 and not out.fired.any()


def test_the_path_follows_the_measured_density(monkeypatch):
    """Both paths run, and each is taken on the side of the cut-over it belongs to."""
    sae = make("relu", 8, 64)
    x = torch.randn(50, 8, dtype=torch.float64)
    taken = []
    for name in ("pre_acts_at", "dense_pre_acts"):
        real = getattr(sparse, name)
        monkeypatch.setattr(
            "saekit.dictionaries.relu." + name, lambda *a, _real=real, _name=name: taken.append(_name) or _real(*a)
        )
    active = float((sae.pre_acts(x) > 0).double().mean())
    monkeypatch.setattr(sparse, "SPARSE_BELOW_DENSITY", active + 0.01)
    sae(x)
    monkeypatch.setattr(sparse, "SPARSE_BELOW_DENSITY", active - 0.01)
    sae(x)
    assert taken == ["pre_acts_at", "dense_pre_acts"]


@pytest.mark.parametrize("path", ["sparse", "dense", "static"])
def test_input_gradient_when_x_requires_it(path, monkeypatch):
    force_path(monkeypatch, path)
    sae = make("gated", 6, 19)
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    ref_loss = reference(sae, x, x, LossParams(sparsity_coeff=0.2))[0]
    (ref,) = torch.autograd.grad(ref_loss, x)
    (got,) = torch.autograd.grad(sae(x, params=LossParams(sparsity_coeff=0.2)).loss, x)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("arch,path", CASES)
def test_two_forwards_before_one_backward(arch, path, monkeypatch):
    """The no-gradient pre-activations live in a reused buffer: a second forward must not
    change what the first one's backward computes."""
    force_path(monkeypatch, path)
    sae = make(arch, 6, 23, 3)
    x1, x2 = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64) * 2
    params = LossParams(sparsity_coeff=0.2, dead_mask=torch.arange(23) % 2 == 0, jumprelu_bandwidth=0.4)
    ref = grads(sae, reference(sae, x1, x1, params)[0] + reference(sae, x2, x2, params)[0])
    got = grads(sae, sae(x1, params=params).loss + sae(x2, params=params).loss)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("arch,path", CASES)
def test_float32_training_step_agrees_with_the_reference(arch, path, monkeypatch):
    force_path(monkeypatch, path)
    sae = make(arch, 16, 96, 8).float()
    x = torch.randn(64, 16)
    params = LossParams(sparsity_coeff=0.1, dead_mask=torch.arange(96) % 4 == 0, jumprelu_bandwidth=0.3)
    ref = grads(sae, reference(sae, x, x, params)[0])
    got = grads(sae, sae(x, params=params).loss)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,path", CASES)
def test_bf16_autocast_runs(arch, path, monkeypatch):
    force_path(monkeypatch, path)
    sae = make(arch, 16, 64, 4).float()
    x = torch.randn(32, 16)
    params = LossParams(sparsity_coeff=0.1, dead_mask=torch.arange(64) % 2 == 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x, params=params)
    out.loss.backward()
    ref = grads(sae, reference(sae, x, x, params)[0])
    for name, p in sae.named_parameters():
        assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name
        # bf16 has 8 bits of mantissa: the gradients point the same way.
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), ref[name].flatten(), dim=0)
        assert cos > 0.9 or ref[name].norm() < 1e-6, (name, float(cos))


def test_decoder_hooks_see_ordinary_gradients():
    """remove_parallel_decoder_grad and after_step act on the sparse gradients as before."""
    sae = make("topk", 8, 40, 4)
    x = torch.randn(16, 8, dtype=torch.float64)
    sae(x).loss.backward()
    assert sae.W_dec.grad.shape == (40, 8) and sae.W_enc.grad.shape == (8, 40)
    sae.remove_parallel_decoder_grad()
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(40, dtype=torch.float64))


# ------------------------------------------------------------ the kernels themselves
def random_pattern(B: int, F: int, density: float, seed: int = 0) -> SparsityPattern:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, F, generator=gen) < density
    mask[0, 0] = True
    return SparsityPattern.from_mask(mask)


@pytest.mark.parametrize("case", ["random", "ties", "sample-misjudges"])
def test_largest_entries_are_exactly_the_top_n(case):
    from saekit.dictionaries.topk import largest_entries

    gen = torch.Generator().manual_seed(3)
    flat = torch.randn(60_000, generator=gen)
    if case == "ties":
        flat = flat.round()  # a few values, each many times
    if case == "sample-misjudges":
        flat[::17] += 100.0  # every sampled entry is among the largest: the cut is too high
    n = 900
    got = largest_entries(flat, n)
    assert got.numel() == n and got.unique().numel() == n
    torch.testing.assert_close(flat[got].sort().values, flat.topk(n).values.sort().values)


def test_pattern_constructors_agree():
    gen = torch.Generator().manual_seed(1)
    idx = torch.rand(6, 17, generator=gen).topk(4, dim=-1).indices.sort(-1).values
    a = SparsityPattern.from_indices(idx, 17)
    mask = torch.zeros(6, 17, dtype=torch.bool).scatter(1, idx, True)
    b = SparsityPattern.from_mask(mask)
    c = SparsityPattern.from_flat(b.flat_index()[torch.randperm(b.nnz, generator=gen)], 6, 17)
    for p in (b, c):
        assert torch.equal(p.tokens, a.tokens) and torch.equal(p.features, a.features)
        assert torch.equal(p.token_offsets, a.token_offsets)
    order, starts = a.by_feature()
    assert torch.equal(a.features[order], a.features.sort(stable=True).values)
    assert torch.equal(starts, torch.searchsorted(a.features[order], torch.arange(17)))


@pytest.mark.parametrize("n_keys", [1, 17, 4608, 2**16, 2**16 + 1, 3 * 2**20])
def test_stable_order_is_the_stable_argsort(n_keys):
    """The CPU sort (numpy, keys narrowed to 16 or 32 bits) lists equal keys in their
    original order; the reference breaks ties by position explicitly, so it does not rely
    on any sort being stable. Sizes straddle the narrowing limits: keys at 2**16 wrap
    to 0 in 16 bits, and a pattern sorted wrongly there fails the comparison."""
    gen = torch.Generator().manual_seed(n_keys)
    keys = torch.randint(0, n_keys, (50_000,), generator=gen)
    keys[:3] = n_keys - 1  # the largest key is present (the one narrowing would wrap)
    n = keys.numel()
    want = (keys * n + torch.arange(n)).argsort()
    assert torch.equal(sparse._stable_order(keys, n_keys), want)


def test_sorted_integers_and_tokens_by_feature():
    gen = torch.Generator().manual_seed(5)
    values = torch.randperm(3 * 2**20, generator=gen)[:40_000]
    got = sparse._sorted_integers(values)
    assert got.dtype == values.dtype and torch.equal(got, values.sort().values)
    pattern = random_pattern(300, 257, 0.2)
    order, _ = pattern.by_feature()
    assert torch.equal(pattern.tokens_by_feature(), pattern.tokens[order])
    # By feature, and within a feature by token (the pairs are listed token by token).
    key = pattern.features[order] * pattern.n_tokens + pattern.tokens[order]
    assert bool((key[1:] > key[:-1]).all())


@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_sampled_dots_both_ways(density, monkeypatch):
    """The CSR kernel and the chunked gather (GPUs, bf16) agree with the dense product."""
    B, d, F = 9, 7, 31
    pattern = random_pattern(B, F, density)
    a, b = torch.randn(B, d, dtype=torch.float64), torch.randn(F, d, dtype=torch.float64)
    want = (a @ b.T)[pattern.tokens, pattern.features]
    torch.testing.assert_close(sparse._sampled_dots_csr(a, b, pattern), want)
    monkeypatch.setattr(sparse, "GATHER_CHUNK_BYTES", 3 * 2 * d * 8)  # three pairs a chunk
    torch.testing.assert_close(sparse._sampled_dots_gathered(a, b, pattern), want)


@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
def test_sparse_decode_gradcheck(density):
    B, d, F = 6, 5, 23
    pattern = random_pattern(B, F, density)
    values = torch.randn(pattern.nnz, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(F, d, dtype=torch.float64, requires_grad=True)
    dense = torch.zeros(B, F, dtype=torch.float64)
    dense[pattern.tokens, pattern.features] = values.detach()
    torch.testing.assert_close(sparse_decode(values, pattern, W_dec), dense @ W_dec.detach())
    assert gradcheck(lambda v, W: sparse_decode(v, pattern, W), (values, W_dec))


@pytest.mark.parametrize("with_b_enc", [True, False])
@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
def test_pre_acts_at_gradcheck(density, with_b_enc):
    B, d, F = 6, 5, 23
    pattern = random_pattern(B, F, density, seed=2)
    x = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    W = torch.randn(d, F, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(F, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(d, dtype=torch.float64, requires_grad=True)

    def at(x, W, b_enc, b_dec):
        b = b_enc if with_b_enc else None
        pre = ((x - b_dec) @ W + (0 if b is None else b)).detach()  # recomputed for every probe
        return pre_acts_at(pre, pattern, x, W, b, b_dec)

    assert gradcheck(at, (x, W, b_enc, b_dec))


@pytest.mark.parametrize("given", [False, True])
def test_dense_pre_acts_gradcheck(given):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(9, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def dense(x, W, b_enc, b_dec):
        pre = torch.addmm(b_enc, x - b_dec, W).detach() if given else None
        return dense_pre_acts(x, W, b_enc, b_dec, pre)

    assert gradcheck(dense, (x, W, b_enc, b_dec))
    assert gradcheck(lambda x, W, b_dec: dense_pre_acts(x, W, None, b_dec), (x, W, b_dec))


def test_a_wrong_kernel_fails_the_comparison(monkeypatch):
    """The comparison is sharp enough to see a kernel that drops b_dec's encoder share."""
    real = sparse._bias_gradients

    def without_b_dec_share(G, W_enc, needs_b_enc, needs_b_dec):
        grad_b_enc, grad_b_dec = real(G, W_enc, needs_b_enc, needs_b_dec)
        return grad_b_enc, None if grad_b_dec is None else torch.zeros_like(grad_b_dec)

    monkeypatch.setattr(sparse, "_bias_gradients", without_b_dec_share)
    sae = make("topk", 6, 19, 3)
    with pytest.raises(AssertionError, match="gradient of b_dec"):
        check_against_reference(sae, torch.randn(5, 6, dtype=torch.float64), LossParams())


def test_the_cutover_follows_the_device_and_autocast(monkeypatch):
    """CPU: its own measured cut-over; a GPU: the fp32 one, or under bf16 or fp16 autocast
    the 16-bit one for wide dictionaries and 0 (dense) for narrower ones (simulated here on
    the meta device, which has no autocast of its own)."""
    cpu, gpu = torch.device("cpu"), torch.device("meta")
    monkeypatch.setattr(sparse, "SPARSE_BELOW_DENSITY", 0.3)
    monkeypatch.setattr(sparse, "SPARSE_BELOW_DENSITY_GPU", 0.2)
    monkeypatch.setattr(sparse, "SPARSE_BELOW_DENSITY_GPU_HALF", 0.1)
    monkeypatch.setattr(sparse, "SPARSE_MIN_FEATURES_GPU_HALF", 1000)
    assert sparse.sparse_cutover(cpu, 10) == 0.3 and sparse.sparse_cutover(gpu, 10) == 0.2
    with torch.autocast("cpu", torch.bfloat16):
        assert sparse.sparse_cutover(cpu, 10) == 0.3
    autocast = {"dtype": torch.bfloat16}
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: True)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda kind=None: True)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda kind: autocast["dtype"])
    assert sparse.sparse_cutover(gpu, 1000) == 0.1 and sparse.sparse_cutover(gpu, 999) == 0.0
    autocast["dtype"] = torch.float16
    assert sparse.sparse_cutover(gpu, 5000) == 0.1
    autocast["dtype"] = torch.float32
    assert sparse.sparse_cutover(gpu, 10) == 0.2
    # A cut-over of 0 means the dense path without reading the count from the device.
    monkeypatch.setattr(sparse, "SPARSE_BELOW_DENSITY", 0.0)
    assert sparse.sparse_mask(torch.zeros(4, 8), 0.0) is None


# What a CUDA graph cannot capture: reading a device value on the host, or an output
# whose size is data (both synchronise a GPU; in a capture, both fail).
HOST_READS = {"aten.nonzero.default", "aten._local_scalar_dense.default", "aten.masked_select.default",
              "aten.repeat_interleave.Tensor", "aten.unique_consecutive.default", "aten._unique2.default",
              "aten.item.default"}


class _NoHostReads(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        assert str(func) not in HOST_READS, f"{func} reads the device or sizes its output by the data"
        if str(func).split(".")[1] in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1]
            assert not any(t is not None and t.dtype == torch.bool for t in indices), f"{func} by a mask"
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dead", ["no-dead", "some-dead", "all-dead"])
@pytest.mark.parametrize("transcoder", [{}, {"transcoder": True, "d_out": 9, "skip": True}], ids=["sae", "skip-transcoder"])
def test_a_static_shapes_step_never_reads_the_device(arch, dead, transcoder):
    """Forward and backward under ``static_shapes`` with a tensor sparsity coefficient,
    as ``training.graphed_step`` captures them: no op of a data-dependent size or host
    read (the same step on the sparse path lists its pairs, which the check catches)."""
    sae = make(arch, 8, 60, 4, **transcoder).float()
    x = torch.randn(33, 8)
    target = torch.randn(33, 9) if transcoder else None
    params = LossParams(sparsity_coeff=torch.tensor(0.2), dead_mask=DEAD[dead](60), jumprelu_bandwidth=0.4)
    with sparse.static_shapes(), _NoHostReads():
        out = sae(x, target, params)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        torch.stack([torch.isfinite(out.loss), out.fired.any(), out.n_active > 0])
    assert all(torch.isfinite(p.grad).all() for p in sae.parameters())
    with pytest.raises(AssertionError, match="reads the device|by a mask"), _NoHostReads():
        sae(x, target, LossParams(sparsity_coeff=0.2, dead_mask=torch.ones(60, dtype=torch.bool)))


def test_static_shapes_is_scoped():
    assert not sparse.shapes_static()
    with sparse.static_shapes():
        assert sparse.shapes_static() and sparse.sparse_cutover(torch.device("cpu"), 10) == 0.0
        with pytest.raises(RuntimeError):
            with sparse.static_shapes():
                raise RuntimeError
        assert sparse.shapes_static()
    assert not sparse.shapes_static()
