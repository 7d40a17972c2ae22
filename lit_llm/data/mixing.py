"""Splitting and mixing: train/val per source, then sources mixed to configured shares by size.

`plan_totals` turns weights, available sizes and repetition limits into a target size per source;
`sample_documents` picks whole documents of one source to reach its target: full shuffled passes while the
target exceeds the source (repetition), then a seeded shuffle cut where the running size comes closest to what
is left; `mix_indices` does both for all sources and shuffles the result. Sizes are tokens for the final mix
and UTF-8 bytes for the tokenizer's training mix (before a tokenizer exists); the code is the same.

Deliberate simplification: documents are never split, so a source's share is exact only up to about one
document's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_totals(sizes: Sequence[float], weights: Sequence[float], max_epochs: Sequence[float],
                total: float | None = None, names: Sequence[str] | None = None, unit: str = "tokens") -> list[float]:
    """Target size per source so that sizes follow the weights.

    Args:
        sizes: Available size (tokens or bytes) of each source.
        weights: Mixing weights (any positive scale; normalised to shares).
        max_epochs: How many times each source may be used at most (1 = no repetition; 2.5 = twice and a half).
        total: Wanted size of the mix; None = the largest mix that no source's `max_epochs` limits further.
        names: Source names for error messages.
        unit: What the sizes count, for error messages.

    Raises:
        ValueError: when `total` would need more passes over a source than its `max_epochs` allow.
    """
    names = list(names or [str(i) for i in range(len(sizes))])
    if any(w <= 0 for w in weights):
        raise ValueError(f"mixing weights must be positive, got {list(weights)}")
    shares = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    capacity = np.asarray(sizes, dtype=np.float64) * np.asarray(max_epochs, dtype=np.float64)
    largest = float(np.min(capacity / shares))  # the biggest mix in which no source exceeds its max_epochs
    if total is None:
        total = largest
    elif total > largest * (1 + 1e-9):
        i = int(np.argmin(capacity / shares))
        raise ValueError(
            f"source {names[i]!r} has {sizes[i]:.0f} {unit} and may be used {max_epochs[i]}x, but its share "
            f"{shares[i]:.3f} of {total:.0f} {unit} needs {shares[i] * total:.0f}; raise its max_epochs or lower "
            f"the total (largest possible: {largest:.0f})")
    return [float(s * total) for s in shares]


def sample_documents(lengths: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of documents (with repeats when target > sum(lengths)) whose lengths sum close to `target`.

    Args:
        lengths: (n_docs,) size of each document.
        target: Wanted total size.
        rng: Source of the shuffles (each pass over the source is shuffled anew).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    total = float(lengths.sum())
    if total <= 0 or target <= 0:
        return np.zeros(0, dtype=np.int64)
    full, rest = divmod(target, total)
    if total - rest < 0.5 * lengths.min():  # float round-off: the rest is a whole pass
        full, rest = full + 1, 0.0
    parts = [rng.permutation(len(lengths)) for _ in range(int(full))]
    if rest > 0:
        order = rng.permutation(len(lengths))
        cum = np.cumsum(lengths[order])
        k = int(np.searchsorted(cum, rest))  # cum[k] is the first running size >= rest
        before = cum[k - 1] if k > 0 else 0.0
        if k < len(order) and cum[k] - rest < rest - before:
            k += 1  # including the document that crosses the target lands closer to it
        parts.append(order[:k])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def shares_of(sizes: Sequence[float]) -> list[float]:
    """Each size as a share of their sum."""
    total = float(np.sum(sizes))
    return [float(s) / total if total else 0.0 for s in sizes]


def split_train_val(kept: np.ndarray, source: np.ndarray, names: Sequence[str], val_fraction: float,
                    seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per source, sorted (train, val) document indices: a seeded shuffle of its kept documents, cut.

    Args:
        kept: Indices of the documents that survived cleaning.
        source: (n_docs,) source index of every document.
        names: Source names (their count is the number of sources).
        val_fraction: Share of each source's documents for validation (at least 1, leaving at least 1).
        seed: Seed of the shuffle.
    """
    out = []
    for i, name in enumerate(names):
        mine = kept[source[kept] == i]
        if len(mine) < 2:
            raise ValueError(f"source {name!r} has {len(mine)} document(s) left after cleaning; a train/val split "
                             "needs 2 or more (set split_docs, or relax the cleaning)")
        order = np.random.default_rng([seed, 1, i]).permutation(mine)
        n_val = min(len(mine) - 1, max(1, round(len(mine) * val_fraction)))
        out.append((np.sort(order[n_val:]), np.sort(order[:n_val])))
    return out


def mix_indices(lengths: np.ndarray, per_source: Sequence[np.ndarray], weights: Sequence[float],
                max_epochs: Sequence[float], total: float | None, seed: int, purpose: int,
                names: Sequence[str]) -> tuple[np.ndarray, list[dict]]:
    """Document indices of the mix (shuffled across sources) and, per source, what it contributed.

    Args:
        lengths: (n_docs,) size of every document (tokens or bytes).
        per_source: Candidate document indices of each source.
        weights: Mixing weights.
        max_epochs: Repetition limit of each source.
        total: Wanted total size (None: the largest feasible).
        seed: Seed of the sampling.
        purpose: Tells apart the random streams of different mixes (tokenizer, train, val).
        names: Source names for errors.
    """
    sizes = [float(lengths[idx].sum()) for idx in per_source]
    targets = plan_totals(sizes, weights, max_epochs, total, names)
    picked, info = [], []
    for i, (idx, target) in enumerate(zip(per_source, targets)):
        chosen = idx[sample_documents(lengths[idx], target, np.random.default_rng([seed, purpose, i]))]
        picked.append(chosen)
        got = float(lengths[chosen].sum())
        info.append({"available": sizes[i], "target": target, "size": got, "documents": len(chosen),
                     "epochs": got / sizes[i] if sizes[i] else 0.0})
    order = np.concatenate(picked)
    order = order[np.random.default_rng([seed, purpose, len(names)]).permutation(len(order))]
    for part, share, weight in zip(info, shares_of([p["size"] for p in info]), shares_of(weights)):
        part["share"], part["target_share"] = share, weight
    return order, info
