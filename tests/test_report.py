"""The HTML report and the comparison page, built from fixture folders (no model, no training).

The fixtures follow eval.json's schema exactly, with realistic numbers and one
non-finite figure (stored as the string "nan"), so the pages are tested on what
`saekit eval` writes. Whether overlapping lines stay visible is checked on the pixels
matplotlib draws, by hue, outside the legend (which would show every colour anyway).
"""

from __future__ import annotations

import base64
import colorsys
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from conftest import random_dictionary

from saekit.errors import FormatError, OutputError, SaekitError
from saekit.evaluation import evaluate_reconstruction
from saekit.io.saekit_format import save_dictionary
from saekit.io.formats import convert
from saekit.report import compare, figures, load_evaluated, plots, training_curves, write_report

D_SAE = 64
RECONSTRUCTION = (
    "mse", "fvu", "variance_explained", "cosine", "l0", "l1", "l1_weighted",
    "frac_alive", "n_dead", "n_dense", "relative_reconstruction_bias",
)  # fmt: skip
DOWNSTREAM = ("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_diff", "loss_recovered", "kl")


def _dictionary(arch: str, k: int | None, hook: str, model: str) -> dict[str, Any]:
    return {"arch": arch, "d_in": 16, "d_sae": D_SAE, "k": k, "hook": hook, "model": model, "act_scale": 0.0421, "context_length": 128}


