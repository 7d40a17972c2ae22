"""`lit-llm prepare`: read sources → clean → split → train the tokenizer → mix by tokens → write token shards.

    lit-llm prepare --config configs/prepare/tiny.yaml

Output folder (read directly by `TextDataModule(source=<out_dir>)`):
    tokenizer.json (+ tokenizer_config.json)   the tokenizer (`Tokenizer.save`)
    train.bin, val.bin   flat token streams in `text.write_tokens`' format: per document bos + ids + eos,
                         dtype `text.token_dtype(vocab_size)`
    stats.json           documents/characters/tokens per source before and after each step, removal reasons,
                         dedup rates, mixing plan and final shares, timings
    config.yaml          the resolved config
    meta.json            written last (`PREPARED_MARKER`): dtype, tokens, documents, fingerprint, task_world
Everything is written into a temporary sibling folder that is renamed into place at the end, so a killed run
never leaves a folder that looks complete, and a failed run (bad input included) leaves an earlier output folder
as it was. A folder whose meta.json has the same fingerprint is reused.

Bad input: malformed JSON and bytes that are not UTF-8 stop the run naming the file and line (`sources`); a
missing text field names the fields there are; empty documents are skipped and counted (`read.<source>
.skipped_empty` in stats.json); a source that cleaning leaves with fewer than 2 documents stops the run, naming
the steps that removed them. `lit-llm prepare` prints these as one line; unknown config keys name the nearest.

Order of work (each cleaning step optional, per source skippable with `skip`): read → normalize → quality →
language → blocklist → exact_dedup → near_dedup (cheap per-document filters first, so the global dedup passes
see less) → split each source's survivors into train/val → tokenizer (trained on the train documents mixed to
the configured shares by UTF-8 bytes) → tokenize every document (removed ones too, so the stats can count
tokens before and after each step) → mix train (by tokens, repetition up to `max_epochs`) and val (same shares,
no repetition) → write. The run is logged to MLflow as its own run (`prepare_report.py`).

Deliberate simplifications: the corpus is held in `datasets` tables in memory (no streaming/sharded
processing); dedup is global across sources (the first source listed wins a tie) and happens before the
train/val split, so validation is decontaminated from training as far as dedup sees; hub sources are
fingerprinted by name/config/split, not content.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import yaml

from lit_llm.data.cleaning import STEPS, Cleaned, clean_corpus
from lit_llm.data.mixing import mix_indices, split_train_val
from lit_llm.data.prepare_config import (
    PrepareConfig, SourceConfig, TokenizerConfig, check_config, fingerprint_of, parse_config, source_name,
)
from lit_llm.data.prepare_report import (
    log_prepare, mix_stats, read_and_kept, step_stats, summary, tracked_run,
)
from lit_llm.data.sources import BUILDERS, load_source, require_fields
from lit_llm.data.text import PREPARED_MARKER, token_dtype, write_tokens
from lit_llm.tokenizer import Tokenizer
from lit_llm.world import TASKS_SOURCE, pretrain_corpus

TASK_DOCS_DEFAULT = 2000


# ----------------------------------------------------------------------------------------------------- reading
class Timer:
    """Wall-clock seconds per named step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _load(src: SourceConfig) -> datasets.Dataset:
    if src.path.startswith(("http://", "https://")):
        builder = BUILDERS.get(Path(src.path.split("?")[0]).suffix)
        if builder is None:
            raise ValueError(f"{src.path}: URL must end in one of {sorted(BUILDERS)}")
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        return datasets.load_dataset(builder, data_files=src.path, split="train", **kwargs)
    return load_source(src.path, src.split, src.hub_config)


def _split_texts(batch: dict, how: str) -> dict:
    pattern = r"\n\s*\n" if how == "paragraph" else r"\n"
    return {"text": [part for text in batch["text"] for part in re.split(pattern, text) if part.strip()]}


