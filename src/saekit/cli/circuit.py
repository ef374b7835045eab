"""``saekit circuit``: node effects, the circuit past the thresholds, its graph page and faithfulness."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import add_device_flags, add_spliced_flags, load_spliced, model_for, values_type

NONZERO = 1e-12  # effects.json lists the nodes with |effect| at least this
# The built-in prompt sets (saekit.circuits.sva.DATASETS; named here so that --help imports no torch).
BUILT_IN_DATA = ("sva", "sva-simple", "sva-rc")
BUILT_IN_EXAMPLES = 64
CIRCUIT_FILES = ("circuit.json", "effects.json", "circuit.html", "faithfulness.json", "faithfulness.png", "mask.json",
                 *(f"{name}.jsonl" for name in BUILT_IN_DATA))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "circuit",
        help="find the features and paths that cause a behaviour: a circuit, its graph and faithfulness",
        description="Splice the dictionaries (one per hook point) into the model, measure every feature's and "
        "every error term's effect on the metric over the prompts of --data (a JSONL file of clean_prefix, "
        "clean_answer and optionally patch_prefix, patch_answer; answers one token each), keep the nodes past "
        "--node-threshold and the edges among them past --edge-threshold, and write OUT/circuit.json, "
        "OUT/effects.json and OUT/circuit.html (the graph); with --faithfulness, also the faithfulness curve.",
    )
    add_spliced_flags(p)
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help="the prompts (see above), or a built-in set made for the model's tokenizer and written to "
                   "OUT/NAME.jsonl: sva (subject-verb agreement across a prepositional phrase, 'The nurse near the "
                   "windows' -> ' is'/' are'), sva-simple ('The nurse'), sva-rc ('The nurse that the doctors like')")
    p.add_argument("--examples", type=int, default=None, metavar="N",
                   help=f"prompts in a built-in set (default {BUILT_IN_EXAMPLES}; fewer when fewer fit the tokenizer)")
    p.add_argument("--seed", type=int, default=None, help="which prompts of a built-in set (default 0)")
    p.add_argument("--out", required=True, metavar="OUT", help="the folder to write the circuit into")
    p.add_argument("--method", default="atp", choices=("atp", "ig"),
                   help="node and edge effects by attribution patching (default) or integrated gradients")
    p.add_argument("--steps", type=int, default=10, help="integrated gradients' steps (default 10)")
    p.add_argument("--node-threshold", type=float, default=0.1, help="keep nodes with |effect| >= this (default 0.1)")
    p.add_argument("--edge-threshold", type=float, default=0.01, help="keep edges with |weight| >= this (default 0.01)")
    p.add_argument("--summed", action="store_true", help="nodes summed over token positions instead of per position")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per pass (default 8)")
    p.add_argument("--faithfulness", type=values_type(int, None, "--faithfulness"), default=None, metavar="N[,...]",
                   help="also measure faithfulness with the top N nodes kept, e.g. 0,1,2,5,10,20,50 "
                   "(writes faithfulness.json and faithfulness.png)")
    p.add_argument("--mask", type=values_type(float, None, "--mask"), default=None, metavar="S[,...]",
                   help="also train the baseline: a learned mask over the same nodes (error terms included) at each "
                   "sparsity penalty, e.g. 1e-3,1e-2,1e-1, and measure the attribution circuit at the masks' sizes "
                   "(writes mask.json; with --faithfulness, both curves in faithfulness.png)")
    p.add_argument("--mask-steps", type=int, default=200, help="optimiser steps per mask (default 200)")
    p.add_argument("--dashboard", nargs="+", default=None, metavar="DIR",
                   help="dashboards (saekit dashboard) to link the graph's feature nodes to, one per hook point")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that holds no circuit (only the circuit's files are replaced)")
    add_device_flags(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import json
    from dataclasses import replace
    from pathlib import Path

    from ..circuits import SplicedModel, faithfulness_curve, find_circuit, node_effects, plot_faithfulness_curve
    from ..circuits.circuit import check_threshold
    from ..circuits.data import read_circuit_data
    from ..circuits.page import dashboard_links, write_circuit_page
    from ..io.files import atomic_write_text, check_output_folder, make_folder
    from ..models import load_model, parse_dtype, resolve_device
    from .progress import ProgressBars

    # Everything that can be checked is checked before the model loads.
    node_threshold = check_threshold(ns.node_threshold, "--node-threshold")
    edge_threshold = check_threshold(ns.edge_threshold, "--edge-threshold")
    if node_threshold == 0:
        raise ConfigError("--node-threshold must be above 0: at 0 every feature is a node and the edges are too many")
    for flag, value in (("--steps", ns.steps), ("--batch-size", ns.batch_size), ("--mask-steps", ns.mask_steps)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if ns.faithfulness is not None and any(n < 0 for n in ns.faithfulness):
        raise ConfigError(f"--faithfulness takes numbers of nodes (0 or more), got {ns.faithfulness}")
    if ns.mask is not None and any(not v > 0 for v in ns.mask):
        raise ConfigError(f"--mask takes sparsity penalties above 0 (e.g. 1e-3,1e-2,1e-1), got {ns.mask}")
    built_in = _built_in(ns)
    if not built_in:
        _check_data_file(Path(ns.data))
    out = check_output_folder(
        Path(ns.out), overwrite=ns.overwrite, own_files=CIRCUIT_FILES, result="saekit circuit",
        holds_result=lambda folder: (folder / "circuit.json").is_file() or (folder / "effects.json").is_file(),
        written="the circuit's files",
    )
    data_file = out / f"{ns.data}.jsonl" if built_in else Path(ns.data)
    page = out / "circuit.html"
    boards = [dashboard_links(folder, page) for folder in ns.dashboard or []]
    device = resolve_device(ns.device)
    dictionaries = load_spliced(ns, device)
    model_name = model_for(ns.dictionaries, dictionaries, ns.model, ns.allow_other_model, "a circuit")

    lm = load_model(model_name, device=device, dtype=parse_dtype(ns.dtype))
    model = SplicedModel(lm, dictionaries, allow_other_model=ns.allow_other_model)
    if built_in:
        from ..circuits.sva import DATASETS, sva_records

        options = replace(DATASETS[ns.data], n=ns.examples or BUILT_IN_EXAMPLES, seed=ns.seed or 0)
        records = sva_records(lm.tokenizer, options)  # refuses a tokenizer that fits none, before anything is written
        make_folder(out)
        atomic_write_text(data_file, "".join(json.dumps(r) + "\n" for r in records))
        print(f"built {len(records)} {ns.data} prompts for this tokenizer (seed {options.seed}): {data_file}")
    data = read_circuit_data(data_file, lm.tokenizer, max_length=lm.max_length)
    sources = {d.cfg.output_hook: str(folder) for folder, d in zip(ns.dictionaries, dictionaries)}
    make_folder(out)
    bars = ProgressBars("circuit")
    try:
        effects = node_effects(model, data, method=ns.method, steps=ns.steps, batch_size=ns.batch_size, progress=bars)
        try:
            circuit = find_circuit(model, data, node_threshold=node_threshold, edge_threshold=edge_threshold,
                                   summed=ns.summed, method=ns.method, steps=ns.steps, batch_size=ns.batch_size,
                                   effects=effects, sources=sources, progress=bars)
        finally:
            # Kept even when no node passes the threshold: they show which threshold to give. Only
            # nonzero effects: a feature off in both the clean and the patch prompt has none.
            effects.write_json(out / "effects.json", min_abs=NONZERO)
        circuit.write_json(out / "circuit.json")
        write_circuit_page(circuit, page, dashboard=boards, token_labels=_token_labels(data, lm.tokenizer, ns.summed))
        curve = matched = None
        if ns.faithfulness is not None:
            curve = faithfulness_curve(model, data, effects, ns.faithfulness, summed=ns.summed,
                                       batch_size=ns.batch_size, progress=bars)
            atomic_write_text(out / "faithfulness.json", json.dumps(curve.to_json(), indent=1) + "\n")
        if ns.mask is not None:
            matched = _mask_baseline(model, data, effects, ns, out, bars)
        if curve is not None:
            curves = {ns.method: curve} if matched is None else {ns.method: curve, "mask": matched["mask_curve"]}
            plot_faithfulness_curve(curves, out / "faithfulness.png", title=f"faithfulness: {data_file.name}")
    finally:
        bars.close()

    meta = circuit.metadata
    if meta.get("metric_patch") is not None:
        print(f"metric ({meta['metric']}): clean {meta['metric_clean']:+.4f}, patch {meta['metric_patch']:+.4f} "
              f"over {meta['n_examples']} prompts")
    else:
        print(f"metric ({meta['metric']}): {meta['metric_clean']:+.4f} over {meta['n_examples']} prompts")
    print(f"circuit: {len(circuit.nodes)} nodes (|effect| >= {node_threshold:g}), {len(circuit.edges)} edges "
          f"(|weight| >= {edge_threshold:g}), by {ns.method}")
    for c in circuit.nodes[:8]:
        print(f"  {c.id:<32} {c.effect:+.4f}")
    if len(circuit.nodes) > 8:
        print(f"  ... and {len(circuit.nodes) - 8} more")
    if curve is not None:
        print("faithfulness (top n nodes kept; the rest mean-ablated):  " + ", ".join(
            f"{p.n_nodes}: {p.faithfulness + 0.0:.3f}" for p in curve.points))
    if matched is not None:
        print(f"mask baseline against {ns.method} at the same sizes (faithfulness):")
        for row in matched["rows"]:
            print(f"  sparsity {row['sparsity']:g}: {row['n_nodes']} nodes, mask {row['mask']:.3f}, "
                  f"{ns.method} top-{row['n_nodes']} {row['attribution']:.3f}")
    for name in CIRCUIT_FILES:
        if (out / name).exists():
            print(f"wrote {out / name}")
    return 0


def _mask_baseline(model: Any, data: Any, effects: Any, ns: argparse.Namespace, out: Any, bars: Any) -> dict[str, Any]:
    """Masks at each --mask penalty over the same nodes, and the attribution circuit's
    faithfulness at the sizes they keep (the same mean ablation): written to mask.json."""
    import json

    from ..circuits import faithfulness_curve, mask_curve
    from ..circuits.scoring import Faithfulness, FaithfulnessCurve
    from ..io.files import atomic_write_text

    masks = mask_curve(model, data, sparsities=ns.mask, steps=ns.mask_steps, per_position=not ns.summed,
                       batch_size=ns.batch_size, progress=bars)
    sizes = sorted({r.n_nodes for r in masks})
    ranked = faithfulness_curve(model, data, effects, sizes, summed=ns.summed, batch_size=ns.batch_size,
                                progress=bars)
    at = dict(zip(sizes, ranked.points))  # a point keeps fewer nodes where fewer have a nonzero effect
    rows = [{"sparsity": r.sparsity, "n_nodes": r.n_nodes, "mask": r.faithfulness,
             "attribution": at[r.n_nodes].faithfulness, "attribution_nodes": at[r.n_nodes].n_nodes} for r in masks]
    record = {"method": ns.method, "steps": ns.mask_steps, "matched": rows, "masks": masks.to_json()}
    atomic_write_text(out / "mask.json", json.dumps(record, indent=1) + "\n")
    points = [Faithfulness(r.n_nodes, r.metric_full, r.metric_empty, r.metric_masked, float("nan"))
              for r in sorted(masks, key=lambda r: r.n_nodes)]
    return {"rows": rows, "mask_curve": FaithfulnessCurve(points, summed=ns.summed)}


def _built_in(ns: argparse.Namespace) -> bool:
    """Whether --data names a built-in prompt set (checked with --examples and --seed)."""
    from pathlib import Path

    built_in = ns.data in BUILT_IN_DATA
    if built_in and Path(ns.data).exists():
        raise ConfigError(f"--data {ns.data} names a built-in prompt set and a file here; give the file as "
                          f"./{ns.data} or choose the set elsewhere")
    if not built_in:
        given = [flag for flag, value in (("--examples", ns.examples), ("--seed", ns.seed)) if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} choose the prompts of a built-in set ({', '.join(BUILT_IN_DATA)}); "
                              f"--data {ns.data} is a file, read as it is")
    if ns.examples is not None and ns.examples < 1:
        raise ConfigError(f"--examples must be at least 1, got {ns.examples}")
    return built_in


def _check_data_file(path: Any) -> None:
    """The prompts file exists and is readable text (its lines need the tokenizer, checked once it loads)."""
    from ..data import read_data_file
    from ..errors import DataError

    text = read_data_file(path, "give a JSONL file of clean_prefix/clean_answer lines", flag="--data")
    if not text.strip():
        raise DataError(f"--data {path} is empty; each line needs a JSON object with clean_prefix and clean_answer")


def _token_labels(data: Any, tokenizer: Any, summed: bool) -> list[str] | None:
    """Each position's token in the first prompt ("clean→patch" where they differ), when
    every prompt has the same length (else positions are aligned at the end and differ)."""
    if summed or not data.lengths_equal:
        return None
    first = data.examples[0]
    labels = []
    for i, t in enumerate(first.clean_ids):
        text = tokenizer.decode([t])
        if first.patch_ids is not None and first.patch_ids[i] != t:
            text += "→" + tokenizer.decode([first.patch_ids[i]])
        labels.append(text)
    return labels