def _regime(context_length: int, n_sequences: int, fvu: float, l0: float, buckets: int) -> dict[str, Any]:
    # 5 dead features, 2 dense (> 0.1), the rest spread over 1e-4 .. 5e-2.
    density = [0.0] * 5 + [0.25, 0.5] + [10 ** (-4 + 2.7 * i / (D_SAE - 8)) for i in range(D_SAE - 7)]
    n_tokens = n_sequences * (context_length - 1)
    return {
        "context_length": context_length, "n_sequences": n_sequences,
        "n_tokens": n_tokens, "n_ce_tokens": n_tokens - n_sequences,
        "mse": 80.1 * fvu / 0.19, "fvu": fvu, "variance_explained": 1 - fvu, "cosine": 0.95, "l0": l0,
        "l1": 140.2, "l1_weighted": 140.2, "frac_alive": 0.9219, "n_dead": 5, "n_dense": 2,
        "relative_reconstruction_bias": 1.001,
        "ce_clean": 2.91, "ce_spliced": 2.91 + fvu * 2, "ce_zero": 9.8, "ce_mean": 7.5, "ce_diff": fvu * 2,
        "loss_recovered": (9.8 - 2.91 - fvu * 2) / (9.8 - 2.91), "kl": 0.41,
        "by_position": [
            {"start": 128 * b, "end": 128 * b + 127, "n_tokens": n_tokens // buckets, "fvu": fvu * (1 + 0.3 * b), "ce_diff": fvu * 2 * (1 + 0.2 * b)}
            for b in range(buckets)
        ],
        "feature_density": density,
        "l0_histogram": {"edges": list(range(0, 81, 4)), "counts": [0, 1, 3, 9, 20, 40, 60, 55, 30, 12, 5, 2, 1, 0, 0, 0, 0, 0, 0, 0]},
    }  # fmt: skip


def _old_log(steps: int = 10) -> list[dict[str, Any]]:
    """A log as saekit wrote it before the terms were named loss_<term> (mse was a scaled term)."""
    return [
        {"step": s, "tokens": 4096 * s, "loss": 1.0 / s, "mse": 0.9 / s, "aux": 0.01, "l0": 32.0, "fvu": 0.5 / s ** 0.5,
         "dead_frac": 0.01 * s, "lr": 4e-4, "tokens_per_s": 2e5, **({"resampled": 3} if s == 5 else {})}
        for s in range(1, steps + 1)
    ]  # fmt: skip


def _new_log(steps: int = 10, dead_known_from: int = 4) -> list[dict[str, Any]]:
    """A TopK run's log in the current schema: no feature ever dead, so the aux-k term is 0
    and loss equals loss_mse; the dead fraction is unknown until the dead window has passed."""
    return [
        {"step": s, "tokens": 4096 * s, "loss": 2.0 / s, "loss_mse": 2.0 / s, "loss_auxk": 0.0, "mse": 500.0 / s,
         "fvu": 0.5 / s ** 0.5, "l0": 32.0, "dead_frac": 0.0 if s >= dead_known_from else None, "lr": 4e-4,
         "tokens_per_s": 2e5}
        for s in range(1, steps + 1)
    ]  # fmt: skip


def make_folder(
    root: Path, name: str, arch: str = "topk", k: int | None = 32, fvu: float = 0.19, l0: float = 32.0,
    hook: str = "resid_post.9", model: str = "smollm2-135m", log: str | None = "old", training: bool = True,
    resolved: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    folder = root / name
    folder.mkdir()
    dictionary = _dictionary(arch, k, hook, model)
    (folder / "config.json").write_text(json.dumps({"format": "saekit", "format_version": 1, "dictionary": dictionary}))
    fixed = _regime(128, 256, fvu, l0, buckets=1)
    documents = _regime(1024, 40, fvu * 1.3, l0 * 1.1, buckets=8)
    documents["kl"] = "nan"  # a non-finite figure, stored as eval.json stores it
    evaluation = {"dictionary": dictionary, "model": model, "hook": hook, "dataset": None, "fixed": fixed, "documents": documents}
    (folder / "eval.json").write_text(json.dumps(evaluation))
    if log:
        records = _old_log() if log == "old" else _new_log()
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 11, "tok')
    if training:
        config = {"arch": arch, "k": k, "hook": hook, "tokens": 300_000, "lr": 4e-4, "context_length": 128, "seed": 0}
        info: dict[str, Any] = {"config": config, "wandb_id": "abc123def456"}
        if resolved is not None:
            info["resolved"] = resolved
        (folder / "training.json").write_text(json.dumps(info))
    return folder


def _images(page: str) -> list[str]:
    return re.findall(r'<img[^>]*src="([^"]*)"', page)


def _alts(page: str) -> list[str]:
    return re.findall(r'<img alt="([^"]*)"', page)


def _assert_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert all(src.startswith("data:image/png;base64,") for src in _images(page))


def _text(page: str) -> str:
    """The page's visible text (tags and the embedded images dropped)."""
    return re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", page, flags=re.S))


# ------------------------------------------------------------------ pixels


def _hue(colour: str) -> float:
    from matplotlib.colors import to_rgb

    return colorsys.rgb_to_hsv(*to_rgb(colour))[0]


def _pixels_by_hue(draw: Callable[[Any], None], colours: dict[str, str]) -> dict[str, int]:
    """How many pixels of each colour's hue (any shade or transparency) one panel shows
    outside its legend: a line fully drawn over by another scores (almost) nothing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import rgb_to_hsv
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    draw(ax)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].astype(float) / 255
    hsv = rgb_to_hsv(rgb)
    keep = np.ones(rgb.shape[:2], dtype=bool)
    legend = ax.get_legend()
    if legend is not None:
        box = legend.get_window_extent(canvas.get_renderer())
        height = rgb.shape[0]
        keep[int(height - box.y1) - 2 : int(height - box.y0) + 2, int(box.x0) - 2 : int(box.x1) + 2] = False
    coloured = keep & (hsv[..., 1] > 0.15) & (hsv[..., 2] > 0.2)
    counts = {}
    for name, colour in colours.items():
        d = np.abs(hsv[..., 0] - _hue(colour))
        counts[name] = int((coloured & (np.minimum(d, 1 - d) < 0.03)).sum())
    return counts


# ------------------------------------------------------------------ the report


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = make_folder(tmp_path_factory.mktemp("runs"), "topk-k32")
    out = write_report(folder)
    return folder, out.read_text()


def test_report_is_written_self_contained(report: tuple[Path, str]) -> None:
    folder, page = report
    assert (folder / "report.html").is_file()
    _assert_self_contained(page)
    # density, L0, position, training: objective, then FVU / L0 / dead fraction
    assert len(_images(page)) == 5


def test_report_shows_every_figure_for_both_regimes(report: tuple[Path, str]) -> None:
    _, page = report
    evaluation = json.loads((report[0] / "eval.json").read_text())
    rows = dict(re.findall(r"<tr><td>([a-z0-9_]+)</td>(.*?)</tr>", page))
    for name in RECONSTRUCTION + DOWNSTREAM:
        assert name in rows, name
        cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[name])
        fixed, fixed_n, documents, documents_n, meaning = cells
        assert meaning, name  # every figure says what it is, right there
        count = "n_ce_tokens" if name in DOWNSTREAM else "n_tokens"
        assert fixed_n == f"{evaluation['fixed'][count]:,}"
        assert documents_n == f"{evaluation['documents'][count]:,}"
        for value, regime in ((fixed, "fixed"), (documents, "documents")):
            expected = evaluation[regime][name]
            assert value == (f"{expected:,}" if isinstance(expected, int) else expected if isinstance(expected, str) else f"{expected:.4g}")
    assert re.findall(r"<td[^>]*>(.*?)</td>", rows["kl"])[2] == "nan"
    assert '<td class="nonfinite">nan</td>' in page


def test_report_header_and_counts(report: tuple[Path, str]) -> None:
    _, page = report
    for text in ("topk", "16 × 64", "resid_post.9", "smollm2-135m", "0.0421", "32,512 tokens", "40,920 tokens"):
        assert text in page, text
    assert page.count("5 dead (density 0) and 2 dense (density &gt; 0.1) of 64 features") == 2
    # training curves and config
    assert "10 records; last at step 10, 40,960 tokens." in page
    assert "the 1 step(s) where dead features were resampled" in page
    assert "1 unreadable line(s) skipped" in page
    assert "abc123def456" in page and "300,000" in page
    # position buckets of the documents regime
    assert "896–1,023" in page


def test_report_links_definitions_that_exist_in_the_repository(report: tuple[Path, str]) -> None:
    _, page = report
    assert "shared/" not in page and "METRICS.md" not in page
    assert "docs/metrics.md" in page
    assert (Path(__file__).parents[1] / "docs" / "metrics.md").is_file()


def test_report_without_log_or_training_json(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "bare", arch="relu", k=None, log=None, training=False)
    (tmp_path / "elsewhere").mkdir()
    out = write_report(folder, out=tmp_path / "elsewhere" / "r.html")
    page = out.read_text()
    assert out == tmp_path / "elsewhere" / "r.html"
    assert "No log.jsonl" in page and "No training.json" in page
    assert len(_images(page)) == 3
    _assert_self_contained(page)


def test_report_with_damaged_training_files_still_shows_the_figures(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "damaged", log=None)
    (folder / "training.json").write_text('{"config": {"arch": ')
    (folder / "log.jsonl").write_bytes(json.dumps(_new_log()[0]).encode() + b"\n\xff\xfe\x00garbage\n")
    page = write_report(folder).read_text()
    assert "training.json is not valid JSON" in page and "the training configuration cannot be shown" in page
    assert "1 records; last at step 1" in page and "1 unreadable line(s) skipped" in page


def test_report_missing_eval_names_file_and_fix(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "noeval")
    (folder / "eval.json").unlink()
    with pytest.raises(FormatError, match=r"eval\.json.*saekit eval"):
        write_report(folder)
    with pytest.raises(FormatError, match="other.json"):
        write_report(folder, eval_path=tmp_path / "other.json")


def test_report_rejects_eval_without_regimes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "old")
    (folder / "eval.json").write_text(json.dumps({"heldout": {"fvu": 0.2}}))
    with pytest.raises(FormatError, match="neither a 'fixed' nor a 'documents'"):
        write_report(folder)


# ------------------------------------------------------------------ plots that overlap


def test_identical_l0_histograms_both_stay_visible() -> None:
    """TopK keeps exactly k features per token in both regimes: the same histogram twice.
    Drawn as two plain outlines, the second hides the first."""
    spike = {"l0": 32.0, "l0_histogram": {"edges": list(range(41)), "counts": [0] * 32 + [5000] + [0] * 7}}
    counts = _pixels_by_hue(
        lambda ax: plots.l0_hist(ax, regimes={"fixed": spike, "documents": dict(spike)}),
        {"fixed": "C0", "documents": "C1"},
    )
    assert counts["fixed"] > 300 and counts["documents"] > 100, counts


def test_identical_l0_histograms_are_said_to_coincide(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "topk", log=None, training=False)
    evaluation = json.loads((folder / "eval.json").read_text())
    spike = {"edges": list(range(41)), "counts": [0] * 32 + [5000] + [0] * 7}
    evaluation["fixed"]["l0_histogram"] = evaluation["documents"]["l0_histogram"] = spike
    (folder / "eval.json").write_text(json.dumps(evaluation))
    page = write_report(folder).read_text()
    assert "histograms are identical: the filled bars (fixed) lie under the dashed outline (documents)" in page


def test_loss_stays_visible_when_it_equals_its_only_nonzero_term() -> None:
    records = _new_log()
    curves = training_curves.read_curves(records)
    counts = _pixels_by_hue(
        lambda ax: plots.objective_panel(ax, tokens=curves.tokens, objective=curves.objective, title="t", vlines=[]),
        {"loss": plots.TOTAL_COLOUR, "loss_mse": plots.TERM_COLOURS[0]},
    )
    assert counts["loss"] > 2 * counts["loss_mse"] > 0, counts


def test_zero_terms_and_coinciding_curves_are_named(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "topk", log="new")
    page = write_report(folder).read_text()
    assert "loss_auxk was 0 throughout: no feature was counted dead" in page
    assert "loss equals loss_mse at every record" in page
    # a term that is 0 at some records only leaves gaps, and says how many
    records = _new_log()
    for r in records[:3]:
        r["loss_auxk"] = 0.01
    notes = training_curves.objective_notes(training_curves.read_curves(records).objective)
    assert "loss_auxk was 0 at 7 of 10 records (gaps in its line: 0 has no place on a log axis)." in notes


def test_new_log_keeps_raw_mse_apart_from_the_scaled_objective() -> None:
    new = training_curves.read_curves(_new_log())
    assert list(new.objective) == ["loss", "loss_mse", "loss_auxk"]
    assert new.raw_mse == [500.0 / s for s in range(1, 11)]
    old = training_curves.read_curves(_old_log())
    assert list(old.objective) == ["loss", "mse", "aux"] and old.raw_mse is None
    assert old.resampled == [4096 * 5]


def test_new_log_report_draws_raw_mse_in_its_own_panel(tmp_path: Path) -> None:
    page = write_report(make_folder(tmp_path, "topk", log="new")).read_text()
    assert "training objective and reconstruction error" in _alts(page)
    assert "mse is in raw activation units, as in eval.json" in page
    assert "The dead fraction is not known before 16,384 tokens" in page


def test_dead_fraction_axis_starts_at_zero() -> None:
    from matplotlib.figure import Figure

    for values, top in (([0.0] * 10, 1.0), ([0.0, 0.1, 0.2], 0.23), ([None, None, 0.05], 0.0575)):
        ax = Figure().subplots()
        plots.dead_panel(ax, tokens=[1.0, 2.0, 3.0][: len(values)] if len(values) == 3 else list(range(10)),
                         dead=[figures.num(v) for v in values], vlines=[])  # fmt: skip
        bottom, upper = ax.get_ylim()
        assert bottom == 0.0 and upper == pytest.approx(top), (values, ax.get_ylim())


def test_dead_fraction_unknown_throughout_is_said(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "short", log=None,
                         resolved={"model": "m", "hook": "resid_post.9", "dataset": "d", "dead_after_tokens": 50_000})  # fmt: skip
    records = _new_log(dead_known_from=99)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page = write_report(folder).read_text()
    assert "not yet known at any record: the run is shorter than the dead window (a feature counts as dead after 50,000 silent tokens)" in page


# ------------------------------------------------------------------ configuration


def test_config_shows_resolved_defaults(tmp_path: Path) -> None:
    resolved = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "hook": "resid_post.9", "dataset": "embedded:wikipedia",
                "d_in": 576, "d_sae": 4608, "lr": 0.0015, "dead_after_tokens": 50_000, "checkpoint_every": 30_000,
                "act_scale": 0.0421, "keep_bos": False}  # fmt: skip
    folder = make_folder(tmp_path, "run", log=None, resolved=resolved)
    info = json.loads((folder / "training.json").read_text())
    info["config"].update(model=None, hook=None, dataset=None, lr=None, expansion=None)
    (folder / "training.json").write_text(json.dumps(info))
    page = write_report(folder).read_text()
    rows = dict(re.findall(r"<tr><td>([a-z_]+)</td><td>(.*?)</td></tr>", page))
    assert rows["hook"] == "resid_post.9 (default)"
    assert rows["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct (default)"
    assert rows["dataset"] == "embedded:wikipedia (default)"
    assert rows["lr"] == "0.0015 (default)"
    assert rows["expansion"] == "not set (default)"
    assert rows["d_sae"] == "4,608 (resolved when training started)"
    assert "—" not in _text(page)


def test_config_shows_a_value_that_was_resolved_differently(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "run", log=None, resolved={"model": "m", "hook": "resid_post.9", "tokens": 299_008})
    page = write_report(folder).read_text()
    rows = dict(re.findall(r"<tr><td>([a-z_]+)</td><td>(.*?)</td></tr>", page))
    assert rows["tokens"] == "300,000 (resolved: 299,008)" and rows["hook"] == "resid_post.9"


def test_header_states_the_bos_policy(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "run", log=None, training=False)
    assert "BOS position</td><td>not recorded in eval.json" in write_report(folder).read_text()
    evaluation = json.loads((folder / "eval.json").read_text())
    evaluation.update(keep_bos=True, keep_bos_source="override")
    (folder / "eval.json").write_text(json.dumps(evaluation))
    page = write_report(folder).read_text()
    assert "kept (evaluated and spliced); not as the dictionary was trained" in page


def test_config_of_an_older_training_json_uses_what_the_dictionary_records(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "run", log=None)
    info = json.loads((folder / "training.json").read_text())
    info["config"].update(model=None, hook=None, dataset=None)
    (folder / "training.json").write_text(json.dumps(info))
    page = write_report(folder).read_text()
    rows = dict(re.findall(r"<tr><td>([a-z_]+)</td><td>(.*?)</td></tr>", page))
    assert rows["hook"] == "resid_post.9 (default)" and rows["model"] == "smollm2-135m (default)"
    assert rows["dataset"] == "the embedded Wikipedia summaries (default)"


# ------------------------------------------------------------------ a run trained from cached activations


def _cache_trained_folder(root: Path) -> Path:
    """A run folder as `saekit train --activation-cache` leaves it: the dictionary, and an
    eval.json with the fixed regime's reconstruction figures only (no model was run)."""
    sae = random_dictionary("topk", d_in=8, d_sae=24, hook="resid_post.1", model="tiny")
    folder = save_dictionary(sae, root / "cached-run")
    metrics = evaluate_reconstruction(sae, torch.randn(300, 8, generator=torch.Generator().manual_seed(0)))
    evaluation = {"dictionary": sae.cfg.to_dict(), "model": "tiny", "hook": "resid_post.1", "dataset": None,
                  "fixed": {"context_length": 128, **metrics.to_dict(with_distributions=True)}}  # fmt: skip
    (folder / "eval.json").write_text(json.dumps(evaluation))
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _new_log()))
    return folder