def read_source(src: SourceConfig, seed: int, num_proc: int = 1) -> tuple[datasets.Dataset, int]:
    """One source as a dataset with a single "text" column of non-empty documents, and how many rows were
    skipped as empty or missing."""
    if src.path == TASKS_SOURCE:
        n = src.max_docs or TASK_DOCS_DEFAULT
        return datasets.Dataset.from_dict({"text": pretrain_corpus(n, seed=seed, max_digits=src.max_digits).docs}), 0
    ds = _load(src)
    require_fields(ds.column_names, [src.text_field], src.path)
    ds = ds.select_columns([src.text_field])
    if src.text_field != "text":
        ds = ds.rename_column(src.text_field, "text")
    procs = _procs(num_proc) if len(ds) >= num_proc else None  # a one-file .txt source is a single row
    rows = len(ds)
    # keep_in_memory: no cache files beside the source's arrow cache, and no stale cache hits on later runs
    ds = ds.filter(lambda b: [isinstance(t, str) and bool(t.strip()) for t in b["text"]], batched=True,
                   num_proc=procs, keep_in_memory=True, desc=f"read {source_name(src)}")
    skipped = rows - len(ds)
    if src.split_docs != "none":
        ds = ds.map(_split_texts, batched=True, fn_kwargs={"how": src.split_docs}, num_proc=procs,
                    keep_in_memory=True, desc=f"split {source_name(src)}")
    if src.max_docs is not None and len(ds) > src.max_docs:
        ds = ds.select(range(src.max_docs))
    return ds, skipped


def read_sources(cfg: PrepareConfig) -> tuple[datasets.Dataset, list[int]]:
    """All sources in one dataset with columns "text" and "source" (index into cfg.sources), and per source the
    rows skipped as empty."""
    parts, skipped = [], []
    for i, src in enumerate(cfg.sources):
        ds, empty = read_source(src, cfg.seed, cfg.num_proc)
        if len(ds) == 0:
            raise ValueError(f"source {source_name(src)!r} ({src.path}) has no non-empty text in field "
                             f"{src.text_field!r} ({empty} rows, all empty or missing)")
        parts.append(ds.add_column("source", [i] * len(ds)))
        skipped.append(empty)
    # one in-memory table: every later `map` stays in memory too (see the module's simplifications)
    return datasets.concatenate_datasets(parts).flatten_indices(keep_in_memory=True), skipped


def check_survivors(cleaned: Cleaned, cfg: PrepareConfig, names: list[str]) -> None:
    """A clear error for a source that cleaning left with fewer than the 2 documents a train/val split needs,
    naming the steps that removed its documents."""
    source = np.asarray(cleaned.dataset["source"], dtype=np.int64)
    for i, (src, name) in enumerate(zip(cfg.sources, names)):
        removed_by = cleaned.removed_by[source == i]
        left = int((removed_by < 0).sum())
        if left < 2:
            steps = dict(Counter(STEPS[k] for k in removed_by[removed_by >= 0].tolist()))
            why = f" ({len(removed_by) - left} removed by {steps})" if steps else ""
            raise ValueError(f"source {name!r} ({src.path}) has {left} document(s) left after cleaning{why}; a "
                             "train/val split needs 2 or more: relax the cleaning steps, skip them for this source "
                             "(`skip`), set split_docs or add data")


def _procs(num_proc: int) -> int | None:
    return num_proc if num_proc > 1 else None


# --------------------------------------------------------------------------------------------------- tokenizer
def make_tokenizer(cfg: TokenizerConfig, texts: Iterable[str] | None) -> Tokenizer:
    """Train BPE on `texts`, or the byte tokenizer, or load one from a path."""
    if cfg.kind == "byte":
        return Tokenizer.byte_level()
    if cfg.kind == "bpe":
        return Tokenizer.train(texts or [], vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)
    path = Path(cfg.kind)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer.kind: no tokenizer at {path} (use 'bpe', 'byte' or a path)")
    return Tokenizer.from_file(path)


def _tokenize_batch(batch: dict, tokenizer: Tokenizer) -> dict:
    ids = tokenizer.encode_batch(batch["text"], bos=tokenizer.add_bos)
    return {"ids": [np.asarray(x, dtype=np.uint32) for x in ids]}


def tokenize_all(ds: datasets.Dataset, tokenizer: Tokenizer, num_proc: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets): document i's ids (bos included) are values[offsets[i]:offsets[i + 1]]."""
    out = ds.map(_tokenize_batch, batched=True, fn_kwargs={"tokenizer": tokenizer}, num_proc=_procs(num_proc),
                 remove_columns=ds.column_names, desc="tokenize")
    column = out.data.column("ids").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False), column.offsets.to_numpy()


