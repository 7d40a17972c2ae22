"""SFT data: instruction and chat records → chat template → (input_ids, labels) examples → packed or padded rows.

Formats (`format`; "auto" picks one from the columns):
    alpaca: `instruction`, `input` (optional), `output`. The user message is `alpaca_prompt(instruction, input)`,
        the same string the gold evaluation and PPO prompts use, so SFT teaches exactly the prompts we score.
    messages: OpenAI-style `messages` = [{role, content}], roles system/user/assistant, any number of turns.
    sharegpt: `conversations` = [{from, value}], `from` in human/gpt/system (user/assistant/chatgpt accepted).
    prompt_completion: `prompt`, `completion`.
`fields` maps these canonical names (and the per-turn keys role, content, from, value, and `system`) to the
names the data uses, e.g. `{output: text}` for the Dolly file. A non-empty `system` column, else the
`system_prompt` option, becomes the system message of a conversation that has none.

Labels. Each conversation is rendered once by `Tokenizer.render_chat`, which marks assistant tokens (content and
closing end-of-turn). For rendered ids x[0..L) the example's inputs are x[0..L-1) and labels[t] = x[t+1] when x[t+1]
is a target, else `IGNORE_INDEX`; so every assistant turn of a multi-turn conversation is a target and the model
learns to end its turn. `train_on_prompt` makes every token after the first a target.

Length policy (`max_length` = positions per row = rendered tokens - 1 per example). "truncate" keeps the first
`max_length` positions (the end of the conversation is cut); "drop" drops the example. Either way nothing is lost
silently: `stats` counts truncated and dropped examples (the SFT stage logs them as run params), and an example
left without any target token (cut before the first answer, or a conversation with no assistant turn) is dropped
and counted.

Bad records (missing or empty required fields, unknown roles, non-string values): by default a `RecordError`
(a `ValueError`) naming the file and line of the record (`file.jsonl:3`; the 0-based record for parquet and hub
data), the field and, when it is missing, the fields the record has; with `skip_invalid` the record is skipped
and counted in `stats[split]["skipped_invalid"]`. A missing column raises at once, naming the available fields;
so does a `fields` key that is no canonical name (naming the nearest). A split that ends up with no example
raises, naming the counts that emptied it and the option behind each.

Packing. With `packing`, examples are packed into rows of `max_length` positions by best-fit decreasing (fewer
pad tokens than greedy filling); `doc_ids` keep attention inside each example and positions restart per example
(the model derives them from `doc_ids`), so a packed row computes the same per-token losses as the examples
alone. Without packing each example is one row, right-padded per batch with an `attention_mask`.

Deliberate simplifications: truncation cuts from the right only; rows are packed once in `setup` (each epoch
shuffles the rows, not the assignment of examples to rows); the whole dataset is tokenized in memory.
"""

import bisect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_llm.data.sampling import TrainOrderState, train_loader
from lit_llm.data.sources import (
    FieldError,
    RecordError,
    Records,
    check_field_names,
    holdout_split,
    load_records,
    losses_warning,
    model_tokenizer,
    require_fields,
    source_fingerprint,
    split_loss,
)
from lit_llm.data.tasks import alpaca_prompt, sft_records
from lit_llm.losses import IGNORE_INDEX
from lit_llm.tokenizer import Tokenizer

TASKS_SOURCE = "tasks"
FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion")
REQUIRED_COLUMNS = {"alpaca": ("instruction", "output"), "messages": ("messages",),
                    "sharegpt": ("conversations",), "prompt_completion": ("prompt", "completion")}
MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant"}
FIELD_NAMES = ("instruction", "input", "output", "messages", "conversations", "prompt", "completion", "role",
               "content", "from", "value", "system")  # what `fields` may rename

# --------------------------------------------------------------------------------------------- records → chat
def detect_format(columns: Sequence[str], fields: dict[str, str], source: str) -> str:
    """The SFT format a source's columns (after the `fields` mapping) stand for."""
    for fmt in ("messages", "sharegpt", "alpaca", "prompt_completion"):
        if all(fields.get(name, name) in columns for name in REQUIRED_COLUMNS[fmt]):
            return fmt
    raise FieldError(f"{source}: cannot tell the SFT format from the fields {list(columns)}; set data.format "
                     f"(one of {FORMATS}) and map differing names with data.fields")