def test_cache_trained_run_shows_what_exists_and_says_what_does_not(tmp_path: Path) -> None:
    page = write_report(_cache_trained_folder(tmp_path)).read_text()
    text = _text(page)
    assert "—" not in text and "not recorded sequences" not in text
    assert "reconstruction figures only" in text and "saekit train --activation-cache" in text
    assert "The documents regime was not evaluated" in text and "saekit eval" in text
    assert "documents: not evaluated." in text
    assert "fixed regime contexts of up to 128 tokens, 300 tokens (reconstruction), no cross-entropy figures" in re.sub(r"\s+", " ", text)
    # the figures table has the fixed regime's columns and reconstruction rows only
    assert "<th>documents</th>" not in page and "<td>ce_clean</td>" not in page and "<td>hook</td>" not in page
    assert "<td>fvu</td>" in page
    # one density panel, one L0 histogram, no position plot (there are no positions), the curves
    assert _alts(page) == ["histogram of log10 feature density per regime", "L0 distribution",
                           "training objective and reconstruction error", "FVU, L0 and dead fraction during training"]  # fmt: skip
    assert "fixed: eval.json holds no figures by position." in text
    assert f"`saekit eval {tmp_path / 'cached-run'}` runs the model" in re.sub(r"\s+", " ", text)


