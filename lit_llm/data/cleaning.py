"""Cleaning steps of `lit-llm prepare`: normalisation, quality, language and block-list filters, deduplication.

Each step has a config dataclass (the fields are `lit-llm prepare` config keys) and works on plain strings, so
it can be tested on hand-made documents. The per-document steps also come as batch functions for
`datasets.Dataset.map` (`*_batch`: a dict of columns in, a dict of new columns out), which `clean_corpus` runs
over a `datasets.Dataset` of all sources, possibly in several processes. Deduplication (`dedup.py`) needs global state and
is split in two: a parallel per-document part (`exact_keys_batch`, `minhash_batch`) and a sequential pass that
keeps the first occurrence (`first_occurrences`, `near_duplicates`).

Deliberate simplifications:
    * Whitespace clean-up never collapses spaces inside a line (that would break code indentation); it strips
      line ends, unifies line breaks and squeezes runs of blank lines.
    * Quality rules follow Gopher (Rae et al. 2021, appendix A) in spirit, over lower-cased whitespace words;
      the thresholds are config values, not Gopher's exact set (no stop-word, bullet or ellipsis rules).
    * Near-duplicates: a document is dropped when an earlier kept document is an LSH candidate whose MinHash
      estimate of the Jaccard similarity reaches the threshold (greedy, first kept wins; no connected components).
    * The language of a document is decided on its first `max_chars` characters.
    * Special-token strings (e.g. "<|end|>") are not stripped: they would encode to special ids (see tokenizer.py).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal

import datasets
import numpy as np
from langid import langid

from lit_llm.data.dedup import (
    ExactDedupConfig, NearDedupConfig, exact_keys_batch, first_occurrences, minhash_batch, near_duplicates,
)

ALLOWED_PUNCTUATION = frozenset(".,;:!?'\"()-")  # sentence punctuation; every other non-alphanumeric is junk
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u2060\ufeff]")  # control and zero-width
_BLANK_RUNS = re.compile(r"\n{3,}")


# ----------------------------------------------------------------------------------------------- normalisation
@dataclass
class NormalizeConfig:
    """Unicode normalisation and whitespace clean-up (documents that end up empty are removed).

    Args:
        enabled: Run this step.
        form: Unicode normalisation form ("none" keeps the text's code points).
        whitespace: Unify line breaks, drop control/zero-width characters, strip line ends, squeeze blank-line
            runs to one blank line and strip the document.
    """

    enabled: bool = True
    form: Literal["NFKC", "NFC", "none"] = "NFKC"
    whitespace: bool = True


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    """The normalised text (see `NormalizeConfig`)."""
    if cfg.form != "none":
        text = unicodedata.normalize(cfg.form, text)
    if cfg.whitespace:
        text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        text = _BLANK_RUNS.sub("\n\n", text).strip()
    return text


def normalize_batch(batch: dict, cfg: NormalizeConfig) -> dict:
    return {"text": [normalize_text(t, cfg) for t in batch["text"]]}


# ---------------------------------------------------------------------------------------------------- quality
@dataclass
class QualityConfig:
    """Gopher-style heuristic quality filters; a document fails on the first rule it breaks.

    Args:
        enabled: Run this step.
        min_words: Fewer whitespace-separated words than this fail ("min_words").
        max_words: More words than this fail ("max_words"); None: no upper bound.
        max_junk_char_ratio: Largest share of non-space characters that are neither alphanumeric nor sentence
            punctuation (.,;:!?'"()-) ("junk_chars").
        max_dup_line_ratio: Largest share of non-empty lines that repeat an earlier line ("repeated_lines").
        max_top_ngram_ratio: n -> largest share of word characters covered by the most frequent word n-gram
            ("top_ngram"); Gopher uses {2: 0.20, 3: 0.18, 4: 0.16}.
        max_dup_ngram_ratio: n -> largest share of word characters inside word n-grams that occurred earlier in
            the document ("dup_ngram"); Gopher uses 0.15 for n=5 down to 0.10 for n=10.
    """

    enabled: bool = True
    min_words: int = 20
    max_words: int | None = 100_000
    max_junk_char_ratio: float = 0.1
    max_dup_line_ratio: float = 0.3
    max_top_ngram_ratio: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_dup_ngram_ratio: dict[int, float] = field(default_factory=lambda: {5: 0.15, 7: 0.13, 10: 0.1})


def junk_char_ratio(text: str) -> float:
    """Share of non-space characters that are neither alphanumeric nor sentence punctuation."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(1 for c in chars if not c.isalnum() and c not in ALLOWED_PUNCTUATION) / len(chars)


def dup_line_ratio(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line (after stripping)."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


def top_ngram_ratio(words: list[str], n: int) -> float:
    """Share of word characters covered by the most frequent word n-gram (0 unless it occurs twice or more)."""
    if len(words) < n:
        return 0.0
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return min(1.0, count * sum(map(len, gram)) / sum(map(len, words)))


def dup_ngram_ratio(words: list[str], n: int) -> float:
    """Share of word characters inside word n-grams that already occurred earlier (each word counted once)."""
    if len(words) < n:
        return 0.0
    covered = np.zeros(len(words), dtype=bool)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            covered[i : i + n] = True
        else:
            seen.add(gram)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    return float(lengths[covered].sum() / lengths.sum())


def quality_reason(text: str, cfg: QualityConfig) -> str:
    """Name of the first quality rule the text breaks, or "" when it passes."""
    words = text.lower().split()
    if len(words) < cfg.min_words:
        return "min_words"
    if cfg.max_words is not None and len(words) > cfg.max_words:
        return "max_words"
    if junk_char_ratio(text) > cfg.max_junk_char_ratio:
        return "junk_chars"
    if dup_line_ratio(text) > cfg.max_dup_line_ratio:
        return "repeated_lines"
    if any(top_ngram_ratio(words, n) > limit for n, limit in sorted(cfg.max_top_ngram_ratio.items())):
        return "top_ngram"
    if any(dup_ngram_ratio(words, n) > limit for n, limit in sorted(cfg.max_dup_ngram_ratio.items())):
        return "dup_ngram"
    return ""


def quality_batch(batch: dict, cfg: QualityConfig) -> dict:
    return {"reason": [quality_reason(t, cfg) for t in batch["text"]]}


# --------------------------------------------------------------------------------------------------- language
@dataclass
class LanguageConfig:
    """Language identification with langid.py (its model ships with the package; nothing is downloaded).

    Args:
        enabled: Run this step.
        languages: ISO 639-1 codes to keep (langid knows 97 languages).
        min_confidence: Smallest normalised probability of the detected language to keep a document.
        max_chars: Only the first this many characters are classified (langid's cost grows with length).
    """

    enabled: bool = False
    languages: list[str] = field(default_factory=lambda: ["en"])
    min_confidence: float = 0.5
    max_chars: int = 2000


@lru_cache(maxsize=1)
def language_identifier() -> langid.LanguageIdentifier:
    """langid's classifier, loaded once per process (unpacking the model takes seconds)."""
    return langid.LanguageIdentifier.from_modelstring(langid.model, norm_probs=True)


def detect_language(text: str, max_chars: int = 2000) -> tuple[str, float]:
    """(language code, probability) of a text.

    Same answer as `langid.classify` with normalised probabilities, but the naive-Bayes product runs over the
    non-zero features only: langid's dense uint32-by-float64 product is ~50x slower.
    """
    ident = language_identifier()
    fv = ident.instance2fv(text[:max_chars])
    nz = np.flatnonzero(fv)
    logp = fv[nz].astype(np.float64) @ ident.nb_ptc[nz] + ident.nb_pc  # (n_languages,)
    probs = np.exp(logp - logp.max())
    probs /= probs.sum()
    best = int(probs.argmax())
    return str(ident.nb_classes[best]), float(probs[best])


def language_batch(batch: dict, cfg: LanguageConfig) -> dict:
    found = [detect_language(t, cfg.max_chars) for t in batch["text"]]
    return {"lang": [lang for lang, _ in found], "lang_conf": [conf for _, conf in found]}


def language_ok(lang: str, confidence: float, cfg: LanguageConfig) -> bool:
    return lang in cfg.languages and confidence >= cfg.min_confidence


# -------------------------------------------------------------------------------------------------- block list
@dataclass
class BlocklistConfig:
    """Drop documents that contain blocked words, phrases or patterns.

    Args:
        path: A text file, one entry per line: a word or phrase (matched case-insensitively on word
            boundaries), or "re:<regex>" (a Python regex, case-insensitive); "#" starts a comment line.
            None disables the step.
        min_matches: Matches (all entries together) from which a document is dropped.
    """

    path: str | None = None
    min_matches: int = 1


def compile_blocklist(entries: Iterable[str]) -> re.Pattern | None:
    """One case-insensitive pattern for all block-list entries (None when there are none)."""
    parts = []
    for line in entries:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts.append(line[3:] if line.startswith("re:") else rf"\b{re.escape(line)}\b")
    return re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE) if parts else None


def read_blocklist(path: str | Path) -> re.Pattern | None:
    return compile_blocklist(Path(path).read_text(encoding="utf-8").splitlines())


def blocklist_batch(batch: dict, pattern: re.Pattern | None) -> dict:
    counts = [sum(1 for _ in pattern.finditer(t)) if pattern else 0 for t in batch["text"]]
    return {"block_hits": counts}


# ------------------------------------------------------------------------------------------------ the cleaning pass
STEPS = ("normalize", "quality", "language", "blocklist", "exact_dedup", "near_dedup")


@dataclass
class CleaningConfig:
    """Cleaning steps, run in this order (cheap per-document filters before the global dedup passes).

    Args:
        normalize: Unicode normalisation and whitespace clean-up.
        quality: Gopher-style heuristic filters.
        language: Language filter (langid).
        blocklist: Block list of words, phrases and patterns.
        exact_dedup: Exact deduplication.
        near_dedup: MinHash LSH near-deduplication.
    """

    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    blocklist: BlocklistConfig = field(default_factory=BlocklistConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)


@dataclass
class Cleaned:
    """Result of `clean_corpus`.

    Args:
        dataset: Columns "text" (normalised) and "source"; every document read, removed ones included.
        removed_by: (n_docs,) int8: index into `STEPS` of the step that removed the document, -1 if kept.
        raw_chars: (n_docs,) characters of each document before normalisation.
        chars: (n_docs,) characters of each document after normalisation.
        reasons: step -> reason -> count (quality rules; detected languages of documents the language step removed).
        seconds: step -> wall-clock seconds.
    """

    dataset: datasets.Dataset
    removed_by: np.ndarray
    raw_chars: np.ndarray
    chars: np.ndarray
    reasons: dict[str, dict[str, int]]
    seconds: dict[str, float]

    @property
    def kept(self) -> np.ndarray:
        """Indices of the documents that survived every step."""
        return np.flatnonzero(self.removed_by < 0)


def step_enabled(cfg: CleaningConfig, step: str) -> bool:
    if step == "blocklist":
        return cfg.blocklist.path is not None
    return getattr(cfg, step).enabled


def _normalize_some(batch: dict, cfg: NormalizeConfig, skipped: frozenset) -> dict:
    done = normalize_batch(batch, cfg)["text"]
    return {"text": [t if s in skipped else d for t, d, s in zip(batch["text"], done, batch["source"])]}


def _column(ds: datasets.Dataset, name: str) -> np.ndarray:
    """A column as a numpy array, straight from arrow (a list column of equal-length rows becomes 2-D)."""
    col = ds.data.column(name).combine_chunks()
    if hasattr(col, "flatten"):  # list<...>: every row has the same length here (MinHash signatures)
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
    return col.to_numpy(zero_copy_only=False)


def _step_verdict(step: str, sub: datasets.Dataset, cfg: CleaningConfig, num_proc: int | None,
                  progress: bool) -> tuple[np.ndarray, Counter]:
    """(remove mask over `sub`'s rows, reason counts) of one filter or dedup step."""
    kw = {"batched": True, "num_proc": num_proc, "remove_columns": sub.column_names, "desc": step}
    if step == "quality":
        reason = _column(sub.map(quality_batch, fn_kwargs={"cfg": cfg.quality}, **kw), "reason")
        drop = reason != ""
        return drop, Counter(reason[drop].tolist())
    if step == "language":
        language_identifier()  # load the model once here; forked workers inherit it
        out = sub.map(language_batch, fn_kwargs={"cfg": cfg.language}, **kw)
        lang, conf = _column(out, "lang"), _column(out, "lang_conf")
        drop = ~(np.isin(lang, cfg.language.languages) & (conf >= cfg.language.min_confidence))  # = language_ok
        return drop, Counter(lang[drop].tolist())
    if step == "blocklist":
        pattern = read_blocklist(cfg.blocklist.path)
        hits = _column(sub.map(blocklist_batch, fn_kwargs={"pattern": pattern}, **kw), "block_hits")
        return hits >= cfg.blocklist.min_matches, Counter()
    if step == "exact_dedup":
        return ~first_occurrences(_column(sub.map(exact_keys_batch, **kw), "key")), Counter()
    sigs = _column(sub.map(minhash_batch, fn_kwargs={"cfg": cfg.near_dedup}, **kw), "minhash")
    return near_duplicates(sigs, cfg.near_dedup, progress), Counter()


def clean_corpus(ds: datasets.Dataset, skips: list[list[str]], cfg: CleaningConfig, num_proc: int = 1,
                 progress: bool = True) -> Cleaned:
    """Run the enabled cleaning steps in `STEPS` order over the documents of several sources.

    Each step only sees the documents that survived the earlier ones (and belong to a source that does not skip
    it); a dedup step keeps the first occurrence in dataset order, so earlier sources win.

    Args:
        ds: Columns "text" and "source" (int index into `skips`).
        skips: Per source, the names of the steps not applied to it.
        cfg: Step settings.
        num_proc: Processes for `datasets.map` (1: this process).
        progress: Show progress bars.
    """
    procs = num_proc if num_proc > 1 else None
    source = np.asarray(ds["source"], dtype=np.int64)
    raw_chars = np.array([len(t) for t in ds["text"]], dtype=np.int64)
    removed = np.full(len(ds), -1, dtype=np.int8)
    reasons: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}
    for k, step in enumerate(STEPS):
        if not step_enabled(cfg, step):
            continue
        start = time.perf_counter()
        applies = np.array([step not in skip for skip in skips], dtype=bool)[source]
        if step == "normalize":
            skipped = frozenset(i for i, skip in enumerate(skips) if step in skip)
            ds = ds.map(_normalize_some, batched=True, num_proc=procs, desc=step,
                        fn_kwargs={"cfg": cfg.normalize, "skipped": skipped})
            empty = np.array([not t for t in ds["text"]], dtype=bool)  # nothing was left but white space
            removed[empty & applies] = k
        else:
            idx = np.flatnonzero((removed < 0) & applies)
            if len(idx):  # nothing left to judge (an empty `map` has no output columns to read)
                drop, why = _step_verdict(step, ds.select(idx), cfg, procs, progress)
                removed[idx[drop]] = k
                if why:
                    reasons[step] = dict(sorted(why.items()))
        seconds[step] = time.perf_counter() - start
    chars = np.array([len(t) for t in ds["text"]], dtype=np.int64) if step_enabled(cfg, "normalize") else raw_chars
    return Cleaned(ds, removed, raw_chars, chars, reasons, seconds)