class RecordReader:
    """Turns raw records of one source into chat messages.

    Args:
        fmt: One of `FORMATS`.
        fields: Canonical name -> the data's name (only differing names need an entry).
        source: Name of the source, for error messages.
        system_prompt: System message for conversations that have none (and no `system` column value).
        names: Names record i in error messages (`Records.where`: its file and line); default "source, record i".
    """

    def __init__(self, fmt: str, fields: dict[str, str], source: str, system_prompt: str | None = None,
                 names: Callable[[int], str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {fmt!r}")
        self.fmt, self.fields, self.source, self.system_prompt = fmt, fields, source, system_prompt
        self.where = names or (lambda i: f"{source}, record {i}")

    def name(self, canonical: str) -> str:
        return self.fields.get(canonical, canonical)

    def text(self, record: dict, canonical: str, where: str, required: bool = True) -> str:
        """A string field; missing/None/empty raises when `required`, else gives ""."""
        value = record.get(self.name(canonical))
        if value is not None and not isinstance(value, str):
            raise RecordError(f"{where}: field {self.name(canonical)!r} must be a string, got "
                              f"{type(value).__name__} {value!r:.40}")
        if required and value is None:
            # `datasets` gives every row every column of the file (None where absent): list only the present ones
            present = sorted(k for k, v in record.items() if v is not None)
            raise FieldError(f"{where}: missing field {self.name(canonical)!r}; available fields: {present}")
        if required and not value.strip():
            raise RecordError(f"{where}: field {self.name(canonical)!r} is empty")
        return value or ""

    def turns(self, record: dict, where: str, list_key: str, role_key: str, content_key: str,
              roles: dict[str, str]) -> list[dict]:
        """Messages out of a list of turns (OpenAI `messages` or ShareGPT `conversations`)."""
        turns = record.get(self.name(list_key))
        if not isinstance(turns, list) or not turns:
            raise RecordError(f"{where}: field {self.name(list_key)!r} must be a non-empty list of turns")
        messages = []
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise RecordError(f"{where}, turn {j}: expected an object, got {type(turn).__name__}")
            role = turn.get(self.name(role_key))
            if role not in roles:
                raise RecordError(f"{where}, turn {j}: field {self.name(role_key)!r} is {role!r}; "
                                  f"expected one of {sorted(roles)}")
            messages.append({"role": roles[role], "content": self.text(turn, content_key, f"{where}, turn {j}")})
        return messages

    def messages(self, record: dict, index: int) -> list[dict]:
        """The conversation of record `index` (the source's 0-based row, for error messages)."""
        where = self.where(index)
        if self.fmt == "alpaca":
            user = alpaca_prompt(self.text(record, "instruction", where), self.text(record, "input", where, False))
            messages = [{"role": "user", "content": user},
                        {"role": "assistant", "content": self.text(record, "output", where)}]
        elif self.fmt == "prompt_completion":
            messages = [{"role": "user", "content": self.text(record, "prompt", where)},
                        {"role": "assistant", "content": self.text(record, "completion", where)}]
        elif self.fmt == "messages":
            messages = self.turns(record, where, "messages", "role", "content", MESSAGE_ROLES)
        else:
            messages = self.turns(record, where, "conversations", "from", "value", SHAREGPT_ROLES)
        if not any(m["role"] == "assistant" for m in messages):
            raise RecordError(f"{where}: the conversation has no assistant turn (nothing to learn)")
        system = self.text(record, "system", where, required=False) or self.system_prompt
        if system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return messages


# ------------------------------------------------------------------------------------------- chat → examples
@dataclass
class SFTExample:
    """One tokenized conversation, already shifted: `labels[t]` is the token after `input_ids[t]` or ignored."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_example(tokenizer: Tokenizer, messages: list[dict], train_on_prompt: bool = False) -> SFTExample:
    """Render a conversation with the chat template and build shifted labels (targets: assistant tokens).

    Args:
        tokenizer: Tokenizer whose `render_chat` defines the template.
        messages: [{"role", "content"}, ...].
        train_on_prompt: Every token after the first is a target (not only the assistant's).
    """
    ids, assistant = tokenizer.render_chat(messages)
    target = [True] * len(ids) if train_on_prompt else assistant
    labels = [ids[t + 1] if target[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return SFTExample(ids[:-1], labels)


@dataclass
class SFTStats:
    """What happened to the records of one split (all counts; logged as run params by the SFT stage)."""

    records: int = 0
    skipped_invalid: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    examples: int = 0
    target_tokens: int = 0
    tokens: int = 0
    rows: int = 0
    first_error: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "first_error"}


def apply_length_policy(example: SFTExample, max_length: int, policy: str, stats: SFTStats) -> SFTExample | None:
    """The example cut or dropped to fit `max_length` positions, counted in `stats`; None when dropped."""
    if len(example) > max_length:
        if policy == "drop":
            stats.dropped_too_long += 1
            return None
        example = SFTExample(example.input_ids[:max_length], example.labels[:max_length])
        stats.truncated += 1
    if example.num_targets == 0:  # cut before the first answer token, or no assistant turn at all
        stats.dropped_no_target += 1
        return None
    return example


def pack_examples(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing packing: example indices per row, each row's lengths summing to <= `capacity`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free positions, row index) of rows that still have room
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))  # the row with the least room that still fits
        if k == len(free):
            row, space = len(rows), capacity
            rows.append([])
        else:
            space, row = free.pop(k)
        rows[row].append(i)
        if space - lengths[i] > 0:
            bisect.insort(free, (space - lengths[i], row))
    return rows


# ---------------------------------------------------------------------------------------- datasets, collator
class SFTRows(Dataset):
    """Rows of examples: one example per row, or several packed ones with per-example `doc_ids`.

    Args:
        examples: The tokenized examples.
        rows: Example indices per row (`pack_examples`); None for one example per row.
    """

    def __init__(self, examples: list[SFTExample], rows: list[list[int]] | None = None) -> None:
        self.examples, self.rows = examples, rows

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.rows is None:
            ex = self.examples[i]
            return {"input_ids": torch.tensor(ex.input_ids), "labels": torch.tensor(ex.labels)}
        parts = [self.examples[j] for j in self.rows[i]]
        return {
            "input_ids": torch.tensor([t for ex in parts for t in ex.input_ids]),
            "labels": torch.tensor([t for ex in parts for t in ex.labels]),
            "doc_ids": torch.tensor([d for d, ex in enumerate(parts) for _ in range(len(ex))]),
        }


def right_pad(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad 1-D rows to the longest: pad id in `input_ids`, `IGNORE_INDEX` in `labels`, -1 in `doc_ids`
    (a document of its own), plus an `attention_mask`. Outputs are (B, T) long tensors. Shared with the
    preference data module."""
    width = max(len(r["input_ids"]) for r in rows)
    pad_values = {"input_ids": pad_id, "labels": IGNORE_INDEX, "doc_ids": -1}
    batch = {key: torch.full((len(rows), width), value, dtype=torch.long)
             for key, value in pad_values.items() if key in rows[0]}
    batch["attention_mask"] = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        for key in pad_values.keys() & row.keys():
            batch[key][b, :n] = torch.as_tensor(row[key])
        batch["attention_mask"][b, :n] = 1
    return batch


class SFTCollator:
    """Right-pads a batch of rows (see `right_pad`).

    Args:
        pad_id: Token id used for padding inputs.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return right_pad(rows, self.pad_id)


# ------------------------------------------------------------------------------------------------ data module
class SFTDataModule(TrainOrderState, pl.LightningDataModule):
    """Instruction / chat data for SFT, tokenized with the model's tokenizer in `setup`.

    The tokenizer comes from the model being trained (`trainer.lightning_module.tokenizer`), which the SFT stage
    loads with its `init_from` weights; outside a Trainer, set `datamodule.tokenizer` before `setup()`.

    Args:
        source: "tasks" (the built-in task world's SFT records, no download), a local file or folder (jsonl,
            json, parquet) or a hub dataset name.
        format: "auto" (from the columns) or one of "alpaca", "messages", "sharegpt", "prompt_completion"
            (files and hub data; the task world's records are Alpaca records).
        fields: Canonical field name -> the data's field name, e.g. {"output": "text"} (files and hub data).
        val_source: Separate validation file/name; otherwise `val_fraction` of `source` is held out.
        val_fraction: Share of records held out for validation when there is no `val_source`.
        hub_name: Config name of a hub dataset.
        hub_split: Split of a hub dataset to read (the validation source reads the same split).
        system_prompt: System message added to conversations that have none (also used by the gold eval).
        chat_template: How conversations are rendered: "auto" (default: the tokenizer's own template, else the
            default one when it has its <|user|> ... <|end|> tokens, else a plain-text one, "### Instruction:" /
            "### Response:" + its eos), "own", "default", "plain", a Jinja template or a file holding one. The model
            keeps it (checkpoints, generation and the gold evaluation render the same way).
        num_records: Training records generated when `source` is "tasks" (train split of the task world).
        num_val_records: Validation records generated when `source` is "tasks" (val split).
        max_digits: Difficulty of the task world's arithmetic.
        max_length: Positions per row (an example of L rendered tokens takes L - 1).
        truncation: "truncate" (cut over-long examples to `max_length`) or "drop" them; both counted.
        packing: Pack several examples per row (attention isolated by `doc_ids`); else one example per row.
        train_on_prompt: Also train on prompt tokens (system, user, role headers), not only the assistant's.
        skip_invalid: Skip (and count) records with missing/empty fields instead of raising.
        batch_size: Rows per batch on each device.
        seed: Seed for the task world and the train/val split of a file.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        source: str = TASKS_SOURCE,
        format: Literal["auto", "alpaca", "messages", "sharegpt", "prompt_completion"] = "auto",
        fields: dict[str, str] | None = None,
        val_source: str | None = None,
        val_fraction: float = 0.05,
        hub_name: str | None = None,
        hub_split: str = "train",
        system_prompt: str | None = None,
        chat_template: str | None = None,
        num_records: int = 4000,
        num_val_records: int = 200,
        max_digits: int = 2,
        max_length: int = 256,
        truncation: Literal["truncate", "drop"] = "truncate",
        packing: bool = True,
        train_on_prompt: bool = False,
        skip_invalid: bool = False,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if truncation not in ("truncate", "drop"):
            raise ValueError(f"truncation must be 'truncate' or 'drop', got {truncation!r}")
        check_field_names(fields or {}, FIELD_NAMES)
        self.source, self.format, self.fields = source, format, dict(fields or {})
        self.val_source, self.val_fraction = val_source, val_fraction
        self.hub_name, self.hub_split = hub_name, hub_split
        self.system_prompt, self.num_records, self.num_val_records = system_prompt, num_records, num_val_records
        self.chat_template, self.chat_template_note = chat_template, None
        self.max_digits, self.max_length, self.truncation = max_digits, max_length, truncation
        self.packing, self.train_on_prompt, self.skip_invalid = packing, train_on_prompt, skip_invalid
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.tokenizer: Tokenizer | None = None
        self.fingerprint: str | None = None
        self.stats: dict[str, SFTStats] = {}
        self.datasets: dict[str, SFTRows] = {}

    @property
    def is_task_world(self) -> bool:
        return self.source == TASKS_SOURCE

    def _options(self) -> dict[str, Any]:
        """Everything besides the source's bytes that shapes the examples (for the fingerprint)."""
        keys = ("format", "fields", "val_source", "val_fraction", "hub_name", "hub_split", "system_prompt",
                "num_records", "num_val_records", "max_digits", "max_length", "truncation", "train_on_prompt",
                "skip_invalid", "seed")
        options = {k: getattr(self, k) for k in keys}
        if self.chat_template is not None:  # unset: the fingerprints of earlier runs stay valid
            options["chat_template"] = self.chat_template
        return options

    def _model_tokenizer(self) -> Tokenizer:
        """The model's tokenizer, after checking that `max_length` fits the model's context."""
        tokenizer = model_tokenizer(self)
        module = self.trainer.lightning_module if self.trainer is not None else None
        max_seq_len = getattr(getattr(getattr(module, "model", None), "config", None), "max_seq_len", None)
        if max_seq_len is not None and self.max_length > max_seq_len:
            raise ValueError(f"data.max_length={self.max_length} exceeds the model's max_seq_len={max_seq_len}")
        return tokenizer

    def _raw_records(self) -> tuple[dict[str, list[tuple[int, dict]]], RecordReader, RecordReader]:
        """Train and validation records, each with its row in the source (for error messages), and a reader for
        each split."""
        if self.is_task_world:
            train = sft_records(self.num_records, "train", self.seed, max_digits=self.max_digits)
            val = sft_records(self.num_val_records, "val", self.seed, max_digits=self.max_digits)
            return ({"train": list(enumerate(train)), "val": list(enumerate(val))},
                    RecordReader("alpaca", {}, "tasks/train", self.system_prompt),
                    RecordReader("alpaca", {}, "tasks/val", self.system_prompt))
        records = load_records(self.source, self.hub_split, self.hub_name)
        reader, rows = self._reader(records), list(enumerate(records.rows))
        if self.val_source is not None:
            val = load_records(self.val_source, self.hub_split, self.hub_name)
            return {"train": rows, "val": list(enumerate(val.rows))}, reader, self._reader(val)
        train, val = holdout_split(rows, self.val_fraction, self.seed, self.source)
        return {"train": train, "val": val}, reader, reader

    def _reader(self, records: Records) -> RecordReader:
        """A reader for a loaded source, after checking that its format's required columns exist."""
        columns, source = records.columns, records.source
        fmt = detect_format(columns, self.fields, source) if self.format == "auto" else self.format
        reader = RecordReader(fmt, self.fields, source, self.system_prompt, records.where)
        require_fields(columns, [reader.name(name) for name in REQUIRED_COLUMNS[fmt]], source)
        return reader

    def build_examples(self, records: list[tuple[int, dict]], reader: RecordReader, tokenizer: Tokenizer,
                       stats: SFTStats) -> list[SFTExample]:
        """(row, record) pairs → conversations → examples under the length policy; `stats` counts what
        happened."""
        examples = []
        for row, record in records:
            stats.records += 1
            try:
                messages = reader.messages(record, row)
            except RecordError as err:
                if not self.skip_invalid:
                    raise
                stats.skipped_invalid += 1
                stats.first_error = stats.first_error or str(err)
                continue
            example = encode_example(tokenizer, messages, self.train_on_prompt)
            example = apply_length_policy(example, self.max_length, self.truncation, stats)
            if example is not None:
                examples.append(example)
                stats.examples += 1
                stats.target_tokens += example.num_targets
                stats.tokens += len(example)
        return examples

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # setup runs once per Trainer call; the tokenized data does not change
            return
        tokenizer = self.tokenizer = self._model_tokenizer()
        source = TASKS_SOURCE if self.is_task_world else self.source
        self.fingerprint = source_fingerprint(source, self._options())
        records, train_reader, val_reader = self._raw_records()
        for split, reader in (("train", train_reader), ("val", val_reader)):
            stats = self.stats[split] = SFTStats()
            examples = self.build_examples(records[split], reader, tokenizer, stats)
            if not examples:
                raise self._nothing_left(reader.source, split, stats)
            rows = pack_examples([len(ex) for ex in examples], self.max_length) if self.packing else None
            self.datasets[split] = SFTRows(examples, rows)
            stats.rows = len(self.datasets[split])
            self._warn_losses(split, stats)

    def _nothing_left(self, source: str, split: str, stats: SFTStats) -> ValueError:
        losses = {k: getattr(stats, k) for k in ("skipped_invalid", "dropped_too_long", "dropped_no_target")}
        hints = {"skipped_invalid": f"first: {stats.first_error}",
                 "dropped_too_long": f"longer than max_length={self.max_length}; truncation=truncate cuts them",
                 "dropped_no_target": f"max_length={self.max_length} cuts off every answer"}
        return split_loss(source, split, "example", stats.records, losses, hints)

    def _warn_losses(self, split: str, stats: SFTStats) -> None:
        examples = stats.records - stats.skipped_invalid
        warning = losses_warning("SFT", split, stats, {
            "skipped_invalid": "{n} records skipped as invalid",
            "truncated": f"{{n}} of {examples} examples cut to max_length={self.max_length} positions",
            "dropped_too_long": f"{{n}} of {examples} examples dropped: longer than max_length={self.max_length}",
            "dropped_no_target": "{n} examples dropped: no assistant token left to learn"})
        if warning:
            rank_zero_warn(warning)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, self.datasets["train"], self.batch_size, self.seed,
                            collate_fn=SFTCollator(self.tokenizer.pad_id), num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=self.batch_size,
                          collate_fn=SFTCollator(self.tokenizer.pad_id), num_workers=self.num_workers)