def test_the_way_to_the_missing_figures_names_the_text_the_run_was_trained_on(tmp_path: Path) -> None:
    """`saekit eval` reads the embedded corpus unless told otherwise; a run trained on
    other text (from a cache of it) is pointed at that text's held-out split."""
    folder = _cache_trained_folder(tmp_path)
    (folder / "training.json").write_text(json.dumps({"config": {}, "resolved": {"dataset": "/data/texts.jsonl"}}))
    text = re.sub(r"\s+", " ", _text(write_report(folder).read_text()))
    assert f"`saekit eval {folder} --dataset /data/texts.jsonl` runs the model" in text
    assert "on the held-out split of the text it was trained on" in text


# ------------------------------------------------------------------ eval.json must be of these weights


def _saved_with_eval(root: Path, name: str, sae: Any, evaluation_of: Any, fingerprint: bool = True) -> Path:
    folder = save_dictionary(sae, root / name)
    evaluation = {"dictionary": evaluation_of.cfg.to_dict(), "model": "tiny", "hook": evaluation_of.cfg.hook,
                  "dataset": None, "fixed": _regime(128, 8, 0.2, 4.0, buckets=1)}  # fmt: skip
    if fingerprint:
        evaluation["fingerprint"] = evaluation_of.fingerprint()
    (folder / "eval.json").write_text(json.dumps(evaluation))
    return folder


