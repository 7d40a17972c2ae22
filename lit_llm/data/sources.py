"""Reading text sources through `datasets`: local files and folders, or hub dataset names.

One function turns a source description into a `datasets.Dataset`, so every stage's data module (and
`lit-llm prepare`) reads files the same way and reports bad input the same way: the error names the file and,
for JSON lines, the line.
"""

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lit_llm.tokenizer import Tokenizer

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def local_files(source: str | Path) -> list[Path]:
    """The data files of a local source: the file itself, or the supported files under a folder (sorted)."""
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no {', '.join(BUILDERS)} files in this folder")
    suffixes = {p.suffix for p in files}
    if len({BUILDERS.get(s) for s in suffixes}) != 1 or None in {BUILDERS.get(s) for s in suffixes}:
        raise ValueError(f"{path}: expected files of one kind among {sorted(BUILDERS)}, found {sorted(suffixes)}")
    return files


def find_bad_json_line(path: Path) -> str | None:
    """Describe the first line of a JSON-lines file that does not parse as a JSON object, if any."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                return f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start})"
            except json.JSONDecodeError as err:
                return f"{path}:{number}: malformed JSON ({err.msg}, column {err.colno})"
            if not isinstance(record, dict):
                return f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
    return None


def load_local(source: str | Path) -> datasets.Dataset:
    """Load local files with the `datasets` builder for their type; .txt files are one row per file."""
    files = local_files(source)
    builder = BUILDERS[files[0].suffix]
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as err:
        for f in files:
            bad = find_bad_json_line(f) if f.suffix in (".jsonl", ".json") else None
            if bad:
                raise ValueError(bad) from err
        raise ValueError(f"cannot read {source}: {err}") from err


def load_source(source: str, split: str = "train", name: str | None = None) -> datasets.Dataset:
    """A local path, or else a hub dataset `source` (optionally its config `name`) at `split`."""
    if Path(source).exists():
        return load_local(source)
    if source.startswith((".", "/")) or Path(source).suffix in BUILDERS:
        raise FileNotFoundError(f"data source not found: {source}")
    return datasets.load_dataset(source, name, split=split)


def require_fields(ds: datasets.Dataset, fields: list[str], source: str) -> None:
    """Raise a clear error naming a missing field and the available ones."""
    for field in fields:
        if field not in ds.column_names:
            raise KeyError(f"{source}: no field {field!r}; available fields: {ds.column_names}")


def load_texts(source: str, text_field: str = "text", split: str = "train", name: str | None = None) -> list[str]:
    """The non-empty texts of one field of a source."""
    ds = load_source(source, split, name)
    require_fields(ds, [text_field], source)
    return [t for t in ds[text_field] if isinstance(t, str) and t.strip()]


def source_fingerprint(source: str, extra: dict) -> str:
    """A short hash of a source's content (local files) or identity (hub names) plus options that shape tokens."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    h.update(source.encode())
    if Path(source).exists():
        for f in local_files(source):
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def holdout_split(records: list, val_fraction: float, seed: int, source: str) -> tuple[list, list]:
    """A seeded (train, val) split of a source's records, `val_fraction` (at least one record) held out."""
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = max(1, math.ceil(len(records) * val_fraction))
    if n_val >= len(records):
        raise ValueError(f"{source}: {len(records)} records leave none for training at val_fraction={val_fraction}")
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


def model_tokenizer(datamodule: "pl.LightningDataModule") -> "Tokenizer":
    """The tokenizer of the model a data module feeds (`trainer.lightning_module.tokenizer`), or one set on the
    data module itself outside a Trainer. Stages after pretraining take the tokenizer from their checkpoint."""
    trainer = getattr(datamodule, "trainer", None)
    module = trainer.lightning_module if trainer is not None else None
    tokenizer = getattr(module, "tokenizer", None) or getattr(datamodule, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError(f"{type(datamodule).__name__} reads the tokenizer of the model "
                           "(trainer.lightning_module.tokenizer) in setup(); outside a Trainer set "
                           "`datamodule.tokenizer` first")
    return tokenizer
