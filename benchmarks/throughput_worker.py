"""One library's training step, run one step at a time for benchmarks/train_throughput.py.

Not meant to be run by hand: the coordinator starts one worker per library, in that
library's own virtual environment (saekit: the coordinator's own Python; a peer:
.peers/<peer>/bin/python, or with ``--peer-site`` the coordinator's Python with the
peer's wheels first on PYTHONPATH), so this file imports nothing from saekit unless it is
the saekit worker. The library is imported once; each (data, architecture, width) gets a
fresh trainer. It talks JSON lines: commands on stdin, replies on what was stdout (the
libraries' own prints are sent to stderr).

    python throughput_worker.py LIBRARY
    → {"ready": true, "version": ..., "torch": ..., "import_rss_mb": ...}
    {"cmd": "init", "spec": {...}} → {"ok": true}         a new trainer; the peak RSS restarts here
    {"cmd": "step", "batch": i}    → {"seconds": ...}     one optimiser step on training batch i
    {"cmd": "stats"}               → {"peak_rss_mb": ..., "peak_cuda_mb": ...} the peaks since init
    {"cmd": "fvu"}                 → {"fvu": ...}         on the held-out rows, the same code for all
    {"cmd": "quit"}                → {"bye": true}

Each library is stepped the way its users step it:

* saekit: ``DictionaryTrainer.train_step(x)`` after ``init_from_sample``, as ``saekit
  train`` does (activation scale, geometric-median ``b_dec``, schedules, dead features,
  unit-norm decoder rows, all inside ``train_step``).
* dictionary_learning: the architecture's trainer ``update(step, x)``, with the inputs
  divided by the norm factor that ``trainSAE(normalize_activations=True)`` divides them
  by (estimated on the same sample), that division inside the timed step as in its loop.
* SAELens: ``SAETrainer.step(batch)``, the seam its ``fit`` loop calls (the activation
  scaler, ``training_forward_pass``, backward, gradient clipping, Adam, schedulers),
  with fit's per-step bookkeeping around it; ``normalize_activations=
  "expected_average_only_in"``, its scaling factor estimated on the same sample.
* sparsify: its ``Trainer.fit`` loop itself (it has no per-step method), run in a
  thread on a stand-in language model whose one hooked layer outputs the batch the
  coordinator sent; a step is the time from handing over a batch to the loop asking for
  the next one (forward, backward, decoder-gradient projection, its default optimiser,
  dead-latent bookkeeping).

Schedules are set so that every timed step is a mid-run step for every library: the
learning-rate and sparsity warm-ups end with the untimed warm-up steps, and the run is
long enough that no decay starts. Everything else is each library's default.

Device and precision (the spec's ``device``, cpu or cuda, and ``autocast``, none or
bf16): the dictionary, the sample and each batch are on the device (the batch is copied
there before the clock starts), the clock is read after ``torch.cuda.synchronize``, and
bf16 is each library's own mixed precision, its weights and optimiser state staying fp32:

* saekit: its own ``TrainConfig(autocast="bf16")`` (``saekit train --autocast bf16``),
  which runs ``train_step``'s forward inside ``torch.autocast(device, bfloat16)``;
* dictionary_learning: what ``trainSAE(autocast_dtype=...)`` does: the batch cast to
  ``autocast_dtype``, then ``update`` inside ``torch.autocast("cuda", autocast_dtype)``
  (float32 by default, so its fp32 runs autocast too). trainSAE has no autocast on CPU,
  where its bf16 batch would meet fp32 weights and fail; on CPU bf16 runs the same
  wrapping with ``device_type="cpu"``;
* SAELens: its own ``SAETrainerConfig(autocast=True)``, which wraps the forward pass in
  ``torch.autocast(device_type, bfloat16)`` on any device;
* sparsify: its ``SparseCoder.forward`` carries ``@torch.autocast("cuda", bfloat16)``
  always (where the GPU has bf16), so on CUDA it runs bf16 whatever is asked, and its
  ``fit`` sets TF32 matmuls; its row's ``precision`` says so. On CPU bf16 the same
  decorator is put on the forward with ``device_type="cpu"``.

The memory figure on CUDA is ``torch.cuda.max_memory_allocated`` since init (each
library is its own process); on CPU the RSS high-water mark. FVU is computed the same way
for all, in fp32 with autocast off (sparsify's forward is called without its decorator),
on the device.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import importlib.metadata
import json
import os
import queue
import resource
import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

LAYER = 15  # the hook point's layer, for the peers' configs that ask for one (resid_post.15)
LM_NAME = "SmolLM2-135M-Instruct"


def rss_mb() -> float:
    """The current resident set, from /proc (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def batches_of(x: Tensor, batch_size: int):
    return (x[i : i + batch_size] for i in range(0, x.shape[0] - batch_size + 1, batch_size))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock reads work done, not work queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_autocast(device: torch.device, autocast: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device, bfloat16)`` when the run asks for bf16, else nothing."""
    if autocast == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_name(autocast: str) -> str:
    return "bf16 autocast" if autocast == "bf16" else "fp32"


class SaekitRunner:
    def __init__(self, spec: dict[str, Any], sample: Tensor):
        from saekit.config import TrainConfig
        from saekit.dictionaries import ARCHITECTURES, DictionaryConfig
        from saekit.training import DictionaryTrainer

        arch, B, W, T = spec["arch"], spec["batch_size"], spec["warmup"], spec["total_steps"]
        device = torch.device(spec["device"])
        k = spec["k"] if ARCHITECTURES[arch].uses_k else None
        cfg = TrainConfig(
            arch=arch, k=k, expansion=spec["expansion"], batch_size=B, tokens=T * B,
            lr_warmup=W / T, sparsity_warmup=W / T, buffer_tokens=max(B, sample.shape[0]),
            eval_tokens=0, device=spec["device"], hook=spec["hook"], autocast=spec["autocast"],
        )
        d = sample.shape[1]
        dict_cfg = DictionaryConfig(arch=arch, d_in=d, d_sae=d * spec["expansion"], k=k, hook=spec["hook"])
        self.trainer = DictionaryTrainer(cfg, dict_cfg, device)
        self.trainer.init_from_sample(sample)
        self.precision = precision_name(spec["autocast"])

    def step(self, i: int, x: Tensor) -> None:
        self.trainer.train_step(x)  # under bf16 autocast when the config says so (--autocast)

    def reconstructor(self) -> Callable[[Tensor], Tensor]:
        # The dictionary as a user gets it at the end of a run: calibrated (BatchTopK's
        # threshold), the activation scale folded in, acting on raw activations.
        final = self.trainer.finished_dictionary()
        return final.reconstruct  # as users call it (TopK: through the sparse codes)

    @staticmethod
    def load() -> str:
        importlib.import_module("saekit.training")
        return importlib.import_module("saekit").__version__


class DictionaryLearningRunner:
    def __init__(self, spec: dict[str, Any], sample: Tensor):
        from dictionary_learning import trainers

        arch, W, T = spec["arch"], spec["warmup"], spec["total_steps"]
        d = sample.shape[1]
        device = torch.device(spec["device"])
        common = dict(steps=T, activation_dim=d, dict_size=d * spec["expansion"], layer=LAYER,
                      lm_name=LM_NAME, seed=spec["seed"], device=spec["device"], warmup_steps=W)
        if arch in ("topk", "batchtopk"):
            cls = trainers.TopKTrainer if arch == "topk" else trainers.BatchTopKTrainer
            # The inference threshold is tracked from threshold_start_step on (default
            # 1000): start it with the timed steps, as in the middle of a real run.
            self.trainer = cls(k=spec["k"], threshold_start_step=W, **common)
        else:
            cls = {"relu": trainers.StandardTrainer, "gated": trainers.GatedSAETrainer,
                   "jumprelu": trainers.JumpReluTrainer}[arch]
            self.trainer = cls(sparsity_warmup_steps=W, **common)
        # trainSAE(normalize_activations=True): x / sqrt(E‖x‖²), so E‖x‖² = 1.
        self.norm_factor = float(sample.pow(2).sum(-1).mean().sqrt())
        # trainSAE(autocast_dtype=...): the batch cast to that dtype, the update inside
        # torch.autocast on CUDA (float32 by default); see the module docstring for CPU.
        self.act_dtype = torch.bfloat16 if spec["autocast"] == "bf16" else torch.float32
        if device.type == "cuda":
            self.autocast = torch.autocast(device.type, dtype=self.act_dtype)
        else:
            self.autocast = bf16_autocast(device, spec["autocast"])
        self.precision = precision_name(spec["autocast"])

    def step(self, i: int, x: Tensor) -> None:
        act = x.to(dtype=self.act_dtype) / self.norm_factor
        with self.autocast:
            self.trainer.update(i, act)

    def reconstructor(self) -> Callable[[Tensor], Tensor]:
        ae, s = self.trainer.ae, self.norm_factor
        return lambda x: ae(x / s) * s

    @staticmethod
    def load() -> str:
        importlib.import_module("dictionary_learning.trainers")
        return importlib.metadata.version("dictionary-learning")


class SAELensRunner:
    def __init__(self, spec: dict[str, Any], sample: Tensor):
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.saes import (
            BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, GatedTrainingSAE, GatedTrainingSAEConfig,
            JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig,
            TopKTrainingSAE, TopKTrainingSAEConfig,
        )
        from sae_lens.training.sae_trainer import SAETrainer

        arch, B, W, T = spec["arch"], spec["batch_size"], spec["warmup"], spec["total_steps"]
        d = sample.shape[1]
        common = dict(d_in=d, d_sae=d * spec["expansion"], device=spec["device"], dtype="float32",
                      normalize_activations="expected_average_only_in")
        torch.manual_seed(spec["seed"])
        if arch == "relu":
            sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_warm_up_steps=W, **common))
        elif arch == "gated":
            sae = GatedTrainingSAE(GatedTrainingSAEConfig(l1_warm_up_steps=W, **common))
        elif arch == "jumprelu":
            sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(l0_warm_up_steps=W, **common))
        elif arch == "topk":
            sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=spec["k"], **common))
        else:
            sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=spec["k"], **common))
        n_norm = max(1, sample.shape[0] // B)
        lr = SAETrainerConfig.__dataclass_fields__["lr"].default
        cfg = SAETrainerConfig(
            total_training_samples=T * B, train_batch_size_samples=B, lr=lr, lr_end=lr, lr_warm_up_steps=W,
            device=spec["device"], autocast=spec["autocast"] == "bf16",  # its own mixed-precision option
            logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=n_norm,
        )
        self.trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
        self.trainer.sae.to(spec["device"])
        self.precision = precision_name(spec["autocast"])
        # What fit() does before its loop: the scaling factor from the first batches.
        self.trainer.activation_scaler.estimate_scaling_factor(
            d_in=d, data_provider=batches_of(sample, B), n_batches_for_norm_estimate=n_norm
        )

    def step(self, i: int, x: Tensor) -> None:
        # fit()'s loop body without wandb and checkpoints (both off here).
        self.trainer.maybe_reset_sparsity()
        self.trainer.step(x)
        self.trainer.n_training_steps += 1

    def reconstructor(self) -> Callable[[Tensor], Tensor]:
        sae, scaler = self.trainer.sae, self.trainer.activation_scaler
        sae.eval()
        return lambda x: scaler.unscale(sae(scaler.scale(x)))

    @staticmethod
    def load() -> str:
        importlib.import_module("sae_lens.training.sae_trainer")
        return importlib.metadata.version("sae-lens")


class _StopFit(Exception):
    """Raised inside sparsify's loop (from the stand-in model) to end it."""


class _ActivationFeed(nn.Module):
    """A stand-in language model for sparsify's Trainer: one layer, whose output is the
    batch of activations handed over by ``SparsifyRunner.step``.

    sparsify trains by hooking a model's layers during its forward passes; this model's
    forward waits for the next batch, so the loop runs one step per batch handed over,
    and its entry marks the end of the previous step (after the optimiser step).
    """

    def __init__(self, d: int, threads: int, device: torch.device):
        super().__init__()
        self.layers = nn.ModuleList([nn.Identity()])
        self.d, self.threads, self._device = d, threads, device
        self.batches: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.feeding = False  # False while sparsify probes widths (a dummy forward at construction)

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dummy_inputs(self) -> dict[str, Tensor]:
        return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    def forward(self, input_ids: Tensor) -> Tensor:
        if not self.feeding:
            return self.layers[0](torch.zeros(*input_ids.shape, self.d, device=self._device))
        self.done.put(None)  # the previous step is over
        x = self.batches.get()
        if x is None:
            raise _StopFit
        return self.layers[0](x.view(*input_ids.shape, self.d))


class SparsifyRunner:
    def __init__(self, spec: dict[str, Any], sample: Tensor):
        import tempfile

        from sparsify import SparseCoderConfig, TrainConfig, Trainer

        if spec["arch"] != "topk":
            raise ValueError(f"sparsify has no {spec['arch']} architecture")
        d, B = sample.shape[1], spec["batch_size"]
        device = torch.device(spec["device"])
        self.model = _ActivationFeed(d, spec["threads"], device)
        self.save_dir = tempfile.mkdtemp(prefix="sparsify-bench-")
        cfg = TrainConfig(
            SparseCoderConfig(k=spec["k"], expansion_factor=spec["expansion"]),
            batch_size=1, hookpoints=["layers.0"], log_to_wandb=False, save_every=10**9,
            save_dir=self.save_dir, init_seeds=[spec["seed"]],
        )
        # One "sequence" of B positions per batch; the stand-in model ignores the ids.
        rows = spec["warmup"] + spec["steps"] + 2
        dataset = [{"input_ids": torch.zeros(B, dtype=torch.long)} for _ in range(rows)]
        self.trainer = Trainer(cfg, dataset, self.model)
        if device.type == "cuda":
            # Its forward's own @torch.autocast("cuda", bfloat16), on whatever is asked.
            own = torch.cuda.is_bf16_supported()
            self.precision = "bf16 autocast (its own, always on CUDA)" if own else "fp32"
        else:
            if spec["autocast"] == "bf16":  # the same decorator, for the CPU
                for sae in self.trainer.saes.values():
                    sae.forward = torch.autocast("cpu", dtype=torch.bfloat16)(sae.forward)
            self.precision = precision_name(spec["autocast"])
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._fit, daemon=True)
        self.model.feeding = True
        self.thread.start()
        self._wait()  # the loop has reached its first forward pass

    def _fit(self) -> None:
        torch.set_num_threads(self.model.threads)
        try:
            self.trainer.fit()
        except _StopFit:
            pass
        except BaseException as e:  # handed to the main thread
            self.error = e
            self.model.done.put(None)

    def _wait(self) -> None:
        self.model.done.get()
        if self.error is not None:
            raise RuntimeError(f"sparsify's training loop failed: {self.error!r}") from self.error

    def step(self, i: int, x: Tensor) -> None:
        self.model.batches.put(x.unsqueeze(0))
        self._wait()

    def reconstructor(self) -> Callable[[Tensor], Tensor]:
        sae = next(iter(self.trainer.saes.values()))
        optimisers = [o for o in self.trainer.optimizers if hasattr(o, "eval")]
        # FVU in fp32 for all: the forward without its own autocast decorator.
        forward = getattr(type(sae).forward, "__wrapped__", type(sae).forward)

        def reconstruct(x: Tensor) -> Tensor:
            # Schedule-free optimisers keep the evaluation weights apart; sparsify
            # switches to them before it saves, and so do we (and back after).
            for o in optimisers:
                o.eval()
            try:
                return forward(sae, x).sae_out
            finally:
                for o in optimisers:
                    o.train()

        return reconstruct

    def close(self) -> None:
        self.model.batches.put(None)
        self.thread.join(timeout=60)

    @staticmethod
    def load() -> str:
        importlib.import_module("sparsify")
        return importlib.metadata.version("eai-sparsify")


