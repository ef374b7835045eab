"""Dashboard collection against the bare forward pass: what does reading the features cost?

Collects examples for every feature of the default dictionary (4,608 features of
runs/smollm2-135m-resid_post.9-topk; a dictionary of the same shape with random weights
when that run does not exist, which gives a speed-only figure) from --tokens tokens of
the embedded corpus, and times beside it the bare forward pass over the same contexts:
the same stream of packed contexts, the same batches, the model stopped after the hook
point exactly as collection stops it, nothing else. Repetitions are interleaved (forward,
collect, forward, collect, ...) so that noise on a shared machine hits both alike; the
ratio uses each side's fastest repetition. When `saekit.interpret.dashboard.write_dashboard`
exists it then writes the whole site (output tokens and nearest features included) and
reports the total against the forward pass too.

    python benchmarks/dashboard_speed.py [--tokens 200000] [--repeats 2] [--device cpu] [--threads N]
    python benchmarks/dashboard_speed.py --device cuda --batch-size 128 --check
    python benchmarks/dashboard_speed.py --random-model FOLDER --dataset FILE.json --text-field extract

``--random-model FOLDER`` builds the model from the config and tokenizer saved in FOLDER with
random weights (a speed-only figure, for a machine without the embedded model's package);
``--check`` also collects a few features on the CPU and compares them with the device's.

The issue's aim: collection adds at most 30% to the model's own time (ratio <= 1.3).
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_DICTIONARY = Path(__file__).resolve().parent.parent / "runs" / "smollm2-135m-resid_post.9-topk"


def load_dictionary(path: str | None, device: str):
    """The trained default dictionary, or a random one of its shape (say which)."""
    import saekit
    from saekit.dictionaries import DictionaryConfig, build_dictionary

    folder = Path(path) if path else DEFAULT_DICTIONARY
    if (folder / "weights.safetensors").exists() or path:
        return saekit.load(str(folder), device=device), str(folder)
    cfg = DictionaryConfig(arch="topk", d_in=576, d_sae=4608, k=32, hook="resid_post.9", model="smollm2-135m",
                           act_scale=6.1, context_length=128)
    torch.manual_seed(0)
    d = build_dictionary(cfg)
    with torch.no_grad():
        d.W_enc.mul_(1 / cfg.act_scale)  # raw activations of norm ~ act_scale·√d, as the trained one takes
    return d.to(device).eval().requires_grad_(False), "random weights of the default dictionary's shape"


def load_lm(a: argparse.Namespace):
    """The model to run: --model as saekit loads it, or --random-model's architecture with random weights."""
    from saekit.models import LoadedModel, load_model, parse_dtype

    if not a.random_model:
        return load_model(a.model, device=a.device, dtype=a.dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(a.random_model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(a.dtype)).to(a.device).eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=AutoTokenizer.from_pretrained(a.random_model), name=a.model_name)


