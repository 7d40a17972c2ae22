"""`RecordDataModule`: what the SFT, preference and prompt data modules share: the source options (documented once,
here), the train/validation split, the tokenizer and its chat template, the bad-record policy, the counts and the
loaders. Each subclass adds its formats (`FORMATS`, `COLUMNS`; see `lit_llm.data.records`), how a split's items are
built (`build_split`) and its collator."""

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_llm.checkpoint import load_tokenizer
from lit_llm.data.records import (FieldError, RecordError, RecordReader, Records, check_field_names,
                                  detect_format, load_records)
from lit_llm.data.sampling import TrainOrderState, train_loader
from lit_llm.data.sources import holdout_split, require_fields, source_fingerprint, split_loss
from lit_llm.tokenizer import Tokenizer
from lit_llm.world import TASKS_SOURCE


class RecordDataModule(TrainOrderState, pl.LightningDataModule):
    """What the SFT, preference and prompt data modules share: where records come from, how they are split, the
    tokenizer, and what happens to bad records.

    The tokenizer is the one of `tokenizer_from` (`lit-llm fit` sets it to the model's `init_from`, so data and
    model read the same tokens; the model then takes the chat template chosen here), or one set on
    `datamodule.tokenizer` directly.

    Args:
        source: "tasks" (the built-in task world, no download), a local file or folder (jsonl, json, parquet) or a
            hub dataset name.
        format: "auto" (from the columns) or one of the module's formats.
        fields: Canonical field name -> the data's field name, e.g. {"output": "text"} (files and hub data).
        val_source: Separate validation file/name; otherwise `val_fraction` of `source` is held out.
        val_fraction: Share of records held out for validation when there is no `val_source`.
        hub_name: Config name of a hub dataset.
        hub_split: Split of a hub dataset to read (the validation source reads the same split).
        system_prompt: System message added to conversations that have none (also used by the gold evaluation).
        chat_template: How conversations are rendered: "auto" (default: the tokenizer's own template, else the
            default one when it has its <|user|> ... <|end|> tokens, else a plain-text one, "### Instruction:" /
            "### Response:" + its eos), "own", "default", "plain", a Jinja template or a file holding one. The model
            keeps it (checkpoints, generation and the gold evaluation render the same way).
        tokenizer_from: The lit_llm checkpoint or Hugging Face directory whose tokenizer the records are
            tokenized with; `lit-llm fit` sets it from the model's `init_from`.
        skip_invalid: Skip (and count) malformed records instead of raising.
        batch_size: Items per batch on each device.
        seed: Seed for the task world and the train/val split of a file.
        num_workers: DataLoader worker processes.
    """

    FORMATS: dict[str, Callable[..., Any]] = {}  # format -> to_chat(reader, record, where)
    COLUMNS: dict[str, tuple[str, ...]] = {}  # format -> the columns identifying it, in the order auto tries them
    FIELD_NAMES: tuple[str, ...] = ()  # what `fields` may rename
    FALLBACK_FORMAT: str | None = None  # read when no format's columns are there (None: refuse the source)
    OPTIONS: tuple[str, ...] = ()  # the module's own options that shape its items (for the fingerprint)
    what = "record"  # what an item is called in messages ("example", "comparison", "prompt")
    what_data = "record"  # what the data is called in warnings ("SFT", "preference", "PPO prompt")

    def __init__(self, source: str = TASKS_SOURCE, format: str = "auto", fields: dict[str, str] | None = None,
                 val_source: str | None = None, val_fraction: float = 0.05, hub_name: str | None = None,
                 hub_split: str = "train", system_prompt: str | None = None, chat_template: str | None = None,
                 tokenizer_from: str | None = None, skip_invalid: bool = False, batch_size: int = 16, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        if format != "auto" and format not in self.FORMATS:
            raise ValueError(f"format must be 'auto' or one of {tuple(self.FORMATS)}, got {format!r}")
        check_field_names(fields or {}, self.FIELD_NAMES)
        self.source, self.format, self.fields = source, format, dict(fields or {})
        self.val_source, self.val_fraction, self.hub_name, self.hub_split = val_source, val_fraction, hub_name, hub_split
        self.system_prompt, self.chat_template, self.tokenizer_from = system_prompt, chat_template, tokenizer_from
        self.skip_invalid, self.batch_size, self.seed, self.num_workers = skip_invalid, batch_size, seed, num_workers
        self.tokenizer: Tokenizer | None = None
        self.chat_template_note: str | None = None
        self.fingerprint: str | None = None
        self.stats: dict[str, Any] = {}
        self.datasets: dict[str, Dataset] = {}

    @property
    def is_task_world(self) -> bool:
        return self.source == TASKS_SOURCE

    def options(self) -> dict[str, Any]:
        """Everything besides the source's bytes that shapes the items (for the fingerprint)."""
        keys = ("format", "fields", "val_source", "val_fraction", "hub_name", "hub_split", "system_prompt",
                "skip_invalid", "seed", *self.OPTIONS)
        options = {k: getattr(self, k) for k in keys}
        if self.chat_template is not None:  # unset: the fingerprints of earlier runs stay valid
            options["chat_template"] = self.chat_template
        return options

    # --------------------------------------------------------------------------------------------- tokenizer
    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer (set directly, else `tokenizer_from`'s) with the chat template this data renders with
        (`Tokenizer.pick_chat_template`), recorded in `chat_template_note` (a run param)."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            if self.tokenizer_from is None:
                raise ValueError(f"{type(self).__name__} needs a tokenizer: set data.tokenizer_from to the model's "
                                 f"checkpoint or Hugging Face directory (`lit-llm fit` sets it from init_from), or "
                                 f"`datamodule.tokenizer` outside the CLI")
            tokenizer = load_tokenizer(self.tokenizer_from)
        try:
            template, note = tokenizer.pick_chat_template(self.chat_template)
        except ValueError as err:
            origin = f" (of {self.tokenizer_from})" if self.tokenizer_from else ""
            raise ValueError(f"{type(self).__name__}: the tokenizer{origin}: {err}") from None
        if note.startswith("plain (fallback"):
            rank_zero_warn(f"{type(self).__name__}: chat template {note}; choose another with "
                           f"--data.init_args.chat_template")
        tokenizer.chat_template = template
        self.chat_template_note = note
        return tokenizer

    # ----------------------------------------------------------------------------------------------- records
    def task_world_records(self, split: str) -> list[tuple[dict, RecordReader]]:
        """The task world's records of a split, each with its reader (subclasses)."""
        raise NotImplementedError

    def reader_for(self, records: Records) -> RecordReader:
        """A reader for a loaded source, after checking that its format's identifying columns exist."""
        columns, source, fmt = records.columns, records.source, self.format
        if fmt == "auto":
            try:
                fmt = detect_format(columns, self.COLUMNS, self.fields, source, self.what_data)
            except FieldError:
                if self.FALLBACK_FORMAT is None:
                    raise  # else: the records say what they lack, one by one
                return RecordReader(self.FALLBACK_FORMAT, self.fields, source, self.system_prompt, records.where)
        reader = RecordReader(fmt, self.fields, source, self.system_prompt, records.where)
        require_fields(columns, [reader.name(name) for name in self.COLUMNS[fmt]], source)
        return reader

    def split_records(self) -> dict[str, list[tuple[int, dict, RecordReader]]]:
        """Train and validation records, each with its row in the source (for error messages) and its reader."""
        if self.is_task_world:
            return {split: [(i, record, reader) for i, (record, reader) in enumerate(self.task_world_records(split))]
                    for split in ("train", "val")}
        records = load_records(self.source, self.hub_split, self.hub_name)
        reader = self.reader_for(records)
        rows = [(i, r, reader) for i, r in enumerate(records.rows)]
        if self.val_source is not None:
            val = load_records(self.val_source, self.hub_split, self.hub_name)
            val_reader = self.reader_for(val)
            return {"train": rows, "val": [(i, r, val_reader) for i, r in enumerate(val.rows)]}
        train, val = holdout_split(rows, self.val_fraction, self.seed, self.source)
        return {"train": train, "val": val}

    def read_all(self, rows: list[tuple[int, dict, RecordReader]], stats: Any,
                 build: Callable[[RecordReader, dict, str], Any]) -> list:
        """The items of a split: `build(reader, record, place)` for each record, under the bad-record policy (None
        from `build` is an item it dropped and counted); `stats.records`, `skipped_invalid` and `first_error` are
        counted here."""
        items = []
        for row, record, reader in rows:
            stats.records += 1
            where = reader.where(row)
            try:
                item = build(reader, record, where)
            except RecordError as err:
                if not str(err).startswith(where):  # errors raised past the reader (rendering, splitting)
                    err = RecordError(f"{where}: {err}")
                if not self.skip_invalid:
                    raise err from None
                stats.skipped_invalid += 1
                stats.first_error = stats.first_error or str(err)
                continue
            if item is not None:
                items.append(item)
        return items

    def nothing_left(self, split: str, stats: Any, hints: dict[str, str]) -> ValueError:
        """The error for a split with no item left, naming the counts that emptied it and what to change."""
        source = self.val_source if split == "val" and self.val_source else self.source
        hints = {"skipped_invalid": f"first: {stats.first_error}", **hints}
        return split_loss(source, split, self.what, stats.records, {k: getattr(stats, k) for k in hints}, hints)

    def warn_losses(self, split: str, stats: Any, phrases: dict[str, str]) -> None:
        """One warning for what a split lost, each count with its unit, when it lost anything.

        Args:
            split: "train" or "val".
            stats: The split's stats: counts as attributes, `records` and `first_error` among them.
            phrases: Count name -> its phrase, "{n}" standing for the count ("{n} of 624 sequences cut to ...").
        """
        parts = [phrase.format(n=getattr(stats, key)) for key, phrase in phrases.items() if getattr(stats, key, 0)]
        if parts:
            hint = f"; first skipped record: {stats.first_error}" if getattr(stats, "first_error", None) else ""
            rank_zero_warn(f"{self.what_data} {split} data ({stats.records} records): {'; '.join(parts)}{hint}")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # setup runs once per Trainer call; the tokenized data does not change
            return
        self.tokenizer = self.load_tokenizer()
        self.fingerprint = source_fingerprint(self.source, self.options())
        for split, rows in self.split_records().items():
            self.datasets[split] = self.build_split(split, rows)

    def build_split(self, split: str, rows: list[tuple[int, dict, RecordReader]]) -> Dataset:
        """The dataset of one split, its counts in `self.stats[split]` (subclasses)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ loaders
    def collate_fn(self) -> Callable[[list], Any]:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, self.datasets["train"], self.batch_size, self.seed, collate_fn=self.collate_fn(),
                            num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=self.batch_size, collate_fn=self.collate_fn(),
                          num_workers=self.num_workers)