RUNNERS = {
    "saekit": SaekitRunner,
    "dictionary-learning": DictionaryLearningRunner,
    "sae-lens": SAELensRunner,
    "sparsify": SparsifyRunner,
}


@torch.no_grad()
def fvu(reconstruct: Callable[[Tensor], Tensor], heldout: np.ndarray, chunk: int, device: torch.device) -> float:
    """Σ‖x − x̂‖² / Σ‖x − mean‖² over the held-out rows (docs/metrics.md, ``fvu``), in float64
    sums; the reconstruction in fp32 on the device, autocast off."""
    x_all = torch.from_numpy(np.array(heldout, dtype=np.float32))
    err = 0.0
    for i in range(0, x_all.shape[0], chunk):
        x = x_all[i : i + chunk].to(device)
        with torch.autocast(device.type, enabled=False):
            x_hat = reconstruct(x)
        err += float((x.double() - x_hat.double()).pow(2).sum())
    x64 = x_all.double()
    return err / float((x64 - x64.mean(0)).pow(2).sum())


def reset_peak_rss() -> bool:
    """Restart the kernel's resident-set high-water mark (Linux ≥ 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


def release_memory() -> None:
    """Hand freed memory back to the system, so the next trainer's peak starts clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Session:
    """One trainer on one data set: what an ``init`` command sets up."""

    def __init__(self, runner_cls: type, spec: dict[str, Any]):
        self.spec = spec
        self.device = torch.device(spec["device"])
        self.train = np.load(spec["train"], mmap_mode="r")
        self.heldout = np.load(spec["heldout"], mmap_mode="r")
        sample = torch.from_numpy(np.array(self.train[: spec["sample_rows"]], dtype=np.float32)).to(self.device)
        self.runner = runner_cls(spec, sample)

    def batch(self, i: int) -> Tensor:
        """Training batch ``i`` on the device, copied there before the clock starts."""
        B = self.spec["batch_size"]
        x = torch.from_numpy(np.array(self.train[i * B : (i + 1) * B], dtype=np.float32)).to(self.device)
        synchronize(self.device)
        return x

    def close(self) -> None:
        if hasattr(self.runner, "close"):
            self.runner.close()