def bare_pass(lm, hook: str, tokens: int, context_length: int, batch_size: int, dataset: str | None = None,
              text_field: str = "text") -> int:
    """What collection does without collecting: the same stream and batches, the model up to the hook."""
    from saekit.data import ContextStream
    from saekit.hooks import read_activations

    stream = ContextStream(dataset, lm.tokenizer, context_length=context_length, batch_size=batch_size,
                           text_field=text_field)
    per_context = context_length - int(stream.bos_id is not None)
    wanted, done = -(-tokens // per_context), 0
    with torch.no_grad():
        for batch in stream:
            rows = min(batch.input_ids.shape[0], wanted - done)
            acts = read_activations(lm, [hook], batch.input_ids[:rows], batch.attention_mask[:rows])[hook]
            float(acts[-1, -1, 0])  # wait for the device
            done += rows
            if done >= wanted:
                break
    return done * per_context


def check_against_cpu(d, lm, a: argparse.Namespace) -> dict:
    """Collect 64 features from a few thousand tokens on the device and on the CPU, and compare."""
    import copy

    from saekit.interpret.examples import collect_examples

    kw = dict(features=list(range(0, d.cfg.d_sae, d.cfg.d_sae // 64))[:64], tokens=min(a.tokens, 8192),
              context_length=a.context_length, batch_size=a.batch_size, dataset=a.dataset, text_field=a.text_field,
              allow_other_model=True)
    on_device = collect_examples(d, lm, **kw)
    cpu_lm = copy.copy(lm)
    cpu_lm.model = copy.deepcopy(lm.model).to("cpu").float()
    on_cpu = collect_examples(copy.deepcopy(d).to("cpu"), cpu_lm, **kw)
    top = on_device.top_values.nan_to_num(-1)
    ref = on_cpu.top_values.nan_to_num(-1)
    out = {
        "tokens": on_device.tokens_seen,
        "count_equal_frac": float((on_device.count == on_cpu.count).double().mean()),
        "count_rel_diff": float((on_device.count - on_cpu.count).abs().sum() / on_cpu.count.sum().clamp_min(1)),
        "top_value_max_rel_diff": float(((top - ref).abs() / ref.abs().clamp_min(1e-6)).max()),
        "top_tokens_equal_frac": float((on_device.top_tokens == on_cpu.top_tokens).all(-1).double().mean()),
        "random_tokens_equal": bool(torch.equal(on_device.random_tokens, on_cpu.random_tokens)),
        "random_acts_max_abs_diff": float((on_device.random_acts - on_cpu.random_acts).abs().max()),
    }
    print("device vs CPU:", json.dumps(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--dictionary", default=None, help="a dictionary folder (default: the default run's)")
    p.add_argument("--features", type=int, default=None, help="only the first N features (default: all)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", help="the model's dtype (the dictionary stays float32)")
    p.add_argument("--dictionary-dtype", default="float32", help="the dictionary's dtype (its encoding's)")
    p.add_argument("--model", default=None, help="the model (default: the embedded SmolLM2-135M)")
    p.add_argument("--random-model", default=None, help="a folder with a model's config and tokenizer: random weights")
    p.add_argument("--model-name", default="smollm2-135m", help="the name a --random-model goes by")
    p.add_argument("--dataset", default=None, help="the corpus (default: the embedded one)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--check", action="store_true", help="also compare a few features with a CPU collection")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-site", action="store_true", help="skip writing the dashboard site")
    p.add_argument("--profile", action="store_true", help="print a profile of one collection")
    p.add_argument("--json", default=None, help="write the figures here too")
    p.add_argument("--profile-out", default=None, help="write the profile's tables here instead of printing them")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from saekit.interpret.examples import collect_examples

    lm = load_lm(a)
    d, what = load_dictionary(a.dictionary, a.device)
    if a.dictionary_dtype != "float32":  # encode in the batch's dtype: a bf16 model's activations are bf16
        from saekit.models import parse_dtype

        d = d.to(parse_dtype(a.dictionary_dtype))
        what += f" (as {a.dictionary_dtype})"
    features = list(range(a.features)) if a.features else None
    n = a.features or d.cfg.d_sae
    sync = torch.cuda.synchronize if torch.device(a.device).type == "cuda" else (lambda: None)
    gpu = torch.cuda.get_device_name() if torch.device(a.device).type == "cuda" else "cpu"
    print(f"device {a.device} [{gpu}] ({torch.get_num_threads()} threads), model {lm.name} {lm.dtype}"
          f"{' (random weights: speed only)' if a.random_model else ''}, dictionary: {what}")
    print(f"{n} features of {d.cfg.d_sae}, {a.tokens:,} tokens, contexts of {a.context_length}, "
          f"{a.batch_size} per batch")

    def collect():
        return collect_examples(d, lm, features=features, tokens=a.tokens, context_length=a.context_length,
                                batch_size=a.batch_size, dataset=a.dataset, text_field=a.text_field,
                                allow_other_model=bool(a.random_model or a.model))

    def bare(tokens: int) -> int:
        return bare_pass(lm, d.cfg.hook, tokens, a.context_length, a.batch_size, a.dataset, a.text_field)

    # warm up both (first calls allocate, read the corpus file, compile kernels)
    bare(min(a.tokens, 4 * a.context_length))
    collect_examples(d, lm, features=features, tokens=min(a.tokens, 4 * a.context_length),
                     context_length=a.context_length, batch_size=a.batch_size, dataset=a.dataset,
                     text_field=a.text_field, allow_other_model=True)
    forward_s, collect_s, result = [], [], None
    for rep in range(a.repeats):
        sync()
        t = time.perf_counter()
        seen = bare(a.tokens)
        sync()
        forward_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = collect()
        sync()
        collect_s.append(time.perf_counter() - t)
        print(f"  repeat {rep + 1}: forward {forward_s[-1]:.2f} s, collect {collect_s[-1]:.2f} s "
              f"(ratio {collect_s[-1] / forward_s[-1]:.3f})", flush=True)
    assert result is not None and result.tokens_seen == seen
    fwd, col = min(forward_s), min(collect_s)
    figures = {"device": a.device, "threads": torch.get_num_threads(), "dictionary": what, "features": n,
               "tokens": result.tokens_seen, "forward_s": fwd, "collect_s": col, "collect_ratio": col / fwd,
               "forward_tok_per_s": result.tokens_seen / fwd}
    print(f"bare forward  {fwd:8.2f} s  ({result.tokens_seen / fwd:,.0f} tok/s)")
    print(f"collection    {col:8.2f} s  ratio {col / fwd:.3f}  (aim: <= 1.30)")

    if a.check and torch.device(a.device).type != "cpu":
        figures["check"] = check_against_cpu(d, lm, a)

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
        with profile(activities=activities) as prof:
            collect()
        averages = prof.key_averages()
        tables = [averages.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=40)]
        if len(activities) > 1:
            try:
                tables.append(averages.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=40))
            except (KeyError, AttributeError, ValueError):  # older torch: the CUDA name
                tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=40))
        if a.profile_out:
            Path(a.profile_out).write_text("\n\n".join(tables))
        else:
            print("\n\n".join(tables))

    try:
        from saekit.interpret import dashboard
    except ImportError:
        dashboard = None
    if a.no_site or dashboard is None or not hasattr(dashboard, "write_dashboard"):
        print("site: skipped" if a.no_site else "site: saekit.interpret.dashboard.write_dashboard does not exist yet")
    else:
        from saekit.interpret.directions import nearest_features, output_tokens

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            chosen = result.features.tolist()
            views = {"output_tokens": output_tokens(d, lm, chosen), "nearest": nearest_features(d, chosen)}
            accepted = inspect.signature(dashboard.write_dashboard).parameters
            kwargs = {k: v for k, v in {**views, "d_sae": d.cfg.d_sae}.items() if k in accepted}
            try:
                dashboard.write_dashboard(Path(tmp) / "site", result, lm.tokenizer, **kwargs)
            except Exception as e:  # the dashboard is another module's: report, keep the figures above
                print(f"site: write_dashboard failed: {type(e).__name__}: {e}")
                site = None
            else:
                site = time.perf_counter() - t
                size = sum(f.stat().st_size for f in (Path(tmp) / "site").rglob("*") if f.is_file())
        if site is not None:
            figures.update(site_s=site, site_bytes=size, total_ratio=(col + site) / fwd)
            print(f"site          {site:8.2f} s  ({size / 1e6:.1f} MB; output tokens, nearest features, pages)")
            print(f"total         {col + site:8.2f} s  ratio {(col + site) / fwd:.3f} to the bare forward pass")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