def test_report_refuses_an_eval_of_other_weights(tmp_path: Path) -> None:
    sae, other = random_dictionary("topk", seed=0), random_dictionary("topk", seed=1)
    folder = _saved_with_eval(tmp_path, "copied", sae, evaluation_of=other)
    with pytest.raises(FormatError, match=r"describes another dictionary than the weights in .*copied.*saekit eval"):
        write_report(folder)
    assert not (folder / "report.html").exists()
    with pytest.raises(FormatError, match="describes another dictionary"):
        compare([folder], out=tmp_path / "c.html")
    # its own figures are accepted, also after conversion to another format
    ok = _saved_with_eval(tmp_path, "own", sae, evaluation_of=sae)
    assert write_report(ok).is_file()
    converted = convert(ok, tmp_path / "as-dl", to="dictionary_learning")
    (converted / "eval.json").write_text((ok / "eval.json").read_text())
    assert write_report(converted).is_file()


def test_report_refuses_an_older_eval_whose_config_differs(tmp_path: Path) -> None:
    sae = random_dictionary("topk", d_sae=24)
    wider = random_dictionary("topk", d_sae=32)
    folder = _saved_with_eval(tmp_path, "stale", sae, evaluation_of=wider, fingerprint=False)
    with pytest.raises(FormatError, match=r"d_sae is 32 in eval\.json but 24 in the weights; run `saekit eval"):
        load_evaluated(folder)
    same = _saved_with_eval(tmp_path, "same", sae, evaluation_of=random_dictionary("topk", d_sae=24, seed=3), fingerprint=False)
    assert load_evaluated(same).dictionary["d_sae"] == 24  # no fingerprint: the config is all there is to check


