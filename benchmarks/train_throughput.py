"""Training throughput of saekit against SAELens, dictionary_learning and sparsify.

    bash benchmarks/peers_setup.sh                          # once: one venv per peer in .peers/
    .venv/bin/python benchmarks/train_throughput.py         # relu and topk (17 min on a busy 2-core machine)
    .venv/bin/python benchmarks/train_throughput.py --archs all --json out.json   # every architecture
    bash benchmarks/gpu_peers.sh                            # on the lent GPU machine: fp32 and bf16 tables

Flags: --data synthetic|cached|both (both), --archs (relu,topk; or all), --expansions
(8,32), --libraries (saekit,sae-lens,dictionary-learning,sparsify), --steps (3 timed),
--warmup (1 untimed), --threads (2), --device cpu|cuda (cpu), --autocast none|bf16
(none), --json FILE, --peer-site DIR (each peer runs with this Python and DIR/<peer>
first on PYTHONPATH instead of its venv: what benchmarks/gpu_peers.sh installs from the
wheels of benchmarks/peer_wheels.sh, where the venvs cannot travel).

Every library trains on the same activations, the same batches in the same order:

* ``synthetic``: sparse non-negative combinations (about 20 per token, Zipf-like
  frequencies) of 4,096 random unit directions in d = 576, plus a constant offset and
  Gaussian noise, so that a dictionary that learns has something to find and FVU falls;
* ``cached``: SmolLM2-135M-Instruct's resid_post.15 on the embedded text, written once
  with ``saekit cache`` under ~/.cache/saekit-bench/ and reused, rows shuffled once; the
  rare tokens above 10x the median norm are dropped (``--max-norm-ratio``, see
  ``cached_activations``).

Both are written to one ``.npy`` in a temporary folder that every worker memory-maps.
Each library runs in its own process and its own virtual environment
(benchmarks/throughput_worker.py says how each one's step is called: the way its users
call it). The coordinator steps them in turn, one step each per round, so that whatever
else the machine does hits all of them alike; a worker times its own step with
``perf_counter`` (the batch is already in memory). Untimed warm-up steps come first
(initialisation from data, the libraries' warm-up schedules), then the timed steps;
every worker uses ``torch.set_num_threads(2)`` (``--threads``), fp32, batch 4,096.

``--device cuda`` puts every library's dictionary and batches on the GPU and reads the
clock after ``torch.cuda.synchronize``; ``--autocast bf16`` runs every library's step in
its own bf16 mixed precision (each library's wrapping or option, weights fp32; the worker's
docstring says which: sparsify's forward is bf16 on CUDA whatever is asked, and its row
says so). The dense bound is then timed on the same device in the same dtype, and the
memory column is ``torch.cuda.max_memory_allocated`` per trainer instead of RSS.

Printed per (data, architecture, width, library): tokens/s over the timed steps,
saekit ÷ the fastest peer, the share of the machine's dense bound, FVU on held-out rows
(Σ‖x − x̂‖² / Σ‖x − mean‖², the same code for all) after the warm-up and after the timed
steps, and the worker's peak RSS while it built and trained that dictionary (the
kernel's high-water mark, restarted for each new trainer; it includes the library's
imports, given in the JSON as ``import_rss_mb``). The dense bound is what a dense step could do
at the measured matmul rate: a step is five B×d×F products (two forward, three in
backward: 10·d·F FLOPs per token), timed here at each width with the same thread count.

Architectures: ReLU+L1 (``relu``), TopK (``topk``, k = 32), and those a peer also has:
BatchTopK, gated and JumpReLU (SAELens and dictionary_learning; sparsify has TopK only).
A library without an architecture simply has no row for it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from throughput_worker import precision_name, synchronize  # the workers' names for precisions; the clock's wait

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "throughput_worker.py"

# Which library has which architecture (saekit's names).
ARCHS = {
    "saekit": ("relu", "topk", "batchtopk", "gated", "jumprelu"),
    "sae-lens": ("relu", "topk", "batchtopk", "gated", "jumprelu"),
    "dictionary-learning": ("relu", "topk", "batchtopk", "gated", "jumprelu"),
    "sparsify": ("topk",),
}
LIBRARIES = tuple(ARCHS)
ALL_ARCHS = ARCHS["saekit"]
# The default run covers the two architectures that every peer has but sparsify's (17 min
# on a busy 2-core machine); --archs all adds BatchTopK, gated and JumpReLU.
DEFAULT_ARCHS = ("relu", "topk")

D_SYNTHETIC = 576  # SmolLM2-135M's width, so both data sets give the same shapes
MODEL_HOOK = "resid_post.15"  # the middle of SmolLM2-135M's 30 layers
CACHE_TOKENS = 131_072  # the smallest cache written (more when the run needs more)
SAMPLE_ROWS = 65_536  # rows the libraries initialise from (scale, b_dec), saekit's buffer size
READY_TIMEOUT_S = 900  # imports on a busy 2-core machine can take minutes
STEP_TIMEOUT_S = 900


# ------------------------------------------------------------------------------- data


def synthetic_activations(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` rows of sparse structured activations (see the module docstring).

    Features fire with Zipf-like frequencies (p_i ∝ (i + 1)^-0.6), about 20 per row
    (Poisson), with exponential magnitudes; noise σ = 0.05 per dimension leaves an FVU
    floor of a few per cent.
    """
    rng = np.random.default_rng(seed)
    n_features, per_row, max_active = 4096, 20, 64
    directions = rng.standard_normal((n_features, d)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    p = (np.arange(n_features) + 1.0) ** -0.6
    p /= p.sum()
    offset = (0.1 * rng.standard_normal(d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    chunk = 4096
    for lo in range(0, n, chunk):
        rows = min(chunk, n - lo)
        active = np.clip(rng.poisson(per_row, rows), 1, max_active)
        idx = rng.choice(n_features, size=(rows, max_active), p=p)
        mags = rng.exponential(1.0, size=(rows, max_active)) * (np.arange(max_active) < active[:, None])
        coef = np.zeros((rows, n_features), dtype=np.float32)
        np.add.at(coef, (np.repeat(np.arange(rows), max_active), idx.ravel()), mags.ravel().astype(np.float32))
        out[lo : lo + rows] = coef @ directions + offset + 0.05 * rng.standard_normal((rows, d)).astype(np.float32)
    return out


def cached_activations(
    cache_root: Path, train_rows: int, heldout_rows: int, seed: int, max_norm_ratio: float
) -> tuple[np.ndarray, np.ndarray, str]:
    """Training rows (shuffled once, fixed seed) and held-out rows from a ``saekit cache``
    folder of the embedded model, written on first use.

    SmolLM2's residual stream has rare tokens with ~150x the median norm (about 4 in
    10,000 at resid_post.15); two of them in 8,192 held-out rows make up most of the
    held-out variance, so FVU would measure those two tokens. Rows above
    ``max_norm_ratio`` x the median norm are dropped from both sets (what saekit's own
    ``--max-norm-ratio`` does); 0 keeps every row.
    """
    tokens = max(CACHE_TOKENS, -(-train_rows // CACHE_TOKENS) * CACHE_TOKENS)
    folder = _find_cache(cache_root, tokens, heldout_rows)
    if folder is None:
        folder = cache_root / f"smollm2-135m-{MODEL_HOOK}-{tokens}"
        print(f"writing {tokens} activations of the embedded model at {MODEL_HOOK} to {folder} (once; a few minutes)",
              file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, "-m", "saekit.cli", "cache", "--hook", MODEL_HOOK, "--tokens", str(tokens),
             "--heldout-tokens", str(max(heldout_rows, 16_384)), "--out", str(folder), "--overwrite"],
            check=True,
        )
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = np.concatenate([np.load(folder / s["file"], mmap_mode="r") for s in manifest["shards"]]).astype(np.float32)
    heldout = np.load(folder / "heldout.npy", mmap_mode="r").astype(np.float32)
    dropped = ""
    if max_norm_ratio > 0:
        cap = max_norm_ratio * float(np.median(np.linalg.norm(rows, axis=1)))
        kept_rows, kept_held = np.linalg.norm(rows, axis=1) <= cap, np.linalg.norm(heldout, axis=1) <= cap
        dropped = (f", dropped {int((~kept_rows).sum())} training and {int((~kept_held).sum())} held-out rows "
                   f"above {max_norm_ratio:g}x the median norm")
        rows, heldout = rows[kept_rows], heldout[kept_held]
    if rows.shape[0] < train_rows or heldout.shape[0] < heldout_rows:
        raise SystemExit(
            f"{folder} holds {rows.shape[0]} usable training and {heldout.shape[0]} held-out rows, the run needs "
            f"{train_rows} and {heldout_rows}: remove the folder to have a larger cache written, or lower --steps"
        )
    rows = rows[np.random.default_rng(seed).permutation(rows.shape[0])[:train_rows]]
    return rows, heldout[:heldout_rows], f"{manifest['model']} {manifest['hook']} ({folder}{dropped})"


def _find_cache(root: Path, tokens: int, heldout_rows: int) -> Path | None:
    for manifest_path in sorted(root.glob(f"*-{MODEL_HOOK}-*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("tokens", 0) >= tokens and manifest.get("heldout_tokens", 0) >= heldout_rows:
            return manifest_path.parent
    return None


# ------------------------------------------------------------------------ dense bound


class DenseStep:
    """The five B×d×F matmuls of a dense training step (two forward: encoder and
    decoder; three backward: the codes' gradient and the two weight gradients), 10·d·F
    FLOPs per token. Timed once per round among the libraries' steps, so the bound
    meets the same machine noise they do."""

    def __init__(self, d: int, F: int, batch: int, device: torch.device, dtype: torch.dtype):
        gen = torch.Generator().manual_seed(0)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        self.device = device
        self.x, self.g = randn(batch, d), randn(batch, d)
        self.W_enc, self.W_dec = randn(d, F), randn(F, d)
        self.g_pre = randn(batch, F)
        self.flops = 10 * batch * d * F

    def seconds(self) -> float:
        synchronize(self.device)
        t = time.perf_counter()
        f = self.x @ self.W_enc
        f @ self.W_dec
        self.g @ self.W_dec.T
        f.T @ self.g
        self.x.T @ self.g_pre
        synchronize(self.device)
        return time.perf_counter() - t


# ---------------------------------------------------------------------------- workers


class WorkerError(RuntimeError):
    pass


class Worker:
    """One library's worker process (imported once, a new trainer per group) and its
    JSON-lines channel."""

    def __init__(self, library: str, launch: Launch, log_path: Path):
        self.library, self.log_path = library, log_path
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [launch.python, str(WORKER), library],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=launch.env, cwd=ROOT,
        )
        self.hello: dict[str, Any] | None = None

    def wait_ready(self) -> dict[str, Any]:
        if self.hello is None:
            self.hello = self.receive(READY_TIMEOUT_S)
        return self.hello

    def send(self, cmd: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(self._died()) from None

    def receive(self, timeout: float) -> dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise WorkerError(f"no answer within {timeout:.0f} s; the end of its log:\n  " + "\n  ".join(self._log_tail()))
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(self._died())
        return json.loads(line)

    def ask(self, cmd: dict[str, Any], timeout: float = STEP_TIMEOUT_S) -> dict[str, Any]:
        self.send(cmd)
        return self.receive(timeout)

    def _log_tail(self, lines: int = 15) -> list[str]:
        self.log.flush()
        return self.log_path.read_text(errors="replace").strip().splitlines()[-lines:] or ["(its log is empty)"]

    def _died(self) -> str:
        self.proc.wait(timeout=30)
        tail = self._log_tail()
        return f"{tail[-1]} (the worker exited with code {self.proc.returncode}); the end of its log:\n  " + "\n  ".join(tail)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"cmd": "quit"}, timeout=120)
            except (WorkerError, OSError, ValueError):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@dataclass(frozen=True)
class Launch:
    """How one library's worker is started: which Python, with which environment."""

    python: str
    env: dict[str, str]


def launch_for(library: str, env: dict[str, str], peers_dir: Path, peer_site: Path | None) -> Launch:
    """saekit: this Python. A peer: its venv from peers_setup.sh, or with ``peer_site`` this
    Python with ``peer_site/<peer>`` (its wheels, installed with --target) first on PYTHONPATH."""
    if library == "saekit":
        return Launch(sys.executable, env)
    if peer_site is not None:
        site = peer_site / library  # gpu_peers.sh names each folder after its peer
        if not site.is_dir():
            raise SystemExit(
                f"no folder for {library} at {site}: --peer-site wants one folder per peer, with the peer's wheels "
                f"installed in it. Make the wheels with `bash benchmarks/peer_wheels.sh` (into .whl-peers/{library}/), "
                f"install them with `python3 -m pip install --no-index --no-deps --target {site} "
                f".whl-peers/{library}/*.whl` (benchmarks/gpu_peers.sh does this for every peer), "
                f"or leave {library} out with --libraries"
            )
        path = os.pathsep.join(p for p in (str(site.resolve()), env.get("PYTHONPATH", "")) if p)
        return Launch(sys.executable, {**env, "PYTHONPATH": path})
    python = peers_dir / library / "bin" / "python"  # peers_setup.sh names each venv after its peer
    if not python.exists():
        raise SystemExit(
            f"no virtual environment for {library} at {python.parent.parent}; create the peers' venvs with "
            f"`bash benchmarks/peers_setup.sh` (or give --peers-dir, or --peer-site), or leave {library} out "
            f"with --libraries"
        )
    return Launch(str(python), env)


@dataclass
class Row:
    data: str
    arch: str
    expansion: int
    library: str
    d: int
    d_sae: int
    batch_size: int
    steps: int
    warmup: int
    threads: int
    device: str = "cpu"
    precision: str = "fp32"  # what the library ran: its own mixed precision where asked (or always)
    version: str = ""
    step_seconds: list[float] = field(default_factory=list)
    tokens_per_s: float | None = None
    fvu_after_warmup: float | None = None
    fvu: float | None = None
    peak_rss_mb: float | None = None
    peak_rss_since: str | None = None  # "init" (this trainer), or "start" where the kernel cannot restart the mark
    peak_cuda_mb: float | None = None  # on cuda: torch.cuda.max_memory_allocated since the trainer was built
    import_rss_mb: float | None = None
    ratio_vs_fastest_peer: float | None = None
    dense_bound_tokens_per_s: float | None = None
    error: str | None = None


class Workers:
    """The running workers, one per library; one that failed is started again when next needed."""

    def __init__(self, launches: dict[str, Launch], logs: Path):
        self.launches, self.logs = launches, logs
        self.running: dict[str, Worker] = {}

    def start(self, libraries: list[str]) -> None:
        for lib in libraries:
            if lib not in self.running:
                self.running[lib] = Worker(lib, self.launches[lib], self.logs / f"{lib}.log")

    def drop(self, lib: str) -> None:
        self.running.pop(lib).close()

    def close(self) -> None:
        for lib in list(self.running):
            self.drop(lib)


def run_group(libraries: list[str], spec: dict[str, Any], rows: dict[str, Row], workers: Workers) -> None:
    """Give each library's worker a new trainer, step them in turn, fill in their rows
    (the dense bound, measured in the same rounds, included)."""
    workers.start(libraries)
    alive = {lib: workers.running[lib] for lib in libraries}

    def fail(lib: str, err: Exception) -> None:
        rows[lib].error = str(err)
        print(f"  {lib} failed: {err}", file=sys.stderr, flush=True)
        alive.pop(lib)
        workers.drop(lib)

    def ask_all(cmd: dict[str, Any], key: str, attr: str) -> None:
        for lib in list(alive):
            try:
                setattr(rows[lib], attr, alive[lib].ask(cmd)[key])
            except WorkerError as e:
                fail(lib, e)

    on_cuda = torch.device(spec["device"]).type == "cuda"
    for lib in list(alive):
        try:
            hello = alive[lib].wait_ready()
            rows[lib].version, rows[lib].import_rss_mb = hello["version"], hello["import_rss_mb"]
            if on_cuda and not hello.get("cuda"):
                raise WorkerError(f"its torch {hello['torch']} sees no CUDA device (see its Python and PYTHONPATH)")
            alive[lib].send({"cmd": "init", "spec": spec})  # all build their trainers at once (untimed)
        except WorkerError as e:
            fail(lib, e)
    for lib in list(alive):
        try:
            rows[lib].precision = alive[lib].receive(READY_TIMEOUT_S)["precision"]
        except WorkerError as e:
            fail(lib, e)

    W, N, B = spec["warmup"], spec["steps"], spec["batch_size"]
    d = spec["d"]
    dtype = torch.bfloat16 if spec["autocast"] == "bf16" else torch.float32
    dense = DenseStep(d, d * spec["expansion"], B, torch.device(spec["device"]), dtype)
    dense_seconds = []
    for i in range(W + N):
        if i == W:
            ask_all({"cmd": "fvu"}, "fvu", "fvu_after_warmup")
        turn = [*alive, "dense"]
        turn = turn[i % len(turn):] + turn[: i % len(turn)]  # who goes first rotates
        for lib in turn:
            if lib == "dense":
                took = dense.seconds()
            elif lib in alive:
                try:
                    took = alive[lib].ask({"cmd": "step", "batch": i})["seconds"]
                except WorkerError as e:
                    fail(lib, e)
                    continue
            else:
                continue  # failed earlier in this round
            if i >= W:
                (dense_seconds if lib == "dense" else rows[lib].step_seconds).append(took)
    for lib in list(alive):
        try:
            stats = alive[lib].ask({"cmd": "stats"})
            rows[lib].peak_rss_mb, rows[lib].peak_rss_since = stats["peak_rss_mb"], stats["peak_since"]
            rows[lib].peak_cuda_mb = stats["peak_cuda_mb"]
        except WorkerError as e:
            fail(lib, e)
    ask_all({"cmd": "fvu"}, "fvu", "fvu")
    bound = B / float(np.median(dense_seconds))
    for r in rows.values():
        r.dense_bound_tokens_per_s = bound
        if r.error is None:
            r.tokens_per_s = N * B / sum(r.step_seconds)


# ----------------------------------------------------------------------------- report


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def set_ratios(rows: list[Row]) -> None:
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.data, r.arch, r.expansion), []).append(r)
    for group in groups.values():
        peers = [r.tokens_per_s for r in group if r.library != "saekit" and r.tokens_per_s]
        for r in group:
            if r.library == "saekit" and r.tokens_per_s and peers:
                r.ratio_vs_fastest_peer = r.tokens_per_s / max(peers)


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    d = rows[0].d
    on_cuda = args.device == "cuda"
    device = f"cuda ({torch.cuda.get_device_name()})" if on_cuda else "cpu"
    precision = precision_name(args.autocast) + (" (each library's own; weights fp32)" if args.autocast == "bf16" else "")
    print(f"\nTraining throughput: d = {d}, batch {args.batch_size}, {device}, {precision}, "
          f"{args.threads} threads per library, {args.steps} timed steps after {args.warmup} warm-up steps, "
          f"libraries stepped in turn.")
    print("saekit/peer: saekit's tokens/s over the fastest peer's. %bound: of the dense bound, the five "
          "B×d×F matmuls of a dense step (10·d·F FLOPs per token) timed in the same rounds.")
    if on_cuda:
        print("peak CUDA MB: torch.cuda.max_memory_allocated in the library's process since its trainer was built.")
    memory = "peak CUDA MB" if on_cuda else "peak RSS MB"
    head = (f"{'data':<10} {'arch':<10} {'exp':>4} {'library':<20} {'tokens/s':>9} {'ms/step':>8} "
            f"{'saekit/peer':>11} {'%bound':>7} {'fvu warm→end':>14} {memory:>11}")
    print("\n" + head + "\n" + "-" * len(head))
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.data, r.arch, r.expansion), []).append(r)
    # A library whose own precision differs from the run's (sparsify's bf16 forward on
    # CUDA) is starred, with what it ran below the table.
    own_precision = {r.library: r.precision for r in rows if r.precision != precision_name(args.autocast)}
    for (data, arch, exp), group in groups.items():
        for r in group:
            name = r.library + ("*" if r.library in own_precision else "")
            lead = f"{data:<10} {arch:<10} {exp:>4} {name:<20}"
            if r.error:
                print(f"{lead} failed: {r.error.splitlines()[0]}")
                continue
            ms = 1000 * sum(r.step_seconds) / len(r.step_seconds)
            ratio = "" if r.ratio_vs_fastest_peer is None else f"{r.ratio_vs_fastest_peer:.2f}x"
            fvus = f"{fmt(r.fvu_after_warmup, '.3f')}→{fmt(r.fvu, '.3f')}"
            peak = r.peak_cuda_mb if on_cuda else r.peak_rss_mb
            print(f"{lead} {r.tokens_per_s:>9,.0f} {ms:>8,.0f} {ratio:>11} "
                  f"{100 * r.tokens_per_s / r.dense_bound_tokens_per_s:>6.0f}% {fvus:>14} {fmt(peak, ',.0f'):>11}")
        bound = group[0].dense_bound_tokens_per_s
        gflops = bound * 10 * d * d * exp / 1e9
        print(f"{data:<10} {arch:<10} {exp:>4} {'(dense bound)':<20} {bound:>9,.0f} "
              f"{1000 * args.batch_size / bound:>8,.0f} {'':>11} {'100%':>7}   ({gflops:.0f} GFLOP/s)\n")
    for lib, precision in own_precision.items():
        print(f"* {lib} ran {precision}.")
    versions = sorted({f"{r.library} {r.version}" for r in rows if r.version})
    print("; ".join(versions) + f"; torch {torch.__version__}")


