"""Feature circuits: time per example and peak memory of node effects and edges, and how
both grow with the number of hook points and with prompt length.

For each number of hook points (--points, default 1, 2, 4: the first n of resid_post.3, 6,
9, 12) and each prompt length (--lengths, default 8, 32, 128, 512 tokens) it times, on
--examples subject–verb agreement prompts (the built-in ``sva`` set for the model's
tokenizer, lengthened to the wanted token count by neutral text put before them):

* node effects by attribution patching (AtP: one forward and one backward pass per batch
  plus the patch run) and by integrated gradients (IG, --ig-steps per hook point);
* edges among the --nodes nodes of largest |AtP effect| (per position), by AtP;

and the peak memory each takes above what was held before it (the model and the
dictionaries): on the GPU ``torch.cuda.max_memory_allocated``, on the CPU the process's
resident set, sampled every millisecond (with glibc told to give large blocks back to the
system at once, so that the resident set follows the live tensors). Then, at one case, the
edges' time and memory for several numbers of nodes (--node-sweep): the edges hold no dense
nodes × nodes × positions tensor, so their memory must not grow with the square of the nodes,
and at fixed nodes it grows about linearly with the positions (the printed exponents).

From the edges' memory against hook points × positions it fits a line and states the
largest case whose edge computation fits in --budget-gib (24 by default).

    python benchmarks/circuit_speed.py                                  # embedded model, random dictionaries
    python benchmarks/circuit_speed.py --lengths 8,32,128 --points 1,2,4 --json circuit_speed.json
    python benchmarks/circuit_speed.py --dictionaries runs/sva4/*       # trained dictionaries instead
    python benchmarks/circuit_speed.py --device cuda --lengths 8,32,128,512,1024

The dictionaries default to random weights of the trained ones' shape (TopK, k 32, 4,608
features): a speed and memory figure only (effects and which nodes are chosen mean nothing,
but the work done per node does not depend on the weights). The model is the embedded
SmolLM2-135M unless --model.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

POINTS = ("resid_post.3", "resid_post.6", "resid_post.9", "resid_post.12")
NEUTRAL = ("The weather was mild that spring, and the market in the old square opened early every morning. "
           "People bought bread, fruit and flowers, talked for a while and went home before noon. ")


# ---------------------------------------------------------------------------
# Memory


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


LIBC = _glibc()
M_MMAP_THRESHOLD = -3


def release_memory() -> None:
    """Freed memory back to the system, so the next baseline is the live tensors."""
    gc.collect()
    if LIBC is not None:
        LIBC.malloc_trim(0)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The largest resident set seen while the block runs, sampled every millisecond."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __enter__(self) -> PeakRSS:
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure(fn, device: torch.device):
    """``fn()``'s result, seconds and peak memory above the memory held before it (bytes)."""
    release_memory()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        return out, seconds, torch.cuda.max_memory_allocated() - before
    before = rss_bytes()
    with PeakRSS() as peak:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return out, seconds, max(0, peak.peak - before)


# ---------------------------------------------------------------------------
# Inputs


def random_dictionaries(points, lm, d_sae: int, k: int, device):
    """TopK dictionaries of the trained ones' shape with random weights, scaled to the raw
    activations (the encoder sees norms of about act_scale·√d, as a trained one does)."""
    from saekit.dictionaries import DictionaryConfig, build_dictionary

    out = []
    for i, point in enumerate(points):
        cfg = DictionaryConfig(arch="topk", d_in=lm.d_model, d_sae=d_sae, k=k, hook=point, model=lm.name,
                               act_scale=6.0)
        torch.manual_seed(i)
        d = build_dictionary(cfg)
        with torch.no_grad():
            d.W_enc.mul_(1 / cfg.act_scale)
        out.append(d.to(device).eval())
    return out


def load_dictionaries(folders, device):
    import saekit

    return [saekit.load(f, device=device) for f in folders]


