"""PPO data: prompts rendered with the chat template (left-padded for generation), and optional pretraining
blocks for the PPO-ptx term.

Sources (`source`):
    tasks: the built-in task world's PPO prompts (`tasks.ppo_prompts`: train split for training, val split for
        validation), each with its gold `answer`, so the gold reward (`reward_from: gold`) can score them.
    a local file/folder or hub dataset: records with a prompt field (`prompt_field`, default "prompt"), or Alpaca
        records (`instruction` + optional `input`, rendered by `alpaca_prompt` as in SFT); an `answer` field, when
        present, travels with the record (the gold reward needs it). `val_fraction` of it is held out.

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
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_llm.data.sampling import TrainOrderState, train_loader, world_of
from lit_llm.data.sources import (
    FieldError,
    RecordError,
    Records,
    holdout_split,
    load_records,
    load_texts,
    losses_warning,
    model_tokenizer,
    source_fingerprint,
    split_loss,
)
from lit_llm.data.tasks import alpaca_prompt, ppo_prompts, pretrain_corpus
from lit_llm.generation import left_pad
from lit_llm.tokenizer import Tokenizer

TASKS_SOURCE = "tasks"


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


def prompt_text(record: dict, prompt_field: str, where: str) -> str:
    """The user message of a record: its `prompt_field`, or an Alpaca instruction (+ input)."""
    # `datasets` gives every record every column of the file (None where absent), so None counts as missing
    if record.get(prompt_field) is not None:
        text = record[prompt_field]
    elif record.get("instruction") is not None:
        text = alpaca_prompt(record["instruction"], record.get("input") or "")
    else:
        present = sorted(k for k, v in record.items() if v is not None)
        raise FieldError(f"{where}: missing field {prompt_field!r} (or an Alpaca 'instruction'); available fields: "
                         f"{present}")
    if not isinstance(text, str):
        raise RecordError(f"{where}: field {prompt_field!r} must be a string, got {type(text).__name__} {text!r:.40}")
    if not text.strip():
        raise RecordError(f"{where}: field {prompt_field!r} is empty")
    return text


def render_prompt(tokenizer: Tokenizer, text: str, system_prompt: str | None) -> list[int]:
    """[system], user = text, assistant header: the tokens a policy continues with its answer (PPO prompts,
    rejection sampling and every stage's gold evaluation ask this way)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    return tokenizer.render_chat(messages, add_generation_prompt=True)[0]


def ptx_blocks(tokenizer: Tokenizer, texts: Sequence[str], length: int) -> torch.Tensor:
    """(N, length + 1) blocks of the documents' tokens (bos + text + eos each), concatenated and cut."""
    stream: list[int] = []
    for ids in tokenizer.encode_batch(list(texts)):
        stream += [i for i in (tokenizer.bos_id, *ids, tokenizer.eos_id) if i is not None]
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


class PromptDataModule(TrainOrderState, pl.LightningDataModule):
    """Prompts for PPO rollouts (and pretraining blocks for PPO-ptx).

    Args:
        source: "tasks" (the built-in task world) or a local file/folder or hub dataset of prompt records.
        prompt_field: Field holding the prompt text (Alpaca `instruction`/`input` records work too).
        val_source: Separate validation prompts; otherwise `val_fraction` of `source` is held out.
        val_fraction: Share of a file's records held out for validation.
        hub_name: Config name of a hub dataset.
        hub_split: Split of a hub dataset to read.
        system_prompt: System message of every prompt (use the one SFT used).
        chat_template: How conversations are rendered: "auto" (default: the tokenizer's own template, else the
            default one when it has its <|user|> ... <|end|> tokens, else a plain-text one, "### Instruction:" /
            "### Response:" + its eos), "own", "default", "plain", a Jinja template or a file holding one. The model
            keeps it (checkpoints, generation and the gold evaluation render the same way).
        num_prompts: Training prompts drawn from the task world (train split).
        num_val_prompts: Validation prompts from the task world (val split).
        max_digits: Difficulty of the task world's arithmetic.
        max_prompt_length: Longest rendered prompt in tokens; longer ones are dropped and counted.
        skip_invalid: Skip (and count) records without a usable prompt instead of raising.
        batch_size: Prompts per rollout on each device.
        val_batch_size: Prompts per validation batch (default `batch_size`).
        ptx_source: Pretraining text for the PPO-ptx term: "tasks" (the task world's pretraining corpus) or a
            local file/hub dataset with a `ptx_field` column; None disables it.
        ptx_field: Text field of `ptx_source`.
        ptx_docs: Documents drawn when `ptx_source` is "tasks".
        ptx_length: Positions per pretraining block.
        ptx_batch_size: Pretraining blocks per batch.
        seed: Seed of the task world, the hold-out split, the shuffling and the ptx draw.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        source: str = TASKS_SOURCE,
        prompt_field: str = "prompt",
        val_source: str | None = None,
        val_fraction: float = 0.05,
        hub_name: str | None = None,
        hub_split: str = "train",
        system_prompt: str | None = None,
        chat_template: str | None = None,
        num_prompts: int = 2048,
        num_val_prompts: int = 64,
        max_digits: int = 2,
        max_prompt_length: int = 96,
        skip_invalid: bool = False,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        ptx_source: str | None = None,
        ptx_field: str = "text",
        ptx_docs: int = 2000,
        ptx_length: int = 128,
        ptx_batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.source, self.prompt_field, self.val_source, self.val_fraction = source, prompt_field, val_source, val_fraction
        self.hub_name, self.hub_split, self.system_prompt = hub_name, hub_split, system_prompt
        self.chat_template, self.chat_template_note = chat_template, None
        self.num_prompts, self.num_val_prompts, self.max_digits = num_prompts, num_val_prompts, max_digits
        self.max_prompt_length, self.skip_invalid = max_prompt_length, skip_invalid
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.ptx_source, self.ptx_field, self.ptx_docs = ptx_source, ptx_field, ptx_docs
        self.ptx_length, self.ptx_batch_size = ptx_length, ptx_batch_size
        self.seed, self.num_workers = seed, num_workers
        self.tokenizer: Tokenizer | None = None
        self.fingerprint: str | None = None
        self.stats: dict[str, PromptStats] = {}
        self.datasets: dict[str, Prompts] = {}
        self.ptx: torch.Tensor | None = None

    def _options(self) -> dict[str, Any]:
        keys = ("prompt_field", "val_source", "val_fraction", "hub_name", "hub_split", "system_prompt",
                "num_prompts", "num_val_prompts", "max_digits", "max_prompt_length", "ptx_source", "ptx_field",
                "ptx_docs", "ptx_length", "seed")
        options = {k: getattr(self, k) for k in keys}
        if self.chat_template is not None:  # unset: the fingerprints of earlier runs stay valid
            options["chat_template"] = self.chat_template
        return options

    def raw_records(self) -> dict[str, tuple[list[tuple[int, dict]], Records]]:
        """split -> ((row in the source, record) pairs, the source's records, which name the rows in messages)."""
        if self.source == TASKS_SOURCE:
            out = {}
            for split, n in (("train", self.num_prompts), ("val", self.num_val_prompts)):
                rows = ppo_prompts(n, split, self.seed, max_digits=self.max_digits)
                out[split] = (list(enumerate(rows)), Records(f"tasks/{split}", rows,
                                                              [f"tasks/{split}, record {i}" for i in range(len(rows))]))
            return out
        records = load_records(self.source, self.hub_split, self.hub_name)
        rows = list(enumerate(records.rows))
        if self.val_source is not None:
            val = load_records(self.val_source, self.hub_split, self.hub_name)
            return {"train": (rows, records), "val": (list(enumerate(val.rows)), val)}
        train, val = holdout_split(rows, self.val_fraction, self.seed, self.source)
        return {"train": (train, records), "val": (val, records)}

    def build(self, records: list[tuple[int, dict]], names: Records, stats: PromptStats,
              split: str = "train") -> Prompts:
        """Render and length-check the prompts of one split ((row, record) pairs)."""
        ids, kept = [], []
        for row, record in records:
            stats.records += 1
            try:
                text = prompt_text(record, self.prompt_field, names.where(row))
            except RecordError as err:
                if not self.skip_invalid:
                    raise
                stats.skipped_invalid += 1
                stats.first_error = stats.first_error or str(err)
                continue
            tokens = render_prompt(self.tokenizer, text, self.system_prompt)
            if len(tokens) > self.max_prompt_length:
                stats.dropped_too_long += 1
                continue
            ids.append(tokens)
            kept.append(record)
        stats.prompts = len(ids)
        if not ids:
            hints = {"skipped_invalid": f"first: {stats.first_error}",
                     "dropped_too_long": f"longer than max_prompt_length={self.max_prompt_length}"}
            losses = {k: getattr(stats, k) for k in hints}
            raise split_loss(names.source, split, "prompt", stats.records, losses, hints)
        warning = losses_warning("PPO prompt", split, stats, {
            "skipped_invalid": "{n} records skipped as invalid",
            "dropped_too_long": f"{{n}} prompts dropped: longer than max_prompt_length={self.max_prompt_length} "
                                f"tokens"})
        if warning:
            rank_zero_warn(warning)
        return Prompts(ids, kept)

    def ptx_texts(self) -> list[str]:
        if self.ptx_source == TASKS_SOURCE:
            corpus = pretrain_corpus(self.ptx_docs, seed=self.seed, dup_rate=0.0, near_dup_rate=0.0, junk_rate=0.0,
                                     max_digits=self.max_digits)
            return corpus.docs
        return load_texts(self.ptx_source, self.ptx_field, self.hub_split)[0]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.tokenizer = model_tokenizer(self)
        self.fingerprint = source_fingerprint(self.source, self._options())
        for split, (records, names) in self.raw_records().items():
            self.stats[split] = PromptStats()
            self.datasets[split] = self.build(records, names, self.stats[split], split)
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
