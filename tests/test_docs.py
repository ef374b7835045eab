"""The documentation a user's clone holds: no link leads outside the repository, and
docs/metrics.md defines every figure saekit writes.

A reference to a file that is not in the repository (``../shared/docs/METRICS.md``, a
design note kept elsewhere) is a dead end for everyone who reads the clone, so every
Markdown link and every ``*.md`` file named in README.md, docs/ and src/ must exist here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from saekit.evaluation import EvalResult
from saekit.report import DOWNSTREAM, METRICS_DOC, RECONSTRUCTION

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("README.md", "docs", "src")
TEXT_SUFFIXES = {".md", ".py", ".txt", ".toml", ".cfg", ".html"}
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MD_FILE = re.compile(r"(?<![\w/.-])((?:\.\./|[\w.-]+/)*[\w-]+\.md)\b")


def _checked_files() -> list[Path]:
    """The tracked files under README.md, docs/ and src/ (all files there outside git)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--", *CHECKED], cwd=ROOT, capture_output=True, text=True, check=True)
        files = [ROOT / line for line in listed.stdout.splitlines() if line]
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", *CHECKED], cwd=ROOT,
                                   capture_output=True, text=True, check=True)  # fmt: skip
        files += [ROOT / line for line in untracked.stdout.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = [ROOT / "README.md", *(p for d in CHECKED[1:] for p in (ROOT / d).rglob("*") if p.is_file())]
    return sorted({f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file() and ".egg-info" not in str(f)})


def _repository_md_names() -> set[str]:
    return {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts and ".git" not in p.parts}


def test_the_checked_files_include_the_docs_and_the_code() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _checked_files()}
    assert {"README.md", METRICS_DOC, "src/saekit/report/run_page.py", "src/saekit/evaluation.py"} <= names


def test_nothing_points_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _checked_files()
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if "../shared" in line or "shared/docs" in line
    ]
    assert not offenders, "references outside the repository:\n" + "\n".join(offenders)


def test_every_markdown_link_resolves_inside_the_repository() -> None:
    broken = []
    for path in _checked_files():
        if path.suffix != ".md":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for target in MARKDOWN_LINK.findall(line):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue  # a URL or an anchor on the same page
                resolved = (path.parent / target.split("#", 1)[0]).resolve()
                if not resolved.exists() or ROOT not in resolved.parents:
                    broken.append(f"{path.relative_to(ROOT)}:{n}: {target}")
    assert not broken, "links to paths that do not exist in the repository:\n" + "\n".join(broken)


def test_every_named_md_file_exists_in_the_repository() -> None:
    """``METRICS.md``, ``LESSONS.md``: a file named in a docstring or help text must be
    one a reader of the clone can open."""
    known = _repository_md_names()
    missing = []
    for path in _checked_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for name in MD_FILE.findall(line):
                if not (ROOT / name).exists() and not (path.parent / name).exists() and Path(name).name not in known:
                    missing.append(f"{path.relative_to(ROOT)}:{n}: {name}")
    assert not missing, "names of .md files that are not in the repository:\n" + "\n".join(missing)


@pytest.fixture(scope="module")
def metrics_doc() -> str:
    return (ROOT / METRICS_DOC).read_text(encoding="utf-8")


def test_metrics_doc_defines_every_figure_saekit_writes(metrics_doc: str) -> None:
    figures = set(RECONSTRUCTION) | set(DOWNSTREAM) | set(EvalResult.TABLE_FIGURES)
    figures |= {"feature_density", "l0_histogram", "by_position", "n_tokens", "n_ce_tokens", "requested_tokens",
                "n_sequences", "context_length", "fingerprint", "keep_bos", "act_scale"}  # fmt: skip
    undefined = sorted(f for f in figures if f"`{f}`" not in metrics_doc)
    assert not undefined, f"{METRICS_DOC} does not define: {undefined}"


def test_metrics_doc_defines_the_training_log_fields(metrics_doc: str) -> None:
    from saekit.dictionaries import ARCHITECTURES, LossParams
    import torch

    fields = {"step", "tokens", "loss", "mse", "fvu", "l0", "dead_frac", "lr", "tokens_per_s", "resampled",
              "data_wait_frac", "read_gb_per_s"}
    # The terms each architecture's objective actually reports, with the log's prefix.
    for arch, cls in ARCHITECTURES.items():
        from saekit.dictionaries import DictionaryConfig

        sae = cls(DictionaryConfig(arch=arch, d_in=4, d_sae=8, k=2 if cls.uses_k else None))
        sae.calibrate(torch.randn(16, 4))
        terms = sae(torch.randn(16, 4), params=LossParams(sparsity_coeff=1.0)).terms
        fields |= {f"loss_{t}" for t in terms}
    log_section = metrics_doc.split("## The training log", 1)[1]
    undefined = sorted(f for f in fields if f"`{f}`" not in log_section)
    assert not undefined, f"{METRICS_DOC}'s training-log section does not define: {undefined}"
    for unit in ("scaled units", "raw units", "tokens/s"):
        assert unit in log_section
