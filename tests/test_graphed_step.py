"""The training step replayed from a CUDA graph (``training.graphed_step``) trains the
same dictionary as the step run op by op: same weights after many steps (dead
features, aux-k and resampling included), the same refusals of NaN with the weights
left as they were, and batches of another size stepped eagerly in between.

These need a GPU and are skipped without one; the static-shape step they capture is
checked on the CPU against the reference objective in test_kernels.py."""

import pytest
import torch

from saekit.config import TrainConfig
from saekit.dictionaries import ARCHITECTURES, DictionaryConfig
from saekit.errors import TrainingDivergedError
from saekit.training import DictionaryTrainer, graphed_step

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

D, F, B = 64, 512, 256


@pytest.fixture(autouse=True)
def graphs_everywhere(monkeypatch):
    """The tests below are about the graph's mechanics: graph every architecture at
    every width and precision (``graph_pays`` decides where it is used; tested last)."""
    monkeypatch.setattr("saekit.training.trainer.graph_pays", lambda device, *rest: device.type == "cuda")


def batches(n: int, seed: int = 0, b: int = B, device: str = "cuda") -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(256, D, generator=g), dim=-1)
    idx = torch.randint(0, 256, (n * b, 8), generator=g)
    x = (atoms[idx] * torch.rand(n * b, 8, 1, generator=g) * 3).sum(1) + 0.5
    return list(x.to(device).split(b))


def trainer(arch: str, graphs: bool, autocast: str = "none", transcoder: bool = False,
            device: str = "cuda") -> DictionaryTrainer:
    k = 8 if ARCHITECTURES[arch].uses_k else None
    # A short dead window, so that aux-k and resampling take part within the test.
    cfg = TrainConfig(arch=arch, k=k, dict_size=F, batch_size=B, tokens=40 * B, buffer_tokens=B, eval_tokens=0,
                      device=device, hook="resid_post.1", autocast=autocast, cuda_graphs=graphs,
                      dead_after_tokens=3 * B)
    extra = {"transcoder": True, "target": "resid_post.2", "skip": True} if transcoder else {}
    dict_cfg = DictionaryConfig(arch=arch, d_in=D, d_sae=F, k=k, hook="resid_post.1", **extra)
    t = DictionaryTrainer(cfg, dict_cfg, torch.device(device))
    sample = torch.cat(batches(4, device=device))
    t.init_from_sample(sample, sample.roll(1, dims=1) if transcoder else None)
    return t


def assert_same_weights(a: DictionaryTrainer, b: DictionaryTrainer, tol: float) -> None:
    """Each parameter within ``tol`` of the other's, relative to its norm. Not element by
    element: Adam turns a gradient of 1e-10 into a step of a tenth of the learning rate,
    so rounding noise in a feature's near-zero gradient moves it visibly (seen: one
    BatchTopK feature off by 4e-5 after one step, every other within 2e-8)."""
    for (name, p), q in zip(a.sae.named_parameters(), b.sae.parameters()):
        gap = float((p - q).detach().norm() / q.detach().norm().clamp_min(1e-12))
        assert gap < tol, f"{name} differs by {gap:.2e} of its norm"


