"""The HTML report and the comparison page, built from fixture folders (no model, no training).

The fixtures follow eval.json's schema exactly, with realistic numbers and one
non-finite figure (stored as the string "nan"), so the pages are tested on what
`saekit eval` writes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from saekit.errors import FormatError, SaekitError
from saekit.report import compare, write_report

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


def make_folder(
    root: Path, name: str, arch: str = "topk", k: int | None = 32, fvu: float = 0.19, l0: float = 32.0,
    hook: str = "resid_post.9", model: str = "smollm2-135m", log: bool = True, training: bool = True,
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
        records = [
            {"step": s, "tokens": 4096 * s, "loss": 1.0 / s, "mse": 0.9 / s, "aux": 0.01, "l0": 32.0, "fvu": 0.5 / s ** 0.5,
             "dead_frac": 0.01 * s, "lr": 4e-4, "tokens_per_s": 2e5, **({"resampled": 3} if s == 5 else {})}
            for s in range(1, 11)
        ]  # fmt: skip
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 11, "tok')
    if training:
        config = {"arch": arch, "k": k, "hook": hook, "tokens": 300_000, "lr": 4e-4, "context_length": 128, "seed": 0}
        (folder / "training.json").write_text(json.dumps({"config": config, "wandb_id": "abc123def456"}))
    return folder


def _images(page: str) -> list[str]:
    return re.findall(r'<img[^>]*src="([^"]*)"', page)


def _assert_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert all(src.startswith("data:image/png;base64,") for src in _images(page))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = make_folder(tmp_path_factory.mktemp("runs"), "topk-k32")
    out = write_report(folder)
    return folder, out.read_text()


def test_report_is_written_self_contained(report: tuple[Path, str]) -> None:
    folder, page = report
    assert (folder / "report.html").is_file()
    _assert_self_contained(page)
    # density, L0, position, training curves
    assert len(_images(page)) == 4


def test_report_shows_every_figure_for_both_regimes(report: tuple[Path, str]) -> None:
    _, page = report
    evaluation = json.loads((report[0] / "eval.json").read_text())
    rows = dict(re.findall(r"<tr><td>([a-z0-9_]+)</td>(.*?)</tr>", page))
    for name in RECONSTRUCTION + DOWNSTREAM:
        assert name in rows, name
        cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[name])
        fixed, fixed_n, documents, documents_n = cells
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


def test_report_without_log_or_training_json(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "bare", arch="relu", k=None, log=False, training=False)
    out = write_report(folder, out=tmp_path / "elsewhere" / "r.html")
    page = out.read_text()
    assert out == tmp_path / "elsewhere" / "r.html"
    assert "No log.jsonl" in page and "No training.json" in page
    assert len(_images(page)) == 3
    _assert_self_contained(page)


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


def test_compare_mixed_hooks_warns(tmp_path: Path) -> None:
    folders = [
        make_folder(tmp_path, "a", log=False, training=False),
        make_folder(tmp_path, "b", hook="mlp_out.9", log=False, training=False),
    ]
    text, out = compare(folders, out=tmp_path / "cmp" / "c.html")
    page = out.read_text()
    assert 'class="banner"' in page and "not comparable" in page
    assert "mlp_out.9" in page and "warning" in text


def test_compare_needs_folders_with_evaluations(tmp_path: Path) -> None:
    with pytest.raises(SaekitError):
        compare([])
    folder = make_folder(tmp_path, "x")
    (folder / "eval.json").unlink()
    with pytest.raises(FormatError, match="saekit eval"):
        compare([folder])


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
