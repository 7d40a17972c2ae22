"""The task world's pretraining corpus: clean documents of worked examples with injected exact duplicates,
near-duplicates and junk, labelled so that `lit-llm prepare`'s cleaning can be scored.

A clean document is an optional intro line followed by worked examples ("Q: ... / A: ...", the chat-like
"User: ... / Assistant: ..." phrasing with the SFT answer sentences) and prose explanations, at least
`MIN_DOC_WORDS` words long so that a single word edit keeps the word 5-shingle Jaccard above 0.7.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

from lit_llm.world.defs import TASK_DEFS, parse_key, say
from lit_llm.world.examples import Example, example_stream, rng_for


MIN_DOC_WORDS = 40
MIN_SEGMENTS = 3

INTROS = (
    "Here are some practice problems with answers.",
    "Worked examples for quick arithmetic and word puzzles.",
    "Let us practice a few short exercises.",
    "A few questions and their answers.",
    "Practice makes perfect. Try these before reading the answers.",
)
BOILERPLATE = (
    "Click here to subscribe!",
    "Subscribe to our newsletter for more updates.",
    "Cookie policy | Terms of use | Privacy",
    "Share this page on social media.",
    "Copyright 2024. All rights reserved.",
    "Log in | Sign up | Home | Contact",
)
SHORT_JUNK = ("Home", "ok", "Read more", "Loading...", "Page not found", "N/A", "Next page", "Thanks!")
_SYMBOLS = "#$%&*@!~^+=<>|/\\{}[]_;:?0123456789"
_EDITABLE = frozenset(
    "the of is in from to and so by at are there one because since than between larger bigger sum difference "
    "spelled reading sorting putting turn into multiply gives order letters letter word number numbers start count "
    "what how many times does".split()
)
_FILLERS = ("also", "really", "then", "now", "just", "simply", "indeed", "again", "here", "quite", "so", "well")


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Word n-shingles of a text (whitespace-split words; a text shorter than n is one shingle)."""
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def shingle_jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of the word n-shingle sets of two texts."""
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _segment(example: Example, rng: random.Random) -> str:
    """One worked example: Q/A, chat-like, prose explanation, or Q/A followed by the explanation."""
    t = TASK_DEFS[example.task]
    explain = rng.choice(t.explanations).format(**t.fields(parse_key(example.key)), ans=example.answer)
    style = rng.randrange(4)
    if style == 0:
        return f"Q: {example.prompt}\nA: {example.answer}"
    if style == 1:
        return f"User: {example.prompt}\nAssistant: {say(example.answer, rng)}"
    if style == 2:
        return explain
    return f"Q: {example.prompt}\nA: {example.answer}\n{explain}"


def clean_doc(examples: Iterator, rng: random.Random) -> str:
    """A document of worked examples drawn from `examples` (an endless iterator), >= MIN_DOC_WORDS words."""
    parts = [rng.choice(INTROS)] if rng.random() < 0.5 else []
    n_segments = n_words = 0
    while n_segments < MIN_SEGMENTS or n_words < MIN_DOC_WORDS:
        parts.append(_segment(next(examples), rng))
        n_segments, n_words = n_segments + 1, n_words + len(parts[-1].split())
    return "\n".join(parts)


def add_junk_lines(doc: str, rng: random.Random) -> tuple[str, int]:
    """Insert 1-2 boilerplate lines at the start or end of a document; returns (doc, number of lines added)."""
    lines = doc.split("\n")
    k = rng.randint(1, 2)
    for _ in range(k):
        lines.insert(rng.choice((0, len(lines))), rng.choice(BOILERPLATE))
    return "\n".join(lines), k


def _edit(lines: list[list[str]], rng: random.Random) -> list[list[str]]:
    """One word edit (insert a filler before, replace or delete a template word) of a document split in lines/words.

    Only function words of the templates (`_EDITABLE`) outside answer lines are touched, so operands and answers
    stay intact: a near-duplicate never teaches a wrong answer.
    """
    spots = [(li, wi) for li, words in enumerate(lines) if words and words[0] not in ("A:", "Assistant:")
             for wi, w in enumerate(words) if w.lower() in _EDITABLE]
    if not spots:
        return lines
    li, wi = rng.choice(spots)
    words = list(lines[li])
    op = rng.randrange(3)
    if op == 0:
        words.insert(wi, rng.choice(_FILLERS))
    elif op == 1:
        words[wi] = rng.choice(_FILLERS)
    else:
        del words[wi]
    return lines[:li] + [words] + lines[li + 1 :]


def near_duplicate(doc: str, rng: random.Random, lo: float = 0.7, hi: float = 0.9) -> str:
    """A copy of `doc` with a few template words inserted/replaced/deleted, word 5-shingle Jaccard in [lo, hi].

    Edits are applied one at a time until the Jaccard drops below a random target in [lo+0.02, hi-0.02]; an edit
    that would take it below `lo` is discarded. Needs a document of >= MIN_DOC_WORDS words.
    """
    base, lines = shingles(doc), [line.split(" ") for line in doc.split("\n")]
    target = rng.uniform(lo + 0.02, hi - 0.02)
    for _ in range(500):
        cand = _edit(lines, rng)
        sim = len(base & (s := shingles(_join(cand)))) / len(base | s)
        if sim >= lo:
            lines = cand
            if sim <= target:
                break
    out = _join(lines)
    if not lo <= shingle_jaccard(doc, out) <= hi:
        raise ValueError(f"could not make a near-duplicate of a {len(doc.split())}-word document")
    return out


def _join(lines: list[list[str]]) -> str:
    return "\n".join(" ".join(words) for words in lines)


def junk_doc(rng: random.Random) -> str:
    """A junk document: random symbol soup, repeated boilerplate, or a very short page."""
    kind = rng.randrange(3)
    if kind == 0:
        words = ("".join(rng.choice(_SYMBOLS) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(5, 25)))
        return " ".join(words)
    if kind == 1:
        return "\n".join([rng.choice(BOILERPLATE)] * rng.randint(3, 10))
    return rng.choice(SHORT_JUNK)


CORPUS_KINDS: tuple[str, ...] = ("clean", "exact_dup", "near_dup", "junk")


@dataclass
class Corpus:
    """A pretraining corpus with the labels of what was injected.

    Args:
        docs: the documents.
        kinds: per document, one of `CORPUS_KINDS`.
        sources: per document, for "exact_dup"/"near_dup" the index (into docs) of the clean document it copies,
            else None.
        junk_lines: per document, the number of boilerplate lines injected into an otherwise good document
            (copied along by its duplicates; 0 for junk documents, which are junk as a whole).
    """

    docs: list[str]
    kinds: list[str]
    sources: list[int | None]
    junk_lines: list[int]

    def __len__(self) -> int:
        return len(self.docs)

    def indices(self, kind: str) -> list[int]:
        """Indices of the documents of one kind."""
        return [i for i, k in enumerate(self.kinds) if k == kind]


def _corpus_counts(n_docs: int, rates: Sequence[float]) -> list[int]:
    """[n_clean, n_dup, n_near, n_junk] for the given [dup, near_dup, junk] rates (rounded)."""
    if any(not 0.0 <= r <= 1.0 for r in rates):
        raise ValueError(f"rates must be in [0, 1], got {rates}")
    counts = [round(n_docs * r) for r in rates]
    n_clean = n_docs - sum(counts)
    if n_clean < 0 or (n_clean == 0 and counts[0] + counts[1] > 0):
        raise ValueError(f"rates {rates} leave no clean documents to duplicate")
    return [n_clean, *counts]


def pretrain_corpus(n_docs: int, seed: int = 0, dup_rate: float = 0.1, near_dup_rate: float = 0.1,
                    junk_rate: float = 0.1, split: str = "train", junk_line_rate: float = 0.05,
                    tasks: Sequence[str] | None = None, max_digits: int = 2) -> Corpus:
    """Pretraining documents built from worked examples of one split, with injected duplicates and junk.

    Exactly round(n_docs * rate) documents of each injected kind (the rest clean), in shuffled order. Clean
    documents hold >= 3 worked examples (Q/A, chat-like, prose explanation) and >= 40 words; exact duplicates copy a
    clean document; near-duplicates edit a few words of one (word 5-shingle Jaccard to it in [0.7, 0.9]); junk
    documents are symbol soup, repeated boilerplate or very short pages. Tasks are balanced: keys of a task repeat
    once its keys in the split are used up (see `make_examples(unique=False)`).

    Args:
        n_docs: total number of documents.
        seed: random seed.
        dup_rate: share of exact duplicate documents.
        near_dup_rate: share of near-duplicate documents.
        junk_rate: share of junk documents.
        split: split whose keys the examples use ("train" keeps held-out keys out of pretraining).
        junk_line_rate: probability that a clean document gets 1-2 boilerplate lines (see `Corpus.junk_lines`).
        tasks: subset of `TASKS` (default: all).
        max_digits: difficulty knob, numbers range over [0, 10**max_digits).
    """
    n_clean, n_dup, n_near, n_junk = _corpus_counts(n_docs, (dup_rate, near_dup_rate, junk_rate))
    rng = rng_for("corpus", seed, split, max_digits)
    stream = example_stream(split, seed, tasks, max_digits, "corpus", unique=False)  # balanced, keys repeat
    items = []  # (doc, kind, index of the source among the clean docs, junk lines); clean docs come first
    for _ in range(n_clean):
        doc, lines = clean_doc(stream, rng), 0
        if rng.random() < junk_line_rate:
            doc, lines = add_junk_lines(doc, rng)
        items.append((doc, "clean", None, lines))
    for _ in range(n_dup):
        s = rng.randrange(n_clean)
        items.append((items[s][0], "exact_dup", s, items[s][3]))
    for _ in range(n_near):
        s = rng.randrange(n_clean)
        items.append((near_duplicate(items[s][0], rng), "near_dup", s, items[s][3]))
    items += [(junk_doc(rng), "junk", None, 0) for _ in range(n_junk)]
    order = list(range(len(items)))
    rng.shuffle(order)
    new_index = {old: new for new, old in enumerate(order)}
    return Corpus(docs=[items[o][0] for o in order], kinds=[items[o][1] for o in order],
                  sources=[None if items[o][2] is None else new_index[items[o][2]] for o in order],
                  junk_lines=[items[o][3] for o in order])


