"""Reading text sources through `datasets` (local files and folders, or hub dataset names), and what every data
module shares about sources: fingerprints, the train/validation hold-out, and the messages for data that is lost.

One function turns a source description into a `datasets.Dataset`, so every stage's data module (and
`lit-llm prepare`) reads files the same way and reports bad input the same way: a `ValueError` whose one-line
message names the file and, for text files, the line (`data/train.jsonl:3: malformed JSON ...`).

Bad input (the README's "Bad input" table lists what each module does with it):
    malformed JSON (a JSON-lines line or a .json document): the file and line.
    bytes that are not UTF-8 (.txt, .jsonl, .json): the file, line and byte offset; files are checked before
        loading, because pyarrow accepts invalid bytes inside JSON strings and would fail only later.
    an empty file: named as such. A missing column: `FieldError` naming it and the columns there are.
    records (SFT, preference, prompts) are read by `lit_llm.data.records`, which names each bad one by its file
        and line, with its value as written.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where a source is read: a stage whose data needs no file (the task world) skips it
    import datasets

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


class RecordError(ValueError):
    """A record that cannot be used; the message names the file and line (or source and record) and the field."""


class FieldError(RecordError, KeyError):
    """A missing field. Also a KeyError, as a missing key is, but printed without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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


def check_utf8(path: Path) -> int:
    """Raise naming the line and byte offset of the first byte that is not UTF-8; returns the non-blank lines."""
    offset = non_blank = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                non_blank += bool(raw.decode("utf-8").strip())
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid UTF-8: byte {raw[err.start]:#04x} at file offset "
                                 f"{offset + err.start} ({err.reason}); save the file as UTF-8") from None
            offset += len(raw)
    return non_blank


def is_json_document(path: Path) -> bool:
    """Whether a .json file is one JSON array (else JSON lines, one object per line)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return path.suffix == ".json" and head.startswith(b"[")


def find_bad_json_line(path: Path) -> str | None:
    """Describe the first line of a JSON-lines file (or the place in a .json array) that does not parse as a JSON
    object, if any."""
    if is_json_document(path):
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            return f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})"
        kinds = {type(r).__name__ for r in records if not isinstance(r, dict)}
        return f"{path}: expected an array of JSON objects, found {sorted(kinds)}" if kinds else None
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


def _root_message(err: BaseException) -> str:
    """The innermost cause's first line (`datasets` wraps the useful pyarrow message in a generic one)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_local(source: str | Path) -> datasets.Dataset:
    """Load local files with the `datasets` builder for their type; .txt files are one row per file."""
    files = local_files(source)
    non_blank = [check_utf8(f) for f in files if f.suffix in TEXT_SUFFIXES]
    if non_blank and not any(non_blank):
        raise ValueError(f"{source}: no records (the file is empty)" if len(files) == 1
                         else f"{source}: no records (every file is empty)")
    builder = BUILDERS[files[0].suffix]
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as err:
        for f in files:
            bad = find_bad_json_line(f) if f.suffix in (".jsonl", ".json") else None
            if bad:
                raise ValueError(bad) from err
        raise ValueError(f"cannot read {source}: {_root_message(err)}") from err


def load_source(source: str, split: str = "train", name: str | None = None) -> datasets.Dataset:
    """A local path, or else a hub dataset `source` (optionally its config `name`) at `split`."""
    if Path(source).exists():
        return load_local(source)
    if source.startswith((".", "/")) or Path(source).suffix in BUILDERS:
        raise FileNotFoundError(f"data source not found: {source}")
    import datasets

    return datasets.load_dataset(source, name, split=split)


def require_fields(columns: list[str], fields: list[str], source: str) -> None:
    """Raise a clear error naming a missing field and the available ones."""
    for field in fields:
        if field not in columns:
            raise FieldError(f"{source}: no field {field!r}; available fields: {list(columns)}")


def load_texts(source: str, text_field: str = "text", split: str = "train",
               name: str | None = None) -> tuple[list[str], int]:
    """The non-empty texts of one field of a source, and how many rows were skipped as empty or missing."""
    ds = load_source(source, split, name)
    require_fields(ds.column_names, [text_field], source)
    texts = [t for t in ds[text_field] if isinstance(t, str) and t.strip()]
    return texts, len(ds) - len(texts)


def split_loss(source: str, split: str, what: str, records: int, losses: dict[str, int],
               hints: dict[str, str]) -> ValueError:
    """The error for a split that filtering left empty: the counts that emptied it, each with the option behind it.

    Args:
        source: Source name.
        split: "train" or "val".
        what: What was wanted ("example", "comparison", "prompt").
        records: Records the split had.
        losses: Count name -> count (zero ones are left out).
        hints: Count name -> what to change (or the first error).
    """
    if not records:
        return ValueError(f"{source}: the {split} split has no records")
    why = "; ".join(f"{k}={v}" + (f" ({hints[k]})" if k in hints else "") for k, v in losses.items() if v)
    return ValueError(f"{source}: no {split} {what} left of {records} records: {why}")


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
    """A seeded (train, val) split of a source's records (or (row, record) pairs), `val_fraction` (at least one
    record) held out."""
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = max(1, math.ceil(len(records) * val_fraction))
    if n_val >= len(records):
        raise ValueError(f"{source}: {len(records)} records leave none for training at val_fraction={val_fraction}")
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]