def main() -> None:
    library = sys.argv[1]
    # Replies go on a copy of stdout; fd 1 itself now points at stderr, so whatever the
    # libraries print (progress bars, notices) cannot corrupt the protocol.
    reply_to = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def reply(obj: dict[str, Any]) -> None:
        reply_to.write(json.dumps(obj) + "\n")

    runner_cls = RUNNERS[library]
    version = runner_cls.load()
    reply({"ready": True, "version": version, "torch": torch.__version__, "import_rss_mb": rss_mb(),
           "cuda": torch.cuda.is_available()})
    session: Session | None = None
    exact_peak = on_cuda = False
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "init":
            if session is not None:
                session.close()
                session = None
                release_memory()
            torch.set_num_threads(cmd["spec"]["threads"])
            on_cuda = torch.device(cmd["spec"]["device"]).type == "cuda"
            if on_cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            exact_peak = reset_peak_rss()
            session = Session(runner_cls, cmd["spec"])
            reply({"ok": True, "precision": session.runner.precision})
        elif cmd["cmd"] == "step":
            x = session.batch(cmd["batch"])
            t0 = time.perf_counter()
            session.runner.step(cmd["batch"], x)
            synchronize(session.device)
            reply({"seconds": time.perf_counter() - t0})
        elif cmd["cmd"] == "stats":
            reply({"peak_rss_mb": peak_rss_since_reset_mb() if exact_peak else peak_rss_mb(),
                   "peak_since": "init" if exact_peak else "start",
                   "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None})
        elif cmd["cmd"] == "fvu":
            reply({"fvu": fvu(session.runner.reconstructor(), session.heldout, session.spec["batch_size"], session.device)})
        elif cmd["cmd"] == "quit":
            if session is not None:
                session.close()
            reply({"bye": True})
            return
        else:
            raise ValueError(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main()
