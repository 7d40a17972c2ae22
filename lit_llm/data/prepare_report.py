"""The report of `lit-llm prepare`: stats.json, a console summary, and the run's MLflow record.

Stats layout (all counts are documents, characters or tokens; tokens are counted with the final tokenizer on
the normalised text, bos and eos included, for removed documents too):

    read:   {source: {documents, chars, skipped_empty}}   (skipped_empty: rows with empty or missing text)
    steps:  {step: {seconds, reasons?, sources: {source|"total": {documents_in, documents_out, removed,
             removed_rate, chars_in, chars_out, tokens_in, tokens_out}}}}
    kept:   {source: {documents, chars, tokens}}
    mix:    {"train"|"val": {source: {available_tokens, target_tokens, tokens, documents, epochs, share,
             target_share}}}
    tokenizer, output, timing, fingerprint, seed

The MLflow run (tag lit_llm.stage=prepare) gets the flattened config as params, every number of the stats as a
metric (dotted keys, e.g. `steps.exact_dedup.sources.total.removed_rate`), and stats.json + config.yaml as
artifacts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lit_llm.data.cleaning import STEPS, Cleaned
from lit_llm.tracking import flatten, log_batched, open_run, run_tags



def _counts(mask: np.ndarray, chars: np.ndarray, tokens: np.ndarray) -> tuple[int, int, int]:
    return int(mask.sum()), int(chars[mask].sum()), int(tokens[mask].sum())


def step_stats(cleaned: Cleaned, names: Sequence[str], tokens: np.ndarray, ran: Sequence[str]) -> dict:
    """Documents, characters and tokens of each source before and after each step that ran."""
    source, chars, removed = np.asarray(cleaned.dataset["source"], dtype=np.int64), cleaned.chars, cleaned.removed_by
    groups = {name: source == i for i, name in enumerate(names)} | {"total": np.ones(len(source), dtype=bool)}
    out = {}
    for k, step in enumerate(STEPS):
        if step not in ran:
            continue
        alive_in = (removed < 0) | (removed >= k)
        alive_out = alive_in & (removed != k)
        per_source = {}
        for name, mine in groups.items():
            d_in, c_in, t_in = _counts(alive_in & mine, cleaned.raw_chars if k == 0 else chars, tokens)
            d_out, c_out, t_out = _counts(alive_out & mine, chars, tokens)
            per_source[name] = {"documents_in": d_in, "documents_out": d_out, "removed": d_in - d_out,
                                "removed_rate": (d_in - d_out) / d_in if d_in else 0.0, "chars_in": c_in,
                                "chars_out": c_out, "tokens_in": t_in, "tokens_out": t_out}
        out[step] = {"seconds": cleaned.seconds.get(step, 0.0), "sources": per_source}
        if step in cleaned.reasons:
            out[step]["reasons"] = cleaned.reasons[step]
    return out


def read_and_kept(cleaned: Cleaned, names: Sequence[str], tokens: np.ndarray) -> tuple[dict, dict]:
    """Per source: what was read (documents, raw characters) and what survived cleaning."""
    source, chars = np.asarray(cleaned.dataset["source"], dtype=np.int64), cleaned.chars
    kept = cleaned.removed_by < 0
    read, survived = {}, {}
    for i, name in enumerate(names):
        mine = source == i
        read[name] = {"documents": int(mine.sum()), "chars": int(cleaned.raw_chars[mine].sum())}
        d, c, t = _counts(kept & mine, chars, tokens)
        survived[name] = {"documents": d, "chars": c, "tokens": t}
    return read, survived


def mix_stats(info: list[dict], names: Sequence[str]) -> dict:
    """Per source, the mixing plan and outcome in tokens."""
    return {name: {"available_tokens": int(p["available"]), "target_tokens": round(p["target"]),
                   "tokens": int(p["size"]), "documents": p["documents"], "epochs": p["epochs"],
                   "share": p["share"], "target_share": p["target_share"]} for name, p in zip(names, info)}


def summary(stats: dict) -> str:
    """A short human-readable table of what each step removed and the final shares."""
    names = list(stats["read"])
    lines = [f"{'step':<12}" + "".join(f"{n[:14]:>16}" for n in names + ["total"])]
    for step, s in stats["steps"].items():
        row = [f"-{s['sources'][n]['removed']} ({100 * s['sources'][n]['removed_rate']:.1f}%)"
               for n in names + ["total"]]
        lines.append(f"{step:<12}" + "".join(f"{r:>16}" for r in row))
    for split in ("train", "val"):
        shares = ", ".join(f"{n} {100 * m['share']:.1f}% (target {100 * m['target_share']:.1f}%, "
                           f"{m['epochs']:.2f} epochs)" for n, m in stats["mix"][split].items())
        lines.append(f"{split}: {stats['output'][f'{split}_tokens']:,} tokens in "
                     f"{stats['output'][f'{split}_documents']:,} documents; {shares}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ MLflow
@contextmanager
def tracked_run(enabled: bool, experiment_name: str, run_name: str | None, tracking_uri: str | None,
                seed: int, fingerprint: str) -> Iterator[tuple[Any, str] | None]:
    """An MLflow run around the prepare work (`tracking.open_run`, tag lit_llm.stage=prepare): yields
    (client, run_id), or None when tracking is off."""
    if not enabled:
        yield None
        return
    tags = run_tags("prepare", seed=seed, fingerprint=fingerprint)
    with open_run(experiment_name, tags, run_name, tracking_uri) as run:
        yield run


def log_prepare(client: Any, run_id: str, config: dict, stats: dict, files: Sequence[Path]) -> None:
    """Config as params, stats numbers as metrics, `files` (stats.json, config.yaml) as artifacts."""
    numbers = {k: float(v) for k, v in flatten(stats).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    log_batched(client, run_id, flatten(config), dict(sorted(numbers.items())))
    for path in files:
        client.log_artifact(run_id, str(path))
