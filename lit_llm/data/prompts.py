"""PPO data: prompts rendered with the chat template (left-padded for generation), and optional pretraining
blocks for the PPO-ptx term.

Sources (`source`):
    tasks: the built-in task world's PPO prompts (`world.ppo_prompts`: train split for training, val split for
        validation), each with its gold `answer`, so the gold reward (`reward_from: gold`) can score them.
    a local file/folder or hub dataset: records with a `prompt` field (format "prompt"; rename it with
        `fields: {prompt: question}`), or Alpaca records (`instruction` + optional `input`, rendered by
        `alpaca_prompt` as in SFT; a "prompt" record without a prompt but with an instruction is read as Alpaca);
        an `answer` field, when present, travels with the record (the gold reward needs it). `val_fraction` of it
        is held out.

Each prompt becomes [system], user = the prompt, then the assistant header (`Tokenizer.render_chat` with
`add_generation_prompt`), exactly as SFT trains and the gold evaluation asks. A prompt longer than
`max_prompt_length` tokens is dropped, counted in `stats` and warned (PPO cannot use a cut question). A record
without a prompt field, or with an empty one, raises a `RecordError` (a `ValueError`) naming the file and line
of the record (`file.jsonl:3`; the 0-based record for parquet and hub data) and the fields it has, unless
`skip_invalid` (skipped, counted and warned). A split left without any prompt raises, naming the counts that
emptied it, and so does a training split with fewer prompts than one batch (the last partial batch is dropped).

Batches: `input_ids` / `attention_mask` (B, T) left-padded prompts, `records` (the B source records), and with
`ptx_source` also `ptx_input_ids` (B_ptx, ptx_length + 1): blocks of the pretraining text (documents as
bos + text + eos, concatenated and cut), `ptx_batch_size` per batch, in a seeded random order.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from lit_llm.data.record_module import RecordDataModule
from lit_llm.data.records import FieldError, RecordReader
from lit_llm.data.sampling import train_loader, world_of
from lit_llm.data.sources import load_texts
from lit_llm.generation import left_pad
from lit_llm.tokenizer import Tokenizer
from lit_llm.world import alpaca_prompt, ppo_prompts, pretrain_corpus


@dataclass
class PromptStats:
    """What became of a split's records (logged by the stage as `data_stats.<split>.*` params)."""

    records: int = 0
    prompts: int = 0
    dropped_too_long: int = 0
    skipped_invalid: int = 0
    ptx_blocks: int = 0
    first_error: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "first_error"}


def alpaca_text(reader: RecordReader, record: dict, where: str) -> str:
    """An Alpaca record's prompt: its instruction, then "\\n" and its input when it has one."""
    return alpaca_prompt(reader.text(record, "instruction", where), reader.text(record, "input", where, False))


def prompt_text(reader: RecordReader, record: dict, where: str) -> str:
    """A record's `prompt`, or, without one, its Alpaca instruction (+ input)."""
    if record.get(reader.name("prompt")) is None and record.get(reader.name("instruction")) is not None:
        return alpaca_text(reader, record, where)
    if record.get(reader.name("prompt")) is None:
        present = sorted(k for k, v in record.items() if v is not None)
        raise FieldError(f"{where}: missing field {reader.name('prompt')!r} (or an Alpaca 'instruction'); "
                         f"available fields: {present}")
    return reader.text(record, "prompt", where)


FORMATS = {"prompt": prompt_text, "alpaca": alpaca_text}
COLUMNS = {"prompt": ("prompt",), "alpaca": ("instruction",)}  # in the order `format: auto` tries them
FIELD_NAMES = ("prompt", "instruction", "input", "answer")  # what `fields` may rename


def ptx_blocks(tokenizer: Tokenizer, texts: Sequence[str], length: int) -> torch.Tensor:
    """(N, length + 1) blocks of the documents' tokens (bos + text + eos each), concatenated and cut."""
    stream: list[int] = []
    for ids in tokenizer.encode_batch(list(texts), bos=tokenizer.add_bos):
        stream += [*ids, tokenizer.eos_id] if tokenizer.eos_id is not None else ids
    n = len(stream) // (length + 1)
    if n == 0:
        raise ValueError(f"the ptx source has {len(stream)} tokens, fewer than one block of {length + 1}")
    return torch.tensor(stream[: n * (length + 1)], dtype=torch.long).view(n, length + 1)


class Prompts(Dataset):
    """Tokenized prompts with their records."""

    def __init__(self, ids: list[list[int]], records: list[dict]) -> None:
        self.ids, self.records = ids, records

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, list[int], dict]:
        return i, self.ids[i], self.records[i]


class PromptCollator:
    """Left-pads prompts; adds `ptx_batch_size` pretraining blocks.

    The blocks are drawn with a generator seeded by the batch's prompt indices, so a batch always gets the same
    blocks: no hidden sampler state, identical under worker processes and after a resume.
    """

    def __init__(self, pad_id: int, ptx: torch.Tensor | None = None, ptx_batch_size: int = 0,
                 seed: int = 0) -> None:
        self.pad_id, self.ptx, self.ptx_batch_size, self.seed = pad_id, ptx, ptx_batch_size, seed

    def __call__(self, items: list[tuple[int, list[int], dict]]) -> dict[str, Any]:
        ids, mask = left_pad([ids for _, ids, _ in items], self.pad_id)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "records": [r for _, _, r in items]}
        if self.ptx is not None and self.ptx_batch_size:
            indices = [i for i, _, _ in items]
            generator = torch.Generator().manual_seed(hash((self.seed, *indices)) % 2**62)
            rows = torch.randint(len(self.ptx), (self.ptx_batch_size,), generator=generator)
            batch["ptx_input_ids"] = self.ptx[rows]
        return batch