def comma_list(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        if text == "all":
            return list(choices)
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'nothing'}: choose from {', '.join(choices)}")
        return items

    return parse


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas, e.g. 8,32")
    return values


def run_all(args: argparse.Namespace, tmp: Path, workers: Workers, rows: list[Row], start: float) -> None:
    """Every (data, width, architecture) group, in that order."""
    total_steps = 4 * (args.warmup + args.steps + 1)  # schedules stay mid-run (see the worker)
    train_rows = (args.warmup + args.steps) * args.batch_size
    for data in (["synthetic", "cached"] if args.data == "both" else [args.data]):
        if data == "synthetic":
            both = synthetic_activations(train_rows + args.heldout, D_SYNTHETIC, args.seed)
            train, heldout, source = both[:train_rows], both[train_rows:], "synthetic sparse codes"
        else:
            train, heldout, source = cached_activations(
                args.cache_dir.expanduser(), train_rows, args.heldout, args.seed, args.max_norm_ratio
            )
        np.save(tmp / f"{data}-train.npy", train)
        np.save(tmp / f"{data}-heldout.npy", heldout)
        d = train.shape[1]
        print(f"{data}: {source}, {train.shape[0]} training rows, {heldout.shape[0]} held-out rows",
              file=sys.stderr, flush=True)
        del train, heldout
        for exp in args.expansions:
            for arch in args.archs:
                libs = [lib for lib in args.libraries if arch in ARCHS[lib]]
                if not libs:
                    continue
                spec = dict(
                    data_name=data, arch=arch, expansion=exp, d=d, k=args.k, batch_size=args.batch_size,
                    steps=args.steps, warmup=args.warmup, total_steps=total_steps, threads=args.threads,
                    device=args.device, autocast=args.autocast,
                    sample_rows=min(SAMPLE_ROWS, train_rows), seed=args.seed, hook=MODEL_HOOK,
                    train=str(tmp / f"{data}-train.npy"), heldout=str(tmp / f"{data}-heldout.npy"),
                )
                group = {lib: Row(data, arch, exp, lib, d, d * exp, args.batch_size, args.steps, args.warmup,
                                  args.threads, device=args.device) for lib in libs}
                print(f"[{time.perf_counter() - start:5.0f} s] {data} {arch} {exp}x: {', '.join(libs)}",
                      file=sys.stderr, flush=True)
                run_group(libs, spec, group, workers)
                rows.extend(group.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=("synthetic", "cached", "both"), default="both")
    p.add_argument("--archs", type=comma_list(ALL_ARCHS), default=list(DEFAULT_ARCHS),
                   help=f"comma-separated, from {','.join(ALL_ARCHS)}, or all (default {','.join(DEFAULT_ARCHS)})")
    p.add_argument("--expansions", type=positive_ints, default=[8, 32], help="dictionary widths as multiples of d (default 8,32)")
    p.add_argument("--libraries", type=comma_list(LIBRARIES), default=list(LIBRARIES),
                   help=f"comma-separated, from {','.join(LIBRARIES)}, or all (default all)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per library (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2, help="torch threads in every worker (default 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where every library's dictionary and batches live (default cpu)")
    p.add_argument("--autocast", choices=("none", "bf16"), default="none",
                   help="bf16: every library's step in its own bf16 mixed precision (default none: fp32)")
    p.add_argument("--k", type=int, default=32, help="active features per token for TopK and BatchTopK (default 32)")
    p.add_argument("--heldout", type=int, default=8192, help="held-out rows FVU is measured on (default 8192)")
    p.add_argument("--max-norm-ratio", type=float, default=10.0,
                   help="drop cached rows above this multiple of the median norm (default 10; 0 keeps all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write one object per row to this file")
    p.add_argument("--peers-dir", type=Path, default=ROOT / ".peers", help="where peers_setup.sh put the peers' venvs")
    p.add_argument("--peer-site", type=Path,
                   help="instead of the venvs: run each peer with this Python and DIR/<peer> (its wheels installed "
                        "with pip --target, see benchmarks/gpu_peers.sh) first on PYTHONPATH")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "saekit-bench",
                   help="where the embedded model's activations are cached (default ~/.cache/saekit-bench)")
    args = p.parse_args()
    for name in ("steps", "batch_size", "threads", "k", "heldout"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be zero or more, got {args.warmup}")
    if not args.max_norm_ratio == 0 and not args.max_norm_ratio > 1:
        p.error(f"--max-norm-ratio must exceed 1 (a multiple of the median norm) or be 0 to keep all, got {args.max_norm_ratio}")

    if not any(arch in ARCHS[lib] for lib in args.libraries for arch in args.archs):
        p.error(f"none of {', '.join(args.libraries)} has any of {', '.join(args.archs)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: this torch ({torch.__version__}) sees no CUDA device")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TQDM_DISABLE": "1", "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env["SPARSIFY_DISABLE_TRITON"] = "1"  # its Triton decoder is for GPUs; on CUDA it runs as its users get it
    launches = {lib: launch_for(lib, env, args.peers_dir, args.peer_site) for lib in args.libraries}
    torch.set_num_threads(args.threads)  # for the dense bound

    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="saekit-throughput-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "logs").mkdir()
        workers = Workers(launches, tmp / "logs")
        workers.start(args.libraries)  # they import while the data is prepared
        try:
            run_all(args, tmp, workers, rows, start)
        finally:
            workers.close()
    set_ratios(rows)
    print_table(rows, args)
    print(f"wall clock {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([vars(r) for r in rows], indent=1) + "\n")
    if any(r.error for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