def lengthened(lm, n_examples: int, length: int, seed: int = 0):
    """``n_examples`` sva prompts of exactly ``length`` tokens (BOS included): neutral text
    (the end of a passage, so it ends a sentence) between the BOS and the prompt."""
    from saekit.circuits.data import CircuitData, circuit_examples
    from saekit.circuits.sva import DATASETS, sva_records

    base = circuit_examples(sva_records(lm.tokenizer, replace(DATASETS["sva"], n=n_examples, seed=seed)), lm.tokenizer)
    bos = base.bos
    filler = lm.tokenizer.encode(NEUTRAL * (1 + length // 20), add_special_tokens=False)
    examples = []
    for e in base.examples:
        extra = length - e.length
        if extra < 0:
            raise SystemExit(f"--lengths: {length} is shorter than the prompts ({e.length} tokens)")
        pad = tuple(filler[len(filler) - extra:]) if extra else ()
        head = 1 if bos else 0
        examples.append(replace(e, clean_ids=e.clean_ids[:head] + pad + e.clean_ids[head:],
                                patch_ids=e.patch_ids[:head] + pad + e.patch_ids[head:]))
    data = CircuitData(examples, source=f"sva, {length} tokens", bos=bos)
    assert all(ex.length == length for ex in data.examples)
    return data


# ---------------------------------------------------------------------------
# The cases


def one_case(model, data, a, device) -> dict:
    from saekit.circuits import attribution_patching, edge_effects, integrated_gradients

    B = a.batch_size
    n = len(data)
    atp, t_atp, m_atp = measure(lambda: attribution_patching(model, data, batch_size=B), device)
    row = {"points": len(model.points), "length": data.max_length, "examples": n,
           "atp_s_per_ex": t_atp / n, "atp_peak_mib": m_atp / 2**20}
    if data.max_length <= a.ig_max_length:
        _, t_ig, m_ig = measure(lambda: integrated_gradients(model, data, steps=a.ig_steps, batch_size=B), device)
        row.update(ig_s_per_ex=t_ig / n, ig_peak_mib=m_ig / 2**20)
    nodes = [e.node for e in atp.top(a.nodes)]
    edges, t_e, m_e = measure(lambda: edge_effects(model, data, nodes, batch_size=B, nodes_per_pass=a.nodes_per_pass),
                              device)
    row.update(nodes=len(nodes), copies=copies(model, nodes, a.nodes_per_pass), edges_s_per_ex=t_e / n,
               edges_peak_mib=m_e / 2**20,
               edges_nonzero=int(edges.weights._nnz()),
               dense_mib=len(nodes) ** 2 * data.max_length * 4 / 2**20)
    return row


def copies(model, nodes, nodes_per_pass: int) -> int:
    """How many copies of a batch the edges' backward passes run on at once (``edge_effects``:
    one per downstream node, the metric included, up to ``nodes_per_pass``)."""
    first = min(model.points.index(n.point) for n in nodes)
    targets = sum(model.points.index(n.point) > first for n in nodes)
    return min(nodes_per_pass, targets + 1)


def node_sweep(model, data, a, device) -> list[dict]:
    from saekit.circuits import attribution_patching, edge_effects

    atp = attribution_patching(model, data, batch_size=a.batch_size)
    rows = []
    for n_nodes in a.node_sweep:
        nodes = [e.node for e in atp.top(n_nodes)]
        edges, t, m = measure(lambda: edge_effects(model, data, nodes, batch_size=a.batch_size,
                                                   nodes_per_pass=a.nodes_per_pass), device)
        nnz = int(edges.weights._nnz())
        rows.append({"points": len(model.points), "length": data.max_length, "nodes": len(nodes),
                     "copies": copies(model, nodes, a.nodes_per_pass), "edges_nonzero": nnz,
                     "edges_s_per_ex": t / len(data), "edges_peak_mib": m / 2**20,
                     "dense_mib": len(nodes) ** 2 * data.max_length * 4 / 2**20})
        # The result itself: nnz weights, two int64 indices and a float32 each, and a copy while coalescing.
        print(f"  nodes {len(nodes):5d}: edges {t / len(data):8.2f} s/ex, peak {m / 2**20:9.1f} MiB, {nnz:,} nonzero "
              f"weights ({2 * nnz * 20 / 2**20:.1f} MiB as sparse COO, with the coalescing copy); a dense "
              f"nodes×nodes×positions float32 tensor: {rows[-1]['dense_mib']:.1f} MiB", flush=True)
    return rows


def exponent(rows, key, x_key, fixed: str) -> list[tuple[int, int, int, float]]:
    """``(fixed value, x1, x2, log(y2/y1)/log(x2/x1))`` between successive rows that agree
    on ``fixed``: 1 is linear growth, 2 quadratic."""
    out = []
    groups: dict[int, list[dict]] = {}
    for r in rows:
        if key in r:
            groups.setdefault(r[fixed], []).append(r)
    for value, group in sorted(groups.items()):
        group.sort(key=lambda r: r[x_key])
        for r1, r2 in zip(group, group[1:]):
            if r1[key] > 0 and r2[key] > 0:
                out.append((value, r1[x_key], r2[x_key],
                            math.log(r2[key] / r1[key]) / math.log(r2[x_key] / r1[x_key])))
    return out


def fit_budget(rows, a) -> dict | None:
    """Edge memory per prompt copy (copies × batch rows run at once) ≈ positions · (α + β · points):
    the model's own activations kept for the backward passes (α, per token) and each hook
    point's features, error and their gradients (β); least squares on the cases with at least
    two hook points (with one, the edges only reach the metric, on one copy). Then the
    largest prompt length that fits the budget beside the model, for a few numbers of hook
    points, at this batch size and nodes per pass (the nodes themselves add only their
    sparse weights)."""
    used = [r for r in rows if r["points"] >= 2 and r.get("edges_peak_mib", 0) > 0]
    if len({(r["points"], r["length"]) for r in used}) < 2:
        return None
    per_row = [r["edges_peak_mib"] / (r["copies"] * a.batch_size) for r in used]
    X = torch.tensor([[r["length"], r["length"] * r["points"]] for r in used], dtype=torch.float64)
    y = torch.tensor(per_row, dtype=torch.float64)[:, None]
    alpha, beta = torch.linalg.lstsq(X, y).solution[:, 0].tolist()
    budget = a.budget_gib * 1024 - a.model_mib
    fits = {}
    for batch, per_pass in sorted({(a.batch_size, a.nodes_per_pass), (1, 8), (1, 1)}):
        for p in sorted({2, 4, 30, *(r["points"] for r in rows)}):
            per_token = per_pass * batch * (alpha + beta * p)
            fits[f"batch {batch}, {per_pass} nodes per pass, {p} hook points"] = (
                int(budget / per_token) if per_token > 0 else None)
    worst = max(abs(float(X[i] @ torch.tensor([alpha, beta], dtype=torch.float64)) - per_row[i]) / per_row[i]
                for i in range(len(used)))
    return {"mib_per_token": alpha, "mib_per_point_token": beta, "worst_rel_error": worst, "budget_gib": a.budget_gib,
            "model_mib": a.model_mib, "batch_size": a.batch_size, "nodes_per_pass": a.nodes_per_pass,
            "max_positions_by_points": fits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", default="1,2,4", help="numbers of hook points (the first n of resid_post.3/6/9/12)")
    p.add_argument("--lengths", default="8,32,128,512", help="prompt lengths in tokens")
    p.add_argument("--examples", type=int, default=2, help="prompts per case")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--ig-steps", type=int, default=10)
    p.add_argument("--ig-max-length", type=int, default=10**9, help="skip IG for longer prompts (slow on a CPU)")
    p.add_argument("--nodes", type=int, default=32, help="nodes (top |AtP effect|) to find the edges among")
    p.add_argument("--nodes-per-pass", type=int, default=8)
    p.add_argument("--node-sweep", default="8,32,128", help="numbers of nodes for the edges at the sweep case")
    p.add_argument("--sweep-case", default="4,128", help="points,length of the node sweep ('' to skip)")
    p.add_argument("--dictionaries", nargs="+", default=None, help="trained dictionaries (one per hook point)")
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--model", default=None, help="the model (default: the embedded SmolLM2-135M)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--budget-gib", type=float, default=24.0)
    p.add_argument("--json", default=None, help="write the figures here too")
    a = p.parse_args()
    a.points = [int(x) for x in a.points.split(",")]
    a.lengths = [int(x) for x in a.lengths.split(",")]
    a.node_sweep = [int(x) for x in a.node_sweep.split(",") if x]
    if a.threads:
        torch.set_num_threads(a.threads)
    if LIBC is not None:
        # Large blocks always mapped and unmapped at once: without this glibc raises its mmap
        # threshold after the first frees, keeps freed tensors in its heap, and the resident
        # set stops following the live tensors.
        LIBC.mallopt(M_MMAP_THRESHOLD, 256 * 1024)

    from saekit.circuits import SplicedModel
    from saekit.models import load_model

    device = torch.device(a.device)
    release_memory()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else rss_bytes()
    lm = load_model(a.model, device=a.device)
    if a.dictionaries:
        dicts = load_dictionaries(a.dictionaries, device)
        what = "trained: " + ", ".join(a.dictionaries)
    else:
        dicts = random_dictionaries(POINTS[:max(a.points)], lm, a.d_sae, a.k, device)
        what = f"random weights, TopK k={a.k}, {a.d_sae} features (speed and memory only)"
    release_memory()
    a.model_mib = ((torch.cuda.memory_allocated() if device.type == "cuda" else rss_bytes()) - before) / 2**20
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"model {lm.name} on {a.device} [{gpu}]; dictionaries: {what}; model and dictionaries hold "
          f"{a.model_mib:.0f} MiB")
    print(f"{a.examples} prompts per case, batch {a.batch_size}, IG {a.ig_steps} steps per hook point, edges among "
          f"the top {a.nodes} AtP nodes, {a.nodes_per_pass} per backward pass", flush=True)

    rows = []
    header = (f"{'points':>6} {'tokens':>6} | {'AtP s/ex':>9} {'MiB':>7} | {'IG s/ex':>9} {'MiB':>7} | "
              f"{'edges s/ex':>10} {'MiB':>7} {'nnz':>6}")
    print(header)
    print("-" * len(header))
    for n_points in a.points:
        model = SplicedModel(lm, dicts[:n_points], allow_other_model=bool(a.model))
        for length in a.lengths:
            data = lengthened(lm, a.examples, length)
            r = one_case(model, data, a, device)
            rows.append(r)
            ig = (f"{r['ig_s_per_ex']:9.2f} {r['ig_peak_mib']:7.0f}" if "ig_s_per_ex" in r else f"{'-':>9} {'-':>7}")
            print(f"{n_points:6d} {length:6d} | {r['atp_s_per_ex']:9.2f} {r['atp_peak_mib']:7.0f} | {ig} | "
                  f"{r['edges_s_per_ex']:10.2f} {r['edges_peak_mib']:7.0f} {r['edges_nonzero']:6d}", flush=True)

    keys = ("atp_s_per_ex", "atp_peak_mib", "ig_s_per_ex", "ig_peak_mib", "edges_s_per_ex", "edges_peak_mib")
    growth = {"with_length": {key: exponent(rows, key, "length", "points") for key in keys},
              "with_points": {key: exponent(rows, key, "points", "length") for key in keys}}
    print("\ngrowth exponents, log(y2/y1) / log(x2/x1) (1: linear, 2: quadratic):")
    for axis, fixed in (("with_length", "points"), ("with_points", "tokens")):
        for key, values in growth[axis].items():
            if values:
                print(f"  {axis} {key:15s} " + "; ".join(f"{fixed} {v}: {x1}->{x2} {e:.2f}" for v, x1, x2, e in values))

    sweep = []
    if a.sweep_case and a.node_sweep:
        n_points, length = (int(x) for x in a.sweep_case.split(","))
        print(f"\nedges against nodes at {n_points} hook points, {length} tokens:")
        model = SplicedModel(lm, dicts[:n_points], allow_other_model=bool(a.model))
        sweep = node_sweep(model, lengthened(lm, a.examples, length), a, device)
        for _, x1, x2, e in exponent(sweep, "edges_peak_mib", "nodes", "points"):
            print(f"  memory growth exponent with nodes {x1}->{x2}: {e:.2f} (a dense tensor's: 2)")
        for _, x1, x2, e in exponent(sweep, "edges_s_per_ex", "nodes", "points"):
            print(f"  time growth exponent with nodes {x1}->{x2}: {e:.2f}")

    fit = fit_budget(rows, a)
    if fit:
        print(f"\nedge memory ≈ copies × batch × positions × ({fit['mib_per_token']:.3f} + {fit['mib_per_point_token']:.4f}"
              f" × hook points) MiB (fit within {100 * fit['worst_rel_error']:.0f}% of the cases with 2+ hook points; "
              f"copies: downstream nodes per pass; the nodes add only their sparse weights). The longest prompt "
              f"whose edges fit in {a.budget_gib:g} GiB beside the model ({a.model_mib:.0f} MiB):")
        for case, positions in fit["max_positions_by_points"].items():
            print(f"  {case}: {positions:,} tokens" if positions else f"  {case}: -")

    if a.json:
        Path(a.json).write_text(json.dumps({"device": a.device, "gpu": gpu, "dictionaries": what, "model": lm.name,
                                            "args": {k: v for k, v in vars(a).items() if k != "json"},
                                            "cases": rows, "growth": growth, "node_sweep": sweep, "budget": fit},
                                           indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