def test_an_empty_fingerprint_is_no_fingerprint(tmp_path: Path) -> None:
    """A writer with nothing to fingerprint leaves []; the config is then what is checked."""
    sae = random_dictionary("topk", d_sae=24)
    folder = _saved_with_eval(tmp_path, "empty", sae, evaluation_of=random_dictionary("topk", d_sae=24, seed=2), fingerprint=False)
    evaluation = json.loads((folder / "eval.json").read_text())
    evaluation["fingerprint"] = []
    (folder / "eval.json").write_text(json.dumps(evaluation))
    assert load_evaluated(folder).dictionary["d_sae"] == 24


def test_report_rejects_a_damaged_fingerprint(tmp_path: Path) -> None:
    sae = random_dictionary("topk")
    folder = _saved_with_eval(tmp_path, "damaged", sae, evaluation_of=sae)
    evaluation = json.loads((folder / "eval.json").read_text())
    evaluation["fingerprint"] = "abc"
    (folder / "eval.json").write_text(json.dumps(evaluation))
    with pytest.raises(FormatError, match="'fingerprint' must be a list of numbers"):
        write_report(folder)


# ------------------------------------------------------------------ where pages go


def test_report_output_problems_are_one_error_before_any_work(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "run", log=None, training=False)
    with pytest.raises(OutputError, match=r"folder .*missing does not exist"):
        write_report(folder, out=tmp_path / "missing" / "r.html")
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        write_report(folder, out=tmp_path)
    # an input the page would replace
    before = (folder / "eval.json").read_text()
    with pytest.raises(OutputError, match="is not an HTML page"):
        write_report(folder, out=folder / "eval.json")
    assert (folder / "eval.json").read_text() == before
    # checked before anything is read: a bad --out wins over a folder with no evaluation
    (folder / "eval.json").unlink()
    with pytest.raises(OutputError):
        write_report(folder, out=tmp_path / "missing" / "r.html")
    with pytest.raises(OutputError):
        compare([tmp_path / "nothing-here"], out=tmp_path / "missing" / "c.html")
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_report_into_a_read_only_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "run", log=None, training=False)
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="read-only"):
            write_report(folder)
    finally:
        folder.chmod(0o755)