class PromptDataModule(RecordDataModule):
    """Prompts for PPO rollouts (and pretraining blocks for PPO-ptx).

    Args:
        format: "auto" (from the columns), "prompt" or "alpaca".
        num_prompts: Training prompts drawn from the task world (train split).
        num_val_prompts: Validation prompts from the task world (val split).
        max_digits: Difficulty of the task world's arithmetic.
        max_prompt_length: Longest rendered prompt in tokens; longer ones are dropped and counted.
        batch_size: Prompts per rollout on each device.
        val_batch_size: Prompts per validation batch (default `batch_size`).
        ptx_source: Pretraining text for the PPO-ptx term: "tasks" (the task world's pretraining corpus) or a
            local file/hub dataset with a `ptx_field` column; None disables it.
        ptx_field: Text field of `ptx_source`.
        ptx_docs: Documents drawn when `ptx_source` is "tasks".
        ptx_length: Positions per pretraining block.
        ptx_batch_size: Pretraining blocks per batch.
        **options: The source options of `RecordDataModule` (source, fields, val_source, val_fraction, hub_name,
            hub_split, system_prompt (use the one SFT used), chat_template, tokenizer_from, skip_invalid, seed (also
            of the ptx draw), num_workers).
    """

    FORMATS, COLUMNS, FIELD_NAMES, FALLBACK_FORMAT = FORMATS, COLUMNS, FIELD_NAMES, "prompt"
    OPTIONS = ("num_prompts", "num_val_prompts", "max_digits", "max_prompt_length", "ptx_source", "ptx_field",
               "ptx_docs", "ptx_length")
    what, what_data = "prompt", "PPO prompt"

    def __init__(
        self,
        format: Literal["auto", "prompt", "alpaca"] = "auto",
        num_prompts: int = 2048,
        num_val_prompts: int = 64,
        max_digits: int = 2,
        max_prompt_length: int = 96,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        ptx_source: str | None = None,
        ptx_field: str = "text",
        ptx_docs: int = 2000,
        ptx_length: int = 128,
        ptx_batch_size: int = 8,
        **options: Any,
    ) -> None:
        super().__init__(format=format, batch_size=batch_size, **options)
        self.num_prompts, self.num_val_prompts, self.max_digits = num_prompts, num_val_prompts, max_digits
        self.max_prompt_length, self.val_batch_size = max_prompt_length, val_batch_size or self.batch_size
        self.ptx_source, self.ptx_field, self.ptx_docs = ptx_source, ptx_field, ptx_docs
        self.ptx_length, self.ptx_batch_size = ptx_length, ptx_batch_size
        self.ptx: torch.Tensor | None = None

    def task_world_records(self, split: str) -> list[tuple[dict, RecordReader]]:
        n = self.num_prompts if split == "train" else self.num_val_prompts
        reader = RecordReader("prompt", {}, f"tasks/{split}", self.system_prompt)
        return [(record, reader) for record in ppo_prompts(n, split, self.seed, max_digits=self.max_digits)]

    def build_split(self, split: str, rows: list[tuple[int, dict, RecordReader]]) -> Dataset:
        stats = self.stats[split] = PromptStats()

        def rendered(reader: RecordReader, record: dict, where: str) -> tuple[list[int], dict] | None:
            tokens = self.tokenizer.render_prompt(FORMATS[reader.fmt](reader, record, where), self.system_prompt)
            if len(tokens) > self.max_prompt_length:
                stats.dropped_too_long += 1
                return None
            return tokens, record

        kept = self.read_all(rows, stats, rendered)
        stats.prompts = len(kept)
        if not kept:
            raise self.nothing_left(split, stats, {
                "dropped_too_long": f"longer than max_prompt_length={self.max_prompt_length}"})
        self.warn_losses(split, stats, {
            "skipped_invalid": "{n} records skipped as invalid",
            "dropped_too_long": f"{{n}} prompts dropped: longer than max_prompt_length={self.max_prompt_length} "
                                f"tokens"})
        return Prompts([ids for ids, _ in kept], [record for _, record in kept])

    def ptx_texts(self) -> list[str]:
        if self.ptx_source == "tasks":
            corpus = pretrain_corpus(self.ptx_docs, seed=self.seed, dup_rate=0.0, near_dup_rate=0.0, junk_rate=0.0,
                                     max_digits=self.max_digits)
            return corpus.docs
        return load_texts(self.ptx_source, self.ptx_field, self.hub_split)[0]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        super().setup(stage)
        if self.ptx_source is not None:
            self.ptx = ptx_blocks(self.tokenizer, self.ptx_texts(), self.ptx_length)
            self.stats["train"].ptx_blocks = len(self.ptx)

    def train_dataloader(self) -> DataLoader:
        need = self.batch_size * world_of(self)[0]  # drop_last: fewer would give Lightning zero steps, silently
        if len(self.datasets["train"]) < need:
            raise ValueError(f"{self.source}: {len(self.datasets['train'])} training prompts, fewer than one batch "
                             f"of {need} (batch_size={self.batch_size} per process); lower batch_size or add prompts")
        collate = PromptCollator(self.tokenizer.pad_id, self.ptx, self.ptx_batch_size, self.seed)
        return train_loader(self, self.datasets["train"], self.batch_size, self.seed, drop_last=True,
                            collate_fn=collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=self.val_batch_size,
                          collate_fn=PromptCollator(self.tokenizer.pad_id), num_workers=self.num_workers)