# ---------------------------------------------------------------------------------------------------- pipeline
@dataclass
class Prepared:
    """What `prepare` produced.

    Args:
        out_dir: The output folder.
        meta: Contents of its meta.json.
        stats: Contents of its stats.json.
        run_id: The MLflow run (None when tracking is off or an up-to-date folder was reused).
        reused: Whether an existing folder with the same fingerprint was kept as it was.
    """

    out_dir: Path
    meta: dict
    stats: dict
    run_id: str | None = None
    reused: bool = False


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    was = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()


def _existing(out: Path, fingerprint: str, overwrite: bool) -> Prepared | None:
    """An up-to-date output folder to reuse; raises when out_dir holds something else and overwrite is off."""
    marker = out / PREPARED_MARKER
    meta = json.loads(marker.read_text()) if marker.is_file() else None
    if overwrite or not out.exists() or not any(out.iterdir()):
        return None
    if meta and meta.get("fingerprint") == fingerprint:
        stats_file = out / "stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        return Prepared(out, meta, stats, reused=True)
    what = f"another prepared corpus (fingerprint {meta.get('fingerprint')})" if meta else "other files"
    raise FileExistsError(f"{out} holds {what}; set overwrite: true or choose another out_dir")


def _tokenizer_texts(ds: datasets.Dataset, train: list[np.ndarray], cfg: PrepareConfig,
                     names: list[str]) -> Iterator[str] | None:
    """The BPE training texts: the training documents mixed to the configured shares by UTF-8 bytes."""
    if cfg.tokenizer.kind != "bpe":
        return None
    nbytes = np.zeros(len(ds), dtype=np.int64)
    pool = np.concatenate(train)
    nbytes[pool] = [len(t.encode("utf-8")) for t in ds.select(pool)["text"]]
    order, _ = mix_indices(nbytes, train, [s.weight for s in cfg.sources], [s.max_epochs for s in cfg.sources],
                           None, cfg.seed, 4, names)
    picked = ds.select(order[: cfg.tokenizer.max_train_docs])
    return (t for batch in picked.iter(batch_size=1000) for t in batch["text"])


def _write(folder: Path, tokenizer: Tokenizer, values: np.ndarray, offsets: np.ndarray,
           splits: dict[str, np.ndarray]) -> dict[str, int]:
    """tokenizer.json and one token stream per split (`write_tokens`' format); returns tokens per split."""
    folder.mkdir(parents=True)
    tokenizer.save(folder)
    dtype = token_dtype(tokenizer.vocab_size)
    return {split: write_tokens(folder / f"{split}.bin", (values[offsets[i] : offsets[i + 1]].tolist() for i in order),
                                tokenizer.eos_id, dtype)
            for split, order in splits.items()}