def test_read_only_folder_is_refused_by_the_writable_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as above for any user (root may write anywhere): the folder reports itself read-only."""
    folder = make_folder(tmp_path, "run", log=None, training=False)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).resolve() == folder.resolve() else real_access(p, mode))
    with pytest.raises(OutputError, match="read-only"):
        write_report(folder)
    monkeypatch.chdir(folder)
    with pytest.raises(OutputError, match="read-only"):
        compare([folder])


# ------------------------------------------------------------------ compare


def test_compare_table_and_frontier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folders = [
        make_folder(tmp_path, "topk-k16", k=16, fvu=0.25, l0=16.0),
        make_folder(tmp_path, "topk-k64", k=64, fvu=0.12, l0=64.0),
        make_folder(tmp_path, "relu-l2", arch="relu", k=None, fvu=0.2, l0=40.0),
    ]
    monkeypatch.chdir(tmp_path)
    text, out = compare(folders)
    assert out == Path("compare.html") and (tmp_path / "compare.html").is_file()
    lines = text.splitlines()
    body = lines[3:]  # regime row, figure row, rule
    assert "fixed" in lines[0] and "documents" in lines[0] and "loss_recovered" in lines[1]
    assert [line.split()[0] for line in body] == ["topk-k16", "topk-k64", "relu-l2"]
    assert body[0].split()[5:8] == ["16", "0.25", f"{(9.8 - 2.91 - 0.5) / (9.8 - 2.91):.4g}"]
    assert body[0].split()[-2:] == ["nan", "5"]  # documents kl is non-finite; 5 dead
    assert "warning" not in text
    page = out.read_text()
    _assert_self_contained(page)
    assert len(_images(page)) == 2
    assert 'class="banner"' not in page
    for name in ("topk-k16", "topk-k64", "relu-l2"):
        assert name in page


def test_compare_table_scrolls_inside_its_own_box(tmp_path: Path) -> None:
    folders = [make_folder(tmp_path, f"a-rather-long-run-name-{i}", log=None, training=False) for i in range(2)]
    page = compare(folders, out=tmp_path / "c.html")[1].read_text()
    assert re.search(r'<div class="scroll"><table>.*?</table></div>', page, re.S)
    assert re.search(r"\.scroll \{[^}]*overflow-x: auto", page)


def test_compare_mixed_hooks_warns(tmp_path: Path) -> None:
    folders = [
        make_folder(tmp_path, "a", log=None, training=False),
        make_folder(tmp_path, "b", hook="mlp_out.9", log=None, training=False),
    ]
    (tmp_path / "cmp").mkdir()
    text, out = compare(folders, out=tmp_path / "cmp" / "c.html")
    page = out.read_text()
    assert 'class="banner"' in page and "not comparable" in page
    assert "mlp_out.9" in page and "warning" in text


def test_frontier_joins_only_dictionaries_of_one_model_and_hook(tmp_path: Path) -> None:
    """Two TopK sweeps on different hook points and one on another model: each is its own
    line; a line through all of them would draw a trade-off that does not exist."""
    from matplotlib.figure import Figure

    group_of: dict[float, tuple[str, str]] = {}
    folders = []
    for i, (hook, model) in enumerate((("resid_post.9", "m"), ("mlp_out.9", "m"), ("resid_post.9", "other"))):
        for j, l0 in enumerate((10.0**i, 2 * 10.0**i)):
            folders.append(make_folder(tmp_path, f"g{i}-{j}", l0=l0, fvu=0.3 - 0.1 * j, hook=hook, model=model, log=None, training=False))
            group_of[l0] = (hook, model)
            group_of[l0 * 1.1] = (hook, model)  # the documents regime's L0
    entries = [load_evaluated(f) for f in folders]
    ax = Figure().subplots()
    plots.frontier(ax, entries, "fvu", "FVU")
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
    assert len(lines) == 6  # 3 (model, hook) groups × 2 regimes
    for line in lines:
        groups = {group_of[min(group_of, key=lambda x: abs(x - v))] for v in line.get_xdata()}
        assert len(groups) == 1, groups


def test_compare_says_what_a_dash_means(tmp_path: Path) -> None:
    full = make_folder(tmp_path, "full", log=None, training=False)
    cached = _cache_trained_folder(tmp_path)
    text, out = compare([full, cached], out=tmp_path / "c.html")
    assert "— in a figure column: not measured" in text and "— in a figure column: not measured" in out.read_text()
    text, _ = compare([full, make_folder(tmp_path, "relu", arch="relu", k=None, log=None, training=False)], out=tmp_path / "c.html")
    assert "not measured" not in text  # relu's k is "—" too, but it is no figure


def test_compare_needs_folders_with_evaluations(tmp_path: Path) -> None:
    with pytest.raises(SaekitError):
        compare([])
    folder = make_folder(tmp_path, "x")
    (folder / "eval.json").unlink()
    with pytest.raises(FormatError, match="saekit eval"):
        compare([folder], out=tmp_path / "c.html")


def test_report_and_compare_on_peer_format_folders(tmp_path: Path) -> None:
    """A SAELens and a dictionary_learning folder, evaluated by `saekit eval` (which writes the
    dictionary's description into eval.json): the report describes them from it and shows the
    peer's own config as the training configuration."""
    saekit_run = make_folder(tmp_path, "saekit-run")
    peers = {}
    for name, config_file, peer_config in (
        ("saelens-run", "cfg.json", {"architecture": "topk", "d_in": 16, "d_sae": D_SAE, "metadata": {"hook_name": "blocks.9.hook_resid_post"}}),
        ("dl-run", "config.json", {"trainer": {"dict_class": "AutoEncoderTopK", "k": 32, "lr": 0.0004}, "buffer": {"d_submodule": 16}}),
    ):  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        (folder / config_file).write_text(json.dumps(peer_config))
        (folder / "eval.json").write_text((saekit_run / "eval.json").read_text())
        peers[name] = folder
    page = write_report(peers["dl-run"]).read_text()
    assert "From config.json" in page and "trainer.dict_class" in page and "AutoEncoderTopK" in page
    page = write_report(peers["saelens-run"]).read_text()
    assert "From cfg.json" in page and "metadata.hook_name" in page and "d_sae 64" in page
    table, _ = compare([saekit_run, *peers.values()], out=tmp_path / "cmp.html")
    assert all(name in table for name in ("saekit-run", "saelens-run", "dl-run"))


def test_report_pages_render_as_png(report: tuple[Path, str]) -> None:
    """Every embedded image is a PNG matplotlib wrote (not an empty placeholder)."""
    for src in _images(report[1]):
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        from matplotlib.image import imread

        assert imread(io.BytesIO(data), format="png").shape[0] > 100


def test_frontier_never_joins_evaluations_on_other_text_or_bos_policy(tmp_path):
    from saekit.report.plots import frontier_series

    folders = []
    for i, (dataset, keep_bos) in enumerate([("a.jsonl", False), ("a.jsonl", False), ("b.jsonl", False), ("a.jsonl", True)]):
        folder = make_folder(tmp_path, f"run{i}", fvu=0.1 + 0.05 * i, l0=10.0 + i)
        ev = json.loads((folder / "eval.json").read_text())
        ev.update(dataset=f"/data/{dataset}", keep_bos=keep_bos)
        (folder / "eval.json").write_text(json.dumps(ev))
        folders.append(folder)
    series = frontier_series([load_evaluated(f) for f in folders], "fvu")
    sizes = sorted(len(points) for key, points in series.items() if key[0] == "fixed")
    assert sizes == [1, 1, 2]  # only the two on a.jsonl without BOS share a line
