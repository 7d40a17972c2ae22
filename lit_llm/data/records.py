"""Records: what the SFT, preference and prompt data modules read.

A record source is the built-in task world (`source: tasks`), a local .jsonl/.json/.parquet file or folder, or a hub
dataset. `load_records` gives its records exactly as written (JSON files are parsed by `json` itself: a table
library would turn a column of "84"-like strings with one number in it into numbers) with the place of each for
error messages (`file.jsonl:LINE`; `source, record i` for parquet and hub data). A `RecordReader` reads fields and
message lists out of a record under the `fields` mapping, raising a `RecordError` that names the place.

Formats. Each data module keeps a table `FORMATS = {name: to_chat}` (a function of the reader, the record and its
place, returning the module's chat form of it) and `COLUMNS = {name: the columns that identify it}`, tried in order
by `format: auto`: a new format is one function and one entry.

`record_module.RecordDataModule` is the data module the three share.
"""

import difflib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lit_llm.data.sources import (FieldError, RecordError, check_utf8, is_json_document, load_local, load_source,
                                  local_files)

MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class Records:
    """The records of one source, as their files hold them, with where each came from.

    Args:
        source: The source as configured.
        rows: The records (dicts), values exactly as written: a JSON file's "84" stays a string.
        places: Per record, its place for error messages: `file.jsonl:LINE` for JSON lines and JSON arrays,
            `source, record i` (0-based) for parquet files, hub datasets and the task world.
    """

    source: str
    rows: list[dict]
    places: list[str]

    @classmethod
    def generated(cls, source: str, rows: list[dict]) -> "Records":
        """Records made in memory (the task world's), named by their index."""
        return cls(source, rows, [f"{source}, record {i}" for i in range(len(rows))])

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
    """(place, record) of a .jsonl/.json file, parsed by `json` itself: no type is inferred or coerced."""
    rows = _json_array(path) if is_json_document(path) else _json_lines(path)
    for line, record in rows:
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}:{line}", record


def load_records(source: str, split: str = "train", name: str | None = None) -> Records:
    """The records of a local file or folder (JSON lines, JSON arrays, parquet) or of a hub dataset."""
    path = Path(source)
    if not path.exists():
        ds = load_source(source, split, name)  # a hub name (a missing local path raises there)
        return Records.generated(source, ds.to_list())
    files = local_files(path)
    if files[0].suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"{source}: records come from .jsonl, .json or .parquet files, not {files[0].suffix}")
    if files[0].suffix == ".parquet":
        return Records.generated(source, load_local(path).to_list())
    if not any(check_utf8(f) for f in files):
        raise ValueError(f"{source}: no records (the file is empty)" if len(files) == 1
                         else f"{source}: no records (every file is empty)")
    places, rows = [], []
    for f in files:
        for place, record in read_json_records(f):
            places.append(place)
            rows.append(record)
    return Records(source, rows, places)