def build(cfg: PrepareConfig, names: list[str], fingerprint: str, folder: Path, config_text: str,
          run_id: str | None = None) -> tuple[dict, dict]:
    """Do the whole preparation into `folder` (meta.json last); returns (stats, meta)."""
    timer = Timer()
    with timer("read"):
        ds, skipped = read_sources(cfg)
    cleaned = clean_corpus(ds, [s.skip for s in cfg.sources], cfg.cleaning, cfg.num_proc, cfg.progress)
    timer.seconds.update(cleaned.seconds)
    check_survivors(cleaned, cfg, names)
    ds, source = cleaned.dataset, np.asarray(cleaned.dataset["source"], dtype=np.int64)
    split = split_train_val(cleaned.kept, source, names, cfg.mix.val_fraction, cfg.seed)
    train_pools, val_pools = [t for t, _ in split], [v for _, v in split]
    with timer("tokenizer"):
        tokenizer = make_tokenizer(cfg.tokenizer, _tokenizer_texts(ds, train_pools, cfg, names))
    with timer("tokenize"):
        values, offsets = tokenize_all(ds, tokenizer, cfg.num_proc)
    tokens = np.diff(offsets) + 1  # + the eos that write_tokens appends
    weights, epochs = [s.weight for s in cfg.sources], [s.max_epochs for s in cfg.sources]
    with timer("mix"):
        train, train_info = mix_indices(tokens, train_pools, weights, epochs, cfg.mix.total_tokens, cfg.seed, 2, names)
        val, val_info = mix_indices(tokens, val_pools, weights, [1.0] * len(names), None, cfg.seed, 3, names)
    with timer("write"):
        counts = _write(folder, tokenizer, values, offsets, {"train": train, "val": val})
    read, kept = read_and_kept(cleaned, names, tokens)
    for name, empty in zip(names, skipped):
        read[name]["skipped_empty"] = empty
    steps = step_stats(cleaned, names, tokens, [s for s in STEPS if s in cleaned.seconds])
    dtype = token_dtype(tokenizer.vocab_size).name
    stats = {"fingerprint": fingerprint, "seed": cfg.seed, "read": read, "steps": steps, "kept": kept,
             "mix": {"train": mix_stats(train_info, names), "val": mix_stats(val_info, names)},
             "tokenizer": {"kind": cfg.tokenizer.kind, "vocab_size": tokenizer.vocab_size},
             "output": {"train_tokens": counts["train"], "val_tokens": counts["val"], "dtype": dtype,
                        "train_documents": len(train), "val_documents": len(val)},
             "timing": {**timer.seconds, "total": sum(timer.seconds.values())}}
    meta = {"dtype": dtype, "tokens": counts, "documents": {"train": len(train), "val": len(val)},
            "fingerprint": fingerprint, "task_world": any(s.path == TASKS_SOURCE for s in cfg.sources),
            "mlflow_run_id": run_id}
    (folder / "stats.json").write_text(json.dumps(stats, indent=2))
    (folder / "config.yaml").write_text(config_text)
    (folder / PREPARED_MARKER).write_text(json.dumps(meta, indent=2))  # last: the completeness marker
    return stats, meta


def prepare(cfg: PrepareConfig, config_text: str | None = None) -> Prepared:
    """Run `lit-llm prepare` for a config; reuses an out_dir whose meta.json has the same fingerprint.

    Args:
        cfg: The config.
        config_text: The config as YAML, saved as config.yaml (default: dumped from `cfg`).
    """
    names = check_config(cfg)
    fingerprint = fingerprint_of(cfg)
    out = Path(cfg.out_dir)
    if (reused := _existing(out, fingerprint, cfg.overwrite)) is not None:
        print(f"{out} is up to date (fingerprint {fingerprint}); nothing to do")
        return reused
    config_text = config_text or yaml.safe_dump(asdict(cfg), sort_keys=False)
    t = cfg.tracking
    with tracked_run(t.enabled, t.experiment_name, t.run_name, t.tracking_uri, cfg.seed, fingerprint) as run:
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"  # renamed into place once complete
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _progress_bars(cfg.progress):
                stats, meta = build(cfg, names, fingerprint, tmp, config_text, run[1] if run else None)
            old = out.parent / f".{out.name}.old-{os.getpid()}"  # the earlier output stays whole until replaced
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if run:
            log_prepare(*run, asdict(cfg), stats, [out / "stats.json", out / "config.yaml"])
    print(summary(stats))
    print(f"wrote {out} (fingerprint {fingerprint})")
    return Prepared(out, meta, stats, run[1] if run else None)


def outputs(folder: str | Path) -> list[Path]:
    """The files a finished `lit-llm prepare` leaves in its out_dir (meta.json, the completeness marker, first)."""
    return [Path(folder) / name for name in (PREPARED_MARKER, "train.bin", "val.bin", "tokenizer.json")]


def run_id(folder: str | Path) -> str | None:
    """The MLflow run of a finished prepare, from its meta.json."""
    return json.loads((Path(folder) / PREPARED_MARKER).read_text()).get("mlflow_run_id")



def prepare_command(argv: list[str]) -> None:
    """`lit-llm prepare --config <yaml> [--key value ...]`: clean, dedup, filter, mix, tokenize."""
    cfg, text = parse_config(argv)
    try:
        prepare(cfg, text)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as err:
        # str() of a KeyError quotes its message; other errors' str() is the whole message (args[0] of a
        # UnicodeDecodeError is only "utf-8")
        message = err.args[0] if type(err) is KeyError and err.args else str(err)
        sys.exit(f"lit-llm prepare: {message}")