@needs_gpu
@pytest.mark.parametrize("autocast", ["none", "bf16"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_graphed_run_trains_the_same_weights(arch, autocast):
    graphed, eager = trainer(arch, True, autocast), trainer(arch, False, autocast)
    assert graphed.graphs and not eager.graphs
    # Rounding differs (sums in another order, and bf16 where autocast is on): the runs
    # stay together, not bit for bit.
    tol = 1e-3 if autocast == "none" else 2e-2
    for x in batches(30, seed=1):
        a, b = graphed.train_step(x), eager.train_step(x)
        torch.testing.assert_close(a.out.loss, b.out.loss, rtol=tol, atol=1e-4)
        assert a.resampled == b.resampled
    assert graphed.graphed is not None and eager.graphed is None
    assert_same_weights(graphed, eager, tol)


@needs_gpu
def test_a_graphed_transcoder_trains_the_same_weights():
    graphed, eager = trainer("topk", True, transcoder=True), trainer("topk", False, transcoder=True)
    for x in batches(12, seed=2):
        graphed.train_step(x, x.roll(1, dims=1))
        eager.train_step(x, x.roll(1, dims=1))
    assert_same_weights(graphed, eager, 1e-3)


@needs_gpu
def test_a_batch_of_another_size_steps_eagerly_in_between():
    graphed, eager = trainer("relu", True), trainer("relu", False)
    data = batches(6, seed=3)
    odd = batches(1, seed=4, b=37)[0]
    for x in data[:3] + [odd] + data[3:]:
        graphed.train_step(x)
        eager.train_step(x)
    assert graphed.graphed is not None and graphed.graphed.fits(data[0], None)
    assert_same_weights(graphed, eager, 1e-3)


@needs_gpu
@pytest.mark.parametrize("what", ["input", "loss"])
def test_nan_is_refused_with_the_weights_untouched(what):
    t = trainer("topk", True)
    data = batches(3, seed=5)
    t.train_step(data[0])
    before = {name: p.detach().clone() for name, p in t.sae.named_parameters()}
    bad = data[1].clone()
    if what == "input":
        bad[7, 3] = float("nan")
        match = "activations at resid_post.1 contain NaN"
    else:
        bad[7, 3] = 1e38  # finite, but its square is not
        match = "the loss became"
    with pytest.raises(TrainingDivergedError, match=match):
        t.train_step(bad)
    for name, p in t.sae.named_parameters():
        assert torch.equal(p, before[name]), name


@needs_gpu
def test_two_graphed_dictionaries_share_a_pool_without_clobbering_each_other():
    """Steps of two dictionaries interleaved, as a sweep runs them, give what each gives alone."""
    data = batches(8, seed=6)
    pair = [trainer("topk", True), trainer("relu", True)]
    alone = [trainer("topk", True), trainer("relu", True)]
    for x in data:
        outs = [t.train_step(x) for t in pair]
        losses = [float(o.out.loss) for o in outs]
        for t, loss in zip(alone, losses):
            assert float(t.train_step(x).out.loss) == pytest.approx(loss, rel=1e-5)
    for a, b in zip(pair, alone):
        assert_same_weights(a, b, 1e-5)


@needs_gpu
def test_a_resumed_graphed_trainer_continues_like_an_uninterrupted_one():
    data = batches(10, seed=7)
    whole = trainer("jumprelu", True)
    for x in data:
        whole.train_step(x)
    first = trainer("jumprelu", True)
    for x in data[:5]:
        first.train_step(x)
    resumed = trainer("jumprelu", True)
    resumed.train_step(data[0])  # captured before the state is loaded over it
    resumed.load_state_dict(first.state_dict())
    for x in data[5:]:
        resumed.train_step(x)
    assert_same_weights(whole, resumed, 1e-5)


def test_graphs_are_used_where_they_were_measured_to_pay():
    """On a GPU: under bf16 below the width where the step turns sparse (ReLU wider too),
    in fp32 only for the ReLU-like architectures and narrower; never on a CPU."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    pays = graphed_step.graph_pays
    assert pays(cuda, "topk", 4608, "bf16") and pays(cuda, "gated", 4608, "bf16")
    assert pays(cuda, "relu", 18432, "bf16") and not pays(cuda, "gated", 18432, "bf16")
    assert pays(cuda, "relu", 4608, "none") and pays(cuda, "jumprelu", 4608, "none")
    assert not pays(cuda, "topk", 4608, "none") and not pays(cuda, "batchtopk", 512, "none")
    assert not pays(cuda, "relu", 18432, "none")
    assert not pays(cpu, "relu", 64, "bf16")
    assert {arch for _, arch in graphed_step.GRAPH_MAX_FEATURES} - {"*"} <= set(ARCHITECTURES)


def test_a_trainer_on_a_cpu_steps_op_by_op():
    t = trainer("relu", True, device="cpu")
    assert not t.graphs and t.graphed is None


@needs_gpu
@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_saekit_train_on_a_gpu_graphs_the_step_and_trains_the_same_dictionary(arch, model_dir, corpus, tmp_path,
                                                                             monkeypatch):
    """A whole run from text (buffer, log, checkpoints, evaluation) with graphs and without."""
    from test_train import small_cfg

    from saekit import train

    captured = []

    class Counted(graphed_step.GraphedObjective):
        def __init__(self, *args, **kw):
            captured.append(1)
            super().__init__(*args, **kw)

    monkeypatch.setattr("saekit.training.trainer.GraphedObjective", Counted)
    results = {}
    for graphs in (True, False):
        cfg = small_cfg(model_dir, corpus, tmp_path / f"run-{graphs}", arch=arch, device="cuda", autocast="bf16",
                        cuda_graphs=graphs)
        results[graphs] = train(cfg).heldout
    assert captured == [1], "one capture, in the run with graphs"
    assert results[True].fvu == pytest.approx(results[False].fvu, rel=0.05, abs=0.01)
    assert results[True].l0 == pytest.approx(results[False].l0, rel=0.1, abs=0.5)


def test_a_capture_that_fails_costs_speed_not_the_run(monkeypatch, caplog):
    """Where a torch or driver cannot capture the step, it warns once and steps op by op,
    exactly as a trainer without graphs (simulated on the CPU: the capture raises)."""

    class Uncapturable:
        def __init__(self, *args, **kw):
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr("saekit.training.trainer.graph_pays", lambda *args: True)
    monkeypatch.setattr("saekit.training.trainer.GraphedObjective", Uncapturable)

    tried, plain = trainer("topk", True, device="cpu"), trainer("topk", False, device="cpu")
    assert tried.graphs
    with caplog.at_level("WARNING", logger="saekit.training.trainer"):
        for x in batches(5, seed=8, device="cpu"):
            tried.train_step(x)
            plain.train_step(x)
    assert not tried.graphs and tried.graphed is None
    assert [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()] == [
        "could not capture the topk dictionary's step in a CUDA graph (operation not permitted when stream is "
        "capturing); it runs op by op (--no-cuda-graphs skips the attempt)"
    ]
    for p, q in zip(tried.sae.parameters(), plain.sae.parameters()):
        assert torch.equal(p, q)

