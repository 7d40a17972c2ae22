"""Deduplication steps of `lit-llm prepare`: exact (normalised text) and near (MinHash LSH over shingles).

Both need global state, so each is split in two: a per-document part that `datasets.Dataset.map` can run in
several processes (`exact_keys_batch`, `minhash_batch`) and a sequential pass in document order that keeps the
first occurrence (`first_occurrences`, `near_duplicates`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Literal

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from tqdm.auto import tqdm


# -------------------------------------------------------------------------------------------------- exact dedup
@dataclass
class ExactDedupConfig:
    """Exact deduplication on normalised text (case-folded, whitespace runs collapsed); the first copy is kept.

    Args:
        enabled: Run this step.
    """

    enabled: bool = True


def exact_key(text: str) -> str:
    """Hash of the case-folded text with all whitespace runs as one space."""
    return hashlib.blake2b(" ".join(text.casefold().split()).encode("utf-8"), digest_size=16).hexdigest()


def exact_keys_batch(batch: dict) -> dict:
    return {"key": [exact_key(t) for t in batch["text"]]}


def first_occurrences(keys: Iterable[str]) -> np.ndarray:
    """Boolean mask: True where a key has not been seen before."""
    seen: set[str] = set()
    keep = []
    for key in keys:
        keep.append(key not in seen)
        seen.add(key)
    return np.array(keep, dtype=bool)


# --------------------------------------------------------------------------------------------------- near dedup
@dataclass
class NearDedupConfig:
    """Near-duplicate removal with MinHash LSH (datasketch) over word or character shingles.

    Args:
        enabled: Run this step.
        threshold: Jaccard similarity of the shingle sets from which a later document counts as a near-duplicate
            of an earlier one (also the LSH threshold).
        shingle: "word" n-grams of lower-cased words, or "char" n-grams of the lower-cased text.
        ngram: Shingle size n.
        num_perm: MinHash permutations (more: a sharper similarity estimate, slower).
        seed: MinHash seed.
    """

    enabled: bool = True
    threshold: float = 0.7
    shingle: Literal["word", "char"] = "word"
    ngram: int = 5
    num_perm: int = 128
    seed: int = 1


def shingle_set(text: str, shingle: str = "word", n: int = 5) -> set[bytes]:
    """Word or character n-gram shingles of the lower-cased text (a text shorter than n is one shingle)."""
    text = text.lower()
    if shingle == "word":
        words = text.split()
        return {" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1))}
    return {text[i : i + n].encode() for i in range(max(1, len(text) - n + 1))}


@lru_cache(maxsize=4)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    """MinHash permutation parameters; drawing them costs more than hashing a short document, so reuse them."""
    return MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations


def minhash_signature(text: str, cfg: NearDedupConfig) -> np.ndarray:
    """The (num_perm,) uint32 MinHash signature of a text's shingle set (datasketch, SHA-1 shingle hashes)."""
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32",
                permutations=_permutations(cfg.num_perm, cfg.seed))
    m.update_batch(list(shingle_set(text, cfg.shingle, cfg.ngram)))
    return m.hashvalues


def minhash_batch(batch: dict, cfg: NearDedupConfig) -> dict:
    return {"minhash": [minhash_signature(t, cfg) for t in batch["text"]]}


def near_duplicates(signatures: Iterable[np.ndarray], cfg: NearDedupConfig, progress: bool = False) -> np.ndarray:
    """Boolean mask: True for documents that near-duplicate an earlier kept document.

    Args:
        signatures: MinHash signatures in document order (from `minhash_signature`).
        cfg: The near-dedup settings the signatures were made with.
        progress: Show a progress bar.
    """
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    kept: list[np.ndarray] = []
    dup = []
    for sig in tqdm(signatures, desc="near-dup LSH", disable=not progress):
        sig = np.asarray(sig, dtype=np.uint32)
        m = LeanMinHash(seed=cfg.seed, hashvalues=sig, scheme="affine32")
        # the share of equal signature slots estimates the Jaccard similarity; it confirms LSH candidates
        is_dup = any(np.mean(kept[j] == sig) >= cfg.threshold for j in lsh.query(m))
        dup.append(is_dup)
        if not is_dup:
            lsh.insert(len(kept), m)
            kept.append(sig)
    return np.array(dup, dtype=bool)
