"""Reading text sources through `datasets`: local files and folders, or hub dataset names.

One function turns a source description into a `datasets.Dataset`, so every stage's data module (and
`lit-llm prepare`) reads files the same way and reports bad input the same way: a `ValueError` whose one-line
message names the file and, for text files, the line (`data/train.jsonl:3: malformed JSON ...`).

Bad input (the README's "Bad input" table lists what each module does with it):
    malformed JSON (a JSON-lines line or a .json document): the file and line.
    bytes that are not UTF-8 (.txt, .jsonl, .json): the file, line and byte offset; files are checked before
        loading, because pyarrow accepts invalid bytes inside JSON strings and would fail only later.
    an empty file: named as such. A missing column: `FieldError` naming it and the columns there are.
    a bad record: `RecordError` naming the file and line it came from (`Records`), or the 0-based record of
        a parquet/hub source. Records of JSON files are read by `json` itself (`load_records`), so a value is
        reported as written: `datasets` would turn a column of mixed strings and numbers into numbers.
"""

import difflib
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lit_llm.tokenizer import Tokenizer

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


def _is_json_document(path: Path) -> bool:
    """Whether a .json file is one JSON array (else JSON lines, one object per line)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return path.suffix == ".json" and head.startswith(b"[")


def find_bad_json_line(path: Path) -> str | None:
    """Describe the first line of a JSON-lines file (or the place in a .json array) that does not parse as a JSON
    object, if any."""
    if _is_json_document(path):
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
    return datasets.load_dataset(source, name, split=split)


def require_fields(columns: Sequence[str], fields: list[str], source: str) -> None:
    """Raise a clear error naming a missing field and the available ones."""
    for field in fields:
        if field not in columns:
            raise FieldError(f"{source}: no field {field!r}; available fields: {list(columns)}")


def check_field_names(fields: dict[str, str], canonical: Sequence[str]) -> None:
    """Refuse a `fields` key that is no canonical name (a misspelt one would be ignored), naming the nearest."""
    for name in fields:
        if name not in canonical:
            close = difflib.get_close_matches(name, canonical, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known names: {', '.join(sorted(canonical))}"
            raise ValueError(f"data.fields: unknown field name {name!r}; {hint}")


def load_texts(source: str, text_field: str = "text", split: str = "train",
               name: str | None = None) -> tuple[list[str], int]:
    """The non-empty texts of one field of a source, and how many rows were skipped as empty or missing."""
    ds = load_source(source, split, name)
    require_fields(ds.column_names, [text_field], source)
    texts = [t for t in ds[text_field] if isinstance(t, str) and t.strip()]
    return texts, len(ds) - len(texts)


@dataclass
class Records:
    """The records of one source, as their files hold them, with where each came from.

    Args:
        source: The source as configured.
        rows: The records (dicts), values exactly as written: a JSON file's "84" stays a string.
        places: Per record, its place for error messages: `file.jsonl:LINE` for JSON lines and JSON arrays,
            `source, record i` (0-based) for parquet files and hub datasets.
    """

    source: str
    rows: list[dict]
    places: list[str]

    @property
    def columns(self) -> list[str]:
        """Every field name some record has, in first-seen order."""
        return list(dict.fromkeys(key for row in self.rows for key in row))

    def where(self, index: int) -> str:
        return self.places[index]


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSON-lines file."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    yield number, json.loads(raw.decode("utf-8"))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: malformed JSON ({err.msg}, column {err.colno})") from None


def _json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number of its start, parsed value) of every element of a file holding one JSON array."""
    text, decoder = path.read_text(encoding="utf-8"), json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from None
        yield text.count("\n", 0, pos) + 1, value
        pos = end


def read_json_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(place, record) of a .jsonl/.json file, parsed by `json` itself: no type is inferred or coerced (a column
    of mixed types would be, by pyarrow and `datasets`)."""
    rows = _json_array(path) if _is_json_document(path) else _json_lines(path)
    for line, record in rows:
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}:{line}", record


def load_records(source: str, split: str = "train", name: str | None = None) -> Records:
    """The records of a local file or folder (JSON lines, JSON arrays, parquet) or of a hub dataset."""
    path = Path(source)
    if not path.exists():
        ds = load_source(source, split, name)  # a hub name (a missing local path raises there)
        return Records(source, ds.to_list(), [f"{source}, record {i}" for i in range(len(ds))])
    files = local_files(path)
    if files[0].suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"{source}: records come from .jsonl, .json or .parquet files, not {files[0].suffix}")
    if files[0].suffix == ".parquet":
        ds = load_local(path)
        return Records(source, ds.to_list(), [f"{source}, record {i}" for i in range(len(ds))])
    if not any(check_utf8(f) for f in files):
        raise ValueError(f"{source}: no records (the file is empty)" if len(files) == 1
                         else f"{source}: no records (every file is empty)")
    places, rows = [], []
    for f in files:
        for place, record in read_json_records(f):
            places.append(place)
            rows.append(record)
    return Records(source, rows, places)


def losses_warning(what: str, split: str, stats: Any, phrases: dict[str, str]) -> str | None:
    """One warning line for what a split lost, each count with its unit, or None when nothing was lost.

    Args:
        what: The data ("SFT", "preference", "PPO prompt").
        split: "train" or "val".
        stats: The split's stats: counts as attributes, `records` and `first_error` among them.
        phrases: Count name -> its phrase, "{n}" standing for the count ("{n} of 624 sequences cut to ...").
    """
    parts = [phrase.format(n=getattr(stats, key)) for key, phrase in phrases.items() if getattr(stats, key, 0)]
    if not parts:
        return None
    hint = f"; first skipped record: {stats.first_error}" if getattr(stats, "first_error", None) else ""
    return f"{what} {split} data ({stats.records} records): {'; '.join(parts)}{hint}"


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


def model_tokenizer(datamodule: "pl.LightningDataModule") -> "Tokenizer":
    """The tokenizer of the model a data module feeds (`trainer.lightning_module.tokenizer`), or one set on the
    data module itself outside a Trainer, with the chat template the data module renders with. Stages after
    pretraining take the tokenizer from their checkpoint.

    Every caller renders chats. The template is `datamodule.chat_template` (`Tokenizer.pick_chat_template`: by
    default the tokenizer's own, else the default one when it has its tokens, else the plain-text one, with a
    warning); it is set on the model's tokenizer, so the checkpoint, generation and the gold evaluation use the same
    one, and recorded in `datamodule.chat_template_note` (a run param)."""
    trainer = getattr(datamodule, "trainer", None)
    module = trainer.lightning_module if trainer is not None else None
    tokenizer = getattr(module, "tokenizer", None) or getattr(datamodule, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError(f"{type(datamodule).__name__} reads the tokenizer of the model "
                           "(trainer.lightning_module.tokenizer) in setup(); outside a Trainer set "
                           "`datamodule.tokenizer` first")
    try:
        template, note = tokenizer.pick_chat_template(getattr(datamodule, "chat_template", None))
    except ValueError as err:
        origin = f" (init_from {module.init_from})" if getattr(module, "init_from", None) else ""
        raise ValueError(f"{type(datamodule).__name__}: the model's tokenizer{origin}: {err}") from None
    if note.startswith("plain (fallback"):
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"{type(datamodule).__name__}: chat template {note}; choose another with "
                       f"--data.init_args.chat_template")
    tokenizer.chat_template = template
    datamodule.chat_template_note = note
    return tokenizer
