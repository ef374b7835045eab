"""A probe's threshold set on ordinary text to a chosen false-positive rate, and its recall there.

A probe deployed as a monitor sees mostly text that is not what it looks for, so its
threshold is better set on such text than at the midpoint of a balanced training set: the
threshold is the (1 − FPR) quantile of the probe's scores on control texts, so that a
share FPR of ordinary texts is flagged. The control texts are split in two halves by a
seed: the threshold comes from one, and the FPR realised on the other says whether it
holds on texts it was not set on. Recall is then measured on a labelled dataset: the share
of its positive statements (true ones, or false ones with ``positive="false"``) flagged.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..progress import ProgressCallback
from .activations import centre, statement_activations
from .datasets import TruthDataset, texts_hash

MIN_EXPECTED_FLAGGED = 5
"""Each half of the control texts must hold at least this many texts above the threshold at
the FPR asked (so the quantile is an order statistic within the data, not past its end, and
the realised FPR is measured on more than a couple of texts)."""

DEFAULT_MAX_CONTROLS = 2000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_MIN_WORDS, _MAX_WORDS = 5, 60


def check_fpr(fpr: float) -> None:
    if not 0 < fpr < 1:
        raise ConfigError(f"the false-positive rate must be between 0 and 1 (exclusive), not {fpr}; e.g. 0.01 for 1%")


def controls_needed(fpr: float, heldout_fraction: float = 0.5) -> int:
    """The fewest control texts for ``fpr``: each half flags at least MIN_EXPECTED_FLAGGED."""
    check_fpr(fpr)
    smaller = min(heldout_fraction, 1 - heldout_fraction)
    return math.ceil(MIN_EXPECTED_FLAGGED / fpr / smaller)


def check_enough_controls(n: int, fpr: float, heldout_fraction: float = 0.5) -> None:
    needed = controls_needed(fpr, heldout_fraction)
    if n < needed:
        raise DataError(f"{n} control texts are too few for a false-positive rate of {fpr:g}: the threshold half and "
                        f"the held-out half must each expect at least {MIN_EXPECTED_FLAGGED} flagged texts, which "
                        f"takes at least {needed} control texts; give more (--max-controls, a bigger --control "
                        "file) or ask for a larger --fpr")


def threshold_at_fpr(scores: Tensor, fpr: float) -> float:
    """The (1 − ``fpr``) quantile of ``scores`` (linear interpolation between order
    statistics): a fresh score from the same distribution exceeds it with probability
    close to ``fpr``."""
    check_fpr(fpr)
    scores = scores.detach().double().flatten().cpu()
    if len(scores) < 2:
        raise DataError("a threshold needs at least 2 control scores")
    if not torch.isfinite(scores).all():
        raise DataError("the control scores include NaN or Inf; check the activations")
    return float(torch.quantile(scores, 1 - fpr))


@dataclass(frozen=True)
class FPRCalibration:
    """The threshold set on one half of the control scores, and the FPR on both halves."""

    target_fpr: float
    threshold: float
    n_calibration: int
    n_heldout: int
    calibration_fpr: float
    heldout_fpr: float

    @property
    def heldout_fpr_sd(self) -> float:
        """The binomial standard deviation of the held-out FPR at the target rate."""
        return math.sqrt(self.target_fpr * (1 - self.target_fpr) / self.n_heldout) if self.n_heldout else float("nan")


def calibrate_fpr(control_scores: Tensor, fpr: float, *, seed: int = 0, heldout_fraction: float = 0.5) -> FPRCalibration:
    """Split ``control_scores`` by ``seed``, set the threshold at ``fpr`` on one part and
    measure the FPR realised on the other (score > threshold is flagged)."""
    check_fpr(fpr)
    if not 0 < heldout_fraction < 1:
        raise ConfigError(f"the held-out fraction must be between 0 and 1, not {heldout_fraction}")
    scores = control_scores.detach().double().flatten().cpu()
    check_enough_controls(len(scores), fpr, heldout_fraction)
    order = list(range(len(scores)))
    random.Random(f"controls-{seed}").shuffle(order)
    n_held = round(len(scores) * heldout_fraction)
    held, calib = scores[order[:n_held]], scores[order[n_held:]]
    threshold = threshold_at_fpr(calib, fpr)
    return FPRCalibration(fpr, threshold, len(calib), len(held), float((calib > threshold).double().mean()),
                          float((held > threshold).double().mean()))


@dataclass(frozen=True)
class RecallAtFPR:
    """A probe's recall on a labelled dataset at the control-calibrated threshold, beside its
    figures at its own (training) threshold."""

    dataset: str
    positive: str  # "true" or "false": which statements count as positive (flagged)
    calibration: FPRCalibration
    n_positive: int
    recall: float
    dataset_fpr: float  # the share of the dataset's negative statements flagged
    own_threshold: float
    own_recall: float
    own_control_fpr: float  # the share of all control texts flagged at the probe's own threshold

    def to_dict(self) -> dict[str, Any]:
        c = self.calibration
        return {"dataset": self.dataset, "positive": self.positive, "target_fpr": c.target_fpr,
                "threshold": c.threshold, "n_calibration": c.n_calibration, "n_heldout": c.n_heldout,
                "calibration_fpr": c.calibration_fpr, "heldout_fpr": c.heldout_fpr,
                "heldout_fpr_sd": c.heldout_fpr_sd, "n_positive": self.n_positive, "recall": self.recall,
                "dataset_fpr": self.dataset_fpr, "own_threshold": self.own_threshold,
                "own_recall": self.own_recall, "own_control_fpr": self.own_control_fpr}


def recall_at_fpr(control_scores: Tensor, dataset_scores: Tensor, labels: Sequence[int], fpr: float, *,
                  positive: str = "true", own_threshold: float = 0.0, dataset: str = "dataset",
                  seed: int = 0) -> RecallAtFPR:
    """Calibrate on ``control_scores`` (probe scores, positive: true) and score ``dataset_scores``.

    With ``positive="false"`` the scores are negated, so the flagged statements are those
    the probe finds most false, and the control quantile is taken of the negated scores.
    """
    if positive not in ("true", "false"):
        raise ConfigError(f"positive must be 'true' or 'false', not {positive!r}")
    sign = 1.0 if positive == "true" else -1.0
    control = sign * control_scores.detach().double().cpu()
    scores = sign * dataset_scores.detach().double().cpu()
    own = sign * own_threshold
    y = torch.tensor(list(labels)) == (1 if positive == "true" else 0)
    if not y.any() or y.all():
        raise DataError(f"dataset {dataset} needs both {positive} statements and others to measure recall")
    cal = calibrate_fpr(control, fpr, seed=seed)
    return RecallAtFPR(dataset, positive, cal, int(y.sum()), float((scores[y] > cal.threshold).double().mean()),
                       float((scores[~y] > cal.threshold).double().mean()), own_threshold,
                       float((scores[y] > own).double().mean()), float((control > own).double().mean()))


# ----------------------------------------------------------------------------- control texts


@dataclass(frozen=True)
class ControlTexts:
    """Unlabelled texts read like statements (``statement_activations`` reads ``name``,
    ``statements``, ``content_hash`` and the length), so their activations are cached too."""

    name: str
    statements: tuple[str, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.statements)

    @property
    def content_hash(self) -> str:
        return texts_hash(self.statements)


def corpus_sentences(documents: Sequence[str]) -> list[str]:
    """The sentences of ``documents`` of 5 to 60 words (a heading or a table row is not one)."""
    out = []
    for doc in documents:
        for sentence in _SENTENCE_END.split(doc.strip()):
            sentence = " ".join(sentence.split())
            if _MIN_WORDS <= len(sentence.split()) <= _MAX_WORDS:
                out.append(sentence)
    return out


def read_control_texts(source: str | None = None, *, max_texts: int | None = DEFAULT_MAX_CONTROLS, seed: int = 0,
                       text_field: str = "text") -> ControlTexts:
    """Control texts: sentences of the embedded Wikipedia corpus (``source`` None), the
    non-empty lines of a .txt file, or the ``text_field`` of each record of a .jsonl file;
    duplicates dropped, shuffled by ``seed``, at most ``max_texts``."""
    from ..data import iter_documents

    if max_texts is not None and max_texts < 2:
        raise ConfigError(f"--max-controls must be at least 2, not {max_texts}")
    if source is None:
        texts = corpus_sentences(list(iter_documents(None)))
        name, where = "wiki-sentences", "the embedded Wikipedia corpus"
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: no such control file; give a .txt file (one text per line) or a .jsonl file "
                            "(one record per line, with a text field)")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            try:
                texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text ({e})") from None
        elif suffix == ".jsonl":
            texts = [" ".join(t.split()) for t in iter_documents(str(path), text_field=text_field)]
        else:
            raise DataError(f"{path}: a control file is .txt (one text per line) or .jsonl (records with a "
                            f"'{text_field}' field), not {suffix or 'a file without an extension'}")
        name, where = path.stem, str(path)
    texts = sorted(set(texts))  # sorted first: the order then depends on the seed only
    random.Random(f"control-texts-{seed}").shuffle(texts)
    if max_texts is not None:
        texts = texts[:max_texts]
    if not texts:
        raise DataError(f"{where} holds no control texts")
    return ControlTexts(f"control-{name}", tuple(texts), where)


def probe_scores_on(lm, probe, texts: TruthDataset | ControlTexts, hook: str, position: Any, *, centred: bool = False,
                    cache_dir: str | Path | None = None, use_cache: bool = True, batch_size: int = 32,
                    progress: ProgressCallback | None = None) -> Tensor:
    """The probe's scores on ``texts`` at its hook point and token (activations cached);
    centred on their own mean first when the probe was trained on centred activations."""
    acts = statement_activations(lm, texts, [hook], position, cache_dir=cache_dir, use_cache=use_cache,  # type: ignore[arg-type]
                                 batch_size=batch_size, progress=progress)[hook]
    return probe.scores(centre(acts) if centred else acts)
