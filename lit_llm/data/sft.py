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
raises, naming the counts that emptied it and the option behind each. (Reading, splitting and the tokenizer:
`lit_llm.data.record_module.RecordDataModule`; a new format is one function and one entry of `FORMATS`.)

Packing. With `packing`, examples are packed into rows of `max_length` positions by best-fit decreasing (fewer
pad tokens than greedy filling); `doc_ids` keep attention inside each example and positions restart per example
(the model derives them from `doc_ids`), so a packed row computes the same per-token losses as the examples
alone. Without packing each example is one row, right-padded per batch with an `attention_mask`.

Deliberate simplifications: truncation cuts from the right only; rows are packed once in `setup` (each epoch
shuffles the rows, not the assignment of examples to rows); the whole dataset is tokenized in memory.
"""

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from lit_llm.data.record_module import RecordDataModule
from lit_llm.data.records import MESSAGE_ROLES, RecordError, RecordReader
from lit_llm.losses import IGNORE_INDEX
from lit_llm.tokenizer import Tokenizer
from lit_llm.world import alpaca_prompt, sft_records

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant"}


# --------------------------------------------------------------------------------------------- records → chat
def turns(reader: RecordReader, record: dict, where: str, list_key: str, role_key: str, content_key: str,
          roles: dict[str, str]) -> list[dict]:
    """The messages of a record's list of turns (OpenAI `messages` or ShareGPT `conversations`); every turn's
    content is required (an SFT target cannot be empty)."""
    value = record.get(reader.name(list_key))
    if not isinstance(value, list) or not value:
        raise RecordError(f"{where}: field {reader.name(list_key)!r} must be a non-empty list of turns")
    return reader.messages(value, where, roles=roles, role_key=role_key, content_key=content_key, allow_empty=False)


def alpaca_chat(reader: RecordReader, record: dict, where: str) -> list[dict]:
    """`instruction` (+ `input`) → user, `output` → assistant: the prompt the gold evaluation and PPO ask."""
    user = alpaca_prompt(reader.text(record, "instruction", where), reader.text(record, "input", where, False))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reader.text(record, "output", where)}]


def prompt_completion_chat(reader: RecordReader, record: dict, where: str) -> list[dict]:
    return [{"role": "user", "content": reader.text(record, "prompt", where)},
            {"role": "assistant", "content": reader.text(record, "completion", where)}]


def messages_chat(reader: RecordReader, record: dict, where: str) -> list[dict]:
    return turns(reader, record, where, "messages", "role", "content", MESSAGE_ROLES)


def sharegpt_chat(reader: RecordReader, record: dict, where: str) -> list[dict]:
    return turns(reader, record, where, "conversations", "from", "value", SHAREGPT_ROLES)


FORMATS = {"alpaca": alpaca_chat, "messages": messages_chat, "sharegpt": sharegpt_chat,
           "prompt_completion": prompt_completion_chat}
COLUMNS = {"messages": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
           "prompt_completion": ("prompt", "completion")}  # in the order `format: auto` tries them
FIELD_NAMES = ("instruction", "input", "output", "messages", "conversations", "prompt", "completion", "role",
               "content", "from", "value", "system")  # what `fields` may rename


def conversation(reader: RecordReader, record: dict, where: str) -> list[dict]:
    """A record's conversation in its format, with the system message in front; it must have an assistant turn."""
    messages = FORMATS[reader.fmt](reader, record, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(f"{where}: the conversation has no assistant turn (nothing to learn)")
    return reader.with_system(record, messages, where)


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
class SFTDataModule(RecordDataModule):
    """Instruction / chat data for SFT: records → conversations → examples (tokenized in `setup`) → packed or
    padded rows.

    Args:
        format: "auto" (from the columns) or one of "alpaca", "messages", "sharegpt", "prompt_completion"
            (files and hub data; the task world's records are Alpaca records).
        num_records: Training records generated when `source` is "tasks" (train split of the task world).
        num_val_records: Validation records generated when `source` is "tasks" (val split).
        max_digits: Difficulty of the task world's arithmetic.
        max_length: Positions per row (an example of L rendered tokens takes L - 1).
        truncation: "truncate" (cut over-long examples to `max_length`) or "drop" them; both counted.
        packing: Pack several examples per row (attention isolated by `doc_ids`); else one example per row.
        train_on_prompt: Also train on prompt tokens (system, user, role headers), not only the assistant's.
        **options: The source options of `RecordDataModule` (source, fields, val_source, val_fraction, hub_name,
            hub_split, system_prompt, chat_template, tokenizer_from, skip_invalid, batch_size, seed, num_workers).
    """

    FORMATS, COLUMNS, FIELD_NAMES = FORMATS, COLUMNS, FIELD_NAMES
    OPTIONS = ("num_records", "num_val_records", "max_digits", "max_length", "truncation", "train_on_prompt")
    what, what_data = "example", "SFT"

    def __init__(
        self,
        format: Literal["auto", "alpaca", "messages", "sharegpt", "prompt_completion"] = "auto",
        num_records: int = 4000,
        num_val_records: int = 200,
        max_digits: int = 2,
        max_length: int = 256,
        truncation: Literal["truncate", "drop"] = "truncate",
        packing: bool = True,
        train_on_prompt: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(format=format, **options)
        if truncation not in ("truncate", "drop"):
            raise ValueError(f"truncation must be 'truncate' or 'drop', got {truncation!r}")
        self.num_records, self.num_val_records, self.max_digits = num_records, num_val_records, max_digits
        self.max_length, self.truncation = max_length, truncation
        self.packing, self.train_on_prompt = packing, train_on_prompt

    def task_world_records(self, split: str) -> list[tuple[dict, RecordReader]]:
        n = self.num_records if split == "train" else self.num_val_records
        reader = RecordReader("alpaca", {}, f"tasks/{split}", self.system_prompt)
        return [(record, reader) for record in sft_records(n, split, self.seed, max_digits=self.max_digits)]

    def build_split(self, split: str, rows: list[tuple[int, dict, RecordReader]]) -> Dataset:
        stats = self.stats[split] = SFTStats()
        examples = self.read_all(rows, stats, lambda reader, record, where: self.example(reader, record, where,
                                                                                         stats))
        if not examples:
            raise self.nothing_left(split, stats, {
                "dropped_too_long": f"longer than max_length={self.max_length}; truncation=truncate cuts them",
                "dropped_no_target": f"max_length={self.max_length} cuts off every answer"})
        rows_of = pack_examples([len(ex) for ex in examples], self.max_length) if self.packing else None
        dataset = SFTRows(examples, rows_of)
        stats.rows = len(dataset)
        self.warn_losses(split, stats, {
            "skipped_invalid": "{n} records skipped as invalid",
            "truncated": f"{{n}} of {stats.records - stats.skipped_invalid} examples cut to "
                         f"max_length={self.max_length} positions",
            "dropped_too_long": f"{{n}} of {stats.records - stats.skipped_invalid} examples dropped: longer than "
                                f"max_length={self.max_length}",
            "dropped_no_target": "{n} examples dropped: no assistant token left to learn"})
        return dataset

    def example(self, reader: RecordReader, record: dict, where: str, stats: "SFTStats") -> "SFTExample | None":
        """A record's example under the length policy (None when dropped), counted in `stats`."""
        example = encode_example(self.tokenizer, conversation(reader, record, where), self.train_on_prompt)
        example = apply_length_policy(example, self.max_length, self.truncation, stats)
        if example is not None:
            stats.examples += 1
            stats.target_tokens += example.num_targets
            stats.tokens += len(example)
        return example

    def collate_fn(self) -> "SFTCollator":
        return SFTCollator(self.tokenizer.pad_id)