def check_field_names(fields: dict[str, str], canonical: Sequence[str]) -> None:
    """Refuse a `fields` key that is no canonical name (a misspelt one would be ignored), naming the nearest."""
    for name in fields:
        if name not in canonical:
            close = difflib.get_close_matches(name, canonical, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known names: {', '.join(sorted(canonical))}"
            raise ValueError(f"data.fields: unknown field name {name!r}; {hint}")


def detect_format(columns: Sequence[str], identifying: dict[str, tuple[str, ...]], fields: dict[str, str],
                  source: str, what: str) -> str:
    """The first format whose identifying columns (after the `fields` mapping) the source has."""
    for fmt, needed in identifying.items():
        if all(fields.get(name, name) in columns for name in needed):
            return fmt
    raise FieldError(f"{source}: cannot tell the {what} format from the fields {list(columns)}; set data.format "
                     f"(one of {tuple(identifying)}) and map differing names with data.fields")


# ------------------------------------------------------------------------------------------------ fields
class RecordReader:
    """Reads the fields of one source's records under a `fields` mapping, naming the record in every error.

    Args:
        fmt: The source's format (a key of the data module's FORMATS).
        fields: Canonical name -> the data's name (only differing names need an entry).
        source: Name of the source, for error messages.
        system_prompt: System message for conversations that have none (and no `system` field).
        where: Names record i in error messages (`Records.where`); default "source, record i".
    """

    def __init__(self, fmt: str, fields: dict[str, str], source: str, system_prompt: str | None = None,
                 where: Callable[[int], str] | None = None) -> None:
        self.fmt, self.fields, self.source, self.system_prompt = fmt, fields, source, system_prompt
        self.where = where or (lambda i: f"{source}, record {i}")

    def name(self, canonical: str) -> str:
        return self.fields.get(canonical, canonical)

    def value(self, record: dict, canonical: str, where: str) -> Any:
        """A field's value; missing or None raises, listing the fields the record has."""
        value = record.get(self.name(canonical))
        if value is None:
            # a hub/parquet record has every column of its table (None where absent): list only the present ones
            present = sorted(k for k, v in record.items() if v is not None)
            raise FieldError(f"{where}: missing field {self.name(canonical)!r}; available fields: {present}")
        return value

    def text(self, record: dict, canonical: str, where: str, required: bool = True) -> str:
        """A string field; missing/None/empty raises when `required`, else gives ""."""
        value = record.get(self.name(canonical))
        if value is not None and not isinstance(value, str):
            raise RecordError(f"{where}: field {self.name(canonical)!r} must be a string, got "
                              f"{type(value).__name__} {value!r:.40}")
        if required and not (value or "").strip():
            self.value(record, canonical, where)  # missing: the fields the record has
            raise RecordError(f"{where}: field {self.name(canonical)!r} is empty")
        return value or ""

    def number(self, record: dict, canonical: str, where: str) -> float:
        value = self.value(record, canonical, where)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
            raise RecordError(f"{where}: field {self.name(canonical)!r} must be a finite number, got {value!r}")
        return float(value)

    def messages(self, value: Any, where: str, default_role: str | None = None,
                 roles: dict[str, str] = MESSAGE_ROLES, role_key: str = "role", content_key: str = "content",
                 allow_empty: bool = True) -> list[dict]:
        """An OpenAI-style message list ([{role, content}], keys and role names mapped), or a string as one
        message of `default_role` when one is given.

        Args:
            value: The field's value.
            where: The record's place (and field), for errors.
            default_role: Role of a plain string; None: a string is an error.
            roles: Accepted role names -> our roles (ShareGPT's human/gpt, say).
            role_key: Canonical key of a turn's role (mapped by `fields`).
            content_key: Canonical key of a turn's content (mapped by `fields`).
            allow_empty: Whether a turn's content may be "" (a response can be judged empty; an SFT target not).
        """
        if isinstance(value, str) and default_role is not None:
            return [{"role": default_role, "content": value}]
        if not isinstance(value, list) or not value:
            kind = "a string or a non-empty list of messages" if default_role else "a non-empty list of turns"
            raise RecordError(f"{where}: expected {kind}, got {value!r:.60}")
        out = []
        for j, turn in enumerate(value):
            if not isinstance(turn, dict):
                raise RecordError(f"{where}, turn {j}: expected an object, got {type(turn).__name__}")
            role = turn.get(self.name(role_key))
            if role not in roles:
                raise RecordError(f"{where}, turn {j}: field {self.name(role_key)!r} is {role!r}; expected one of "
                                  f"{sorted(roles)}")
            content = self.text(turn, content_key, f"{where}, turn {j}", required=not allow_empty)
            out.append({"role": roles[role], "content": content})
        return out

    def with_system(self, record: dict, messages: list[dict], where: str) -> list[dict]:
        """The conversation with the record's `system` field, else the data module's system prompt, in front
        (unless it starts with a system message)."""
        system = self.text(record, "system", where, required=False) or self.system_prompt
        if system and messages and messages[0]["role"] != "system":
            return [{"role": "system", "content": system}, *messages]
        return messages


class Items(Dataset):
    """A map-style dataset of already-built items (examples, comparisons, prompts)."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]
