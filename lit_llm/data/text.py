"""Pretraining data: documents → tokenizer → one token stream per split → fixed-length blocks.

Sources: the built-in task world (`source: tasks`), a local file or folder (txt, jsonl, json, parquet), or a
Hugging Face hub dataset name, all read through `datasets`. A .txt file is one document (`sample_by="document"`).
A directory written by `lit-llm prepare` (tokenizer.json, train.bin, val.bin, meta.json) is read as it is.

Tokenization happens once: the token streams are written as flat uint16/uint32 files under
`cache_dir/<fingerprint>/` and read back as numpy memmaps, so the corpus never has to fit in memory twice and a
second run starts at once. The fingerprint covers the source's bytes and every option that changes the tokens.

Each document is stored as bos + text + eos (bos only when the tokenizer has one), as Llama does, so a prompt
at generation time starts the way every training document did.

Bad input: rows whose text is empty, white space or missing are skipped and counted (`stats["train"]
.skipped_empty`, a run param, and a warning); a source with no text at all, or a split too short for one block,
raises naming the source (and split). Malformed JSON and bytes that are not UTF-8 raise naming the file and line
(`sources.load_local`). There is no per-document length limit: documents are concatenated and cut into blocks.

Deliberate simplifications: documents are concatenated and blocks may span a document
boundary (GPT-2 style; attention crosses it). A source with a single document (tiny Shakespeare) is split by
position — the last `val_fraction` of its tokens is validation, as nanoGPT does; several documents are split by
a seeded shuffle of whole documents.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_llm.checkpoint import checkpoint_stage_meta, read_checkpoint
from lit_llm.data.sampling import TrainOrderState, train_loader, world_of
from lit_llm.data.sources import load_texts, source_fingerprint
from lit_llm.tokenizer import Tokenizer
from lit_llm.world import TASKS_SOURCE, make_examples, pretrain_corpus

PREPARED_MARKER = "meta.json"  # written last, so its presence means the folder is complete


class PackedBlocks(Dataset):
    """Non-overlapping windows of `block_size + 1` tokens over a 1-D token stream (each token seen once)."""

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"token stream of {len(tokens)} tokens is shorter than one block ({block_size + 1})")
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = i * self.block_size
        return _window(self.tokens, start, self.block_size)


class RandomWindows(Dataset):
    """`num_samples` windows at random offsets (nanoGPT's sampling), offset i a pure function of (seed, i).

    Being a map-style dataset with a deterministic offset per index keeps runs reproducible and resumable.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, num_samples: int, seed: int = 0) -> None:
        if len(tokens) < block_size + 2:
            raise ValueError(f"token stream of {len(tokens)} tokens is shorter than one block ({block_size + 1})")
        self.tokens, self.block_size, self.num_samples, self.seed = tokens, block_size, num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        high = len(self.tokens) - self.block_size - 1
        start = int(np.random.default_rng([self.seed, i]).integers(0, high))
        return _window(self.tokens, start, self.block_size)


def _window(tokens: np.ndarray, start: int, block_size: int) -> dict[str, torch.Tensor]:
    chunk = torch.from_numpy(np.asarray(tokens[start : start + block_size + 1], dtype=np.int64))
    return {"input_ids": chunk[:-1], "labels": chunk[1:]}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (halves the disk and page-cache footprint)."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_tokens(path: Path, docs: list[list[int]], eos_id: int, dtype: np.dtype) -> int:
    """Write tokenized documents as one flat stream with eos after each; returns the token count."""
    total = 0
    with open(path, "wb") as f:
        for ids in docs:
            arr = np.asarray(ids + [eos_id], dtype=dtype)
            f.write(arr.tobytes())
            total += len(arr)
    return total


def read_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    """Memory-map a token stream written by `write_tokens` (or by `lit-llm prepare`)."""
    return np.memmap(path, dtype=dtype, mode="r")


@dataclass
class TextStats:
    """A split's documents and tokens (logged by the stage as `data_stats.<split>.*` params). `skipped_empty`
    counts the source's rows with empty or missing text, skipped before the split (under "train")."""

    documents: int = 0
    tokens: int = 0
    skipped_empty: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class TextDataModule(TrainOrderState, pl.LightningDataModule):
    """Pretraining data: documents → tokenizer → cached token streams → blocks of `block_size` tokens.

    Args:
        source: "tasks" for the built-in task world, a local file/folder (txt, jsonl, json, parquet), or a hub
            dataset name.
        text_field: Field that holds the text (json/parquet/hub sources).
        hub_name: Config name of a hub dataset.
        hub_split: Split of a hub dataset to read.
        tokenizer: "bpe" trains a byte-level BPE tokenizer on the training documents, "byte" uses the 256-byte
            (character-level) tokenizer, a `.ckpt` path reuses that lit_llm checkpoint's tokenizer (a second
            model that must share another model's vocabulary, e.g. a larger reward model), anything else is a
            path to a tokenizer.json or its folder (its content is part of the cache's fingerprint, so an edited
            tokenizer never reuses tokens of the old one).
        vocab_size: Vocabulary size when training a BPE tokenizer.
        block_size: Tokens per training sequence (the model's context length during training).
        batch_size: Sequences per batch on each device.
        val_fraction: Share of documents (or, for a single document, of tokens) held out for validation.
        sampling: "packed" walks the stream in non-overlapping blocks each epoch (shuffled); "random" draws
            `train_samples` windows at random offsets (nanoGPT's sampling).
        train_samples: Number of random windows per epoch when `sampling` is "random".
        val_samples: Cap on validation windows (all packed validation blocks when None).
        num_docs: Training documents to generate when `source` is "tasks" (validation gets a tenth).
        max_digits: Difficulty of the task world's arithmetic.
        seed: Seed for the task world, the document split and the sampling order.
        cache_dir: Where token streams are cached, one folder per fingerprint.
        num_workers: DataLoader worker processes.
        predict_prompts: Prompts that `lit-llm predict` completes; default for the task world: its test-split
            questions as "Q: ...\\nA:" documents.
    """

    def __init__(
        self,
        source: str = TASKS_SOURCE,
        text_field: str = "text",
        hub_name: str | None = None,
        hub_split: str = "train",
        tokenizer: str = "bpe",
        vocab_size: int = 512,
        block_size: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        sampling: Literal["packed", "random"] = "packed",
        train_samples: int = 10_000,
        val_samples: int | None = None,
        num_docs: int = 2000,
        max_digits: int = 2,
        seed: int = 0,
        cache_dir: str = "data/cache",
        num_workers: int = 0,
        predict_prompts: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.source, self.text_field, self.hub_name, self.hub_split = source, text_field, hub_name, hub_split
        self.tokenizer_spec, self.vocab_size_wanted = tokenizer, vocab_size
        self.block_size, self.batch_size, self.val_fraction = block_size, batch_size, val_fraction
        self.sampling, self.train_samples, self.val_samples = sampling, train_samples, val_samples
        self.num_docs, self.max_digits, self.seed = num_docs, max_digits, seed
        self.cache_dir, self.num_workers = Path(cache_dir), num_workers
        self.predict_prompts = predict_prompts
        self.tokenizer: Tokenizer | None = None
        self._tokenizer_state: dict | None = None  # of a `.ckpt` tokenizer, read once
        self.fingerprint: str | None = None
        self.stats: dict[str, TextStats] = {}
        self.train_tokens: np.ndarray | None = None
        self.val_tokens: np.ndarray | None = None

    @property
    def is_task_world(self) -> bool:
        """Whether the data is the task world: `source: tasks`, or a `lit-llm prepare` folder built from it."""
        if self.source == TASKS_SOURCE:
            return True
        marker = Path(self.source) / PREPARED_MARKER
        return marker.is_file() and bool(json.loads(marker.read_text()).get("task_world", False))

    def _options(self) -> dict:
        options = {
            "tokenizer": self.tokenizer_spec, "vocab_size": self.vocab_size_wanted, "val_fraction": self.val_fraction,
            "num_docs": self.num_docs, "max_digits": self.max_digits, "seed": self.seed,
            "text_field": self.text_field, "hub": [self.hub_name, self.hub_split], "format": 1,
        }
        if self.tokenizer_spec.endswith(".ckpt"):
            state = json.dumps(self._checkpoint_tokenizer_state(), sort_keys=True)
            options["tokenizer_files"] = [hashlib.sha256(state.encode()).hexdigest()]
        elif self.tokenizer_spec not in ("bpe", "byte"):  # an edited tokenizer file must not reuse stale tokens
            options["tokenizer_files"] = [hashlib.sha256(f.read_bytes()).hexdigest() for f in self._tokenizer_files()]
        return options

    def _checkpoint_tokenizer_state(self) -> dict:
        """The tokenizer stored in the lit_llm checkpoint that `tokenizer` names (read once)."""
        if self._tokenizer_state is None:
            try:
                meta = checkpoint_stage_meta(read_checkpoint(self.tokenizer_spec), self.tokenizer_spec)
            except ValueError as err:
                raise ValueError(f"data.tokenizer: {err}") from None
            self._tokenizer_state = meta["tokenizer"]
        return self._tokenizer_state

    def _tokenizer_files(self) -> list[Path]:
        """The files `Tokenizer.from_file` reads for a path `tokenizer`: tokenizer.json (+ tokenizer_config.json)."""
        path = Path(self.tokenizer_spec)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"data.tokenizer: no tokenizer at {file} (use 'bpe', 'byte' or a path)")
        return [f for f in (file, file.parent / "tokenizer_config.json") if f.is_file()]

    def _documents(self) -> tuple[list[str], list[str], int]:
        """Train and validation documents, and the number of rows skipped as empty."""
        if self.is_task_world:
            n_val = max(1, self.num_docs // 10)
            train = pretrain_corpus(self.num_docs, seed=self.seed, split="train").docs
            val = pretrain_corpus(n_val, seed=self.seed, dup_rate=0, near_dup_rate=0, junk_rate=0, split="val").docs
            return train, val, 0
        texts, skipped = load_texts(self.source, self.text_field, self.hub_split, self.hub_name)
        if not texts:
            raise ValueError(f"{self.source}: no non-empty text in field {self.text_field!r} "
                             f"({skipped} rows, all empty or missing)")
        if skipped:
            rank_zero_warn(f"{self.source}: skipped {skipped} of {skipped + len(texts)} rows whose "
                           f"{self.text_field!r} is empty or missing")
        if len(texts) == 1:
            cut = int(len(texts[0]) * (1 - self.val_fraction))
            return [texts[0][:cut]], [texts[0][cut:]], skipped
        order = np.random.default_rng(self.seed).permutation(len(texts))
        n_val = max(1, int(len(texts) * self.val_fraction))
        return [texts[i] for i in order[n_val:]], [texts[i] for i in order[:n_val]], skipped

    def _make_tokenizer(self, train_docs: list[str]) -> Tokenizer:
        if self.tokenizer_spec == "bpe":
            return Tokenizer.train(train_docs, vocab_size=self.vocab_size_wanted)
        if self.tokenizer_spec == "byte":
            return Tokenizer.byte_level()
        if self.tokenizer_spec.endswith(".ckpt"):
            return Tokenizer.from_json(self._checkpoint_tokenizer_state())
        return Tokenizer.from_file(self._tokenizer_files()[0])

    def _build_cache(self, folder: Path) -> None:
        """Tokenize once and write tokenizer + token streams; a marker file makes the cache all-or-nothing."""
        train_docs, val_docs, skipped = self._documents()
        tokenizer = self._make_tokenizer(train_docs)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save(folder)
        dtype = token_dtype(tokenizer.vocab_size)
        counts = {}
        for split, docs in (("train", train_docs), ("val", val_docs)):
            ids = tokenizer.encode_batch(docs, bos=tokenizer.add_bos)
            counts[split] = write_tokens(folder / f"{split}.bin", ids, tokenizer.eos_id, dtype)
        meta = {"dtype": dtype.name, "tokens": counts, "documents": {"train": len(train_docs), "val": len(val_docs)},
                "skipped_empty": skipped, "fingerprint": folder.name}
        (folder / PREPARED_MARKER).write_text(json.dumps(meta, indent=2))

    def prepare_data(self) -> None:
        folder = self._cache_folder()
        if not (folder / PREPARED_MARKER).exists():
            self._build_cache(folder)

    @property
    def is_prepared(self) -> bool:
        """Whether `source` is a directory of token streams written by `lit-llm prepare`."""
        return (Path(self.source) / PREPARED_MARKER).is_file()

    def _cache_folder(self) -> Path:
        if self.is_prepared:
            self.fingerprint = json.loads((Path(self.source) / PREPARED_MARKER).read_text()).get("fingerprint")
            return Path(self.source)
        if self.fingerprint is None:
            source = "tasks" if self.is_task_world else self.source
            self.fingerprint = source_fingerprint(source, self._options())
        return self.cache_dir / self.fingerprint

    def setup(self, stage: str | None = None) -> None:
        folder = self._cache_folder()
        if not (folder / PREPARED_MARKER).exists():  # prepare_data runs on rank 0 only; direct callers land here
            self._build_cache(folder)
        meta = json.loads((folder / PREPARED_MARKER).read_text())
        self.tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
        self.train_tokens = read_tokens(folder / "train.bin", np.dtype(meta["dtype"]))
        self.val_tokens = read_tokens(folder / "val.bin", np.dtype(meta["dtype"]))
        self.stats = {split: TextStats(meta["documents"][split], meta["tokens"][split],
                                       meta.get("skipped_empty", 0) if split == "train" else 0)
                      for split in ("train", "val")}

    def _check_length(self, split: str, tokens: np.ndarray, need: int, what: str) -> None:
        """A clear error for a split too short for what its loader needs (instead of a failed draw, or an empty
        loader that Lightning would "train" on for zero steps)."""
        if len(tokens) < need:
            raise ValueError(f"{self.source}: the {split} split has {len(tokens)} tokens, fewer than the {need} of "
                             f"{what} (block_size={self.block_size}, batch_size={self.batch_size}); use more text, "
                             "a smaller block_size or batch_size, or another val_fraction")

    def train_dataloader(self) -> DataLoader:
        if self.sampling == "random":
            self._check_length("train", self.train_tokens, self.block_size + 2, "one random window")
        else:  # drop_last: every process needs one full batch of blocks
            blocks = self.batch_size * world_of(self)[0]
            self._check_length("train", self.train_tokens, blocks * self.block_size + 1, f"{blocks} blocks")
        if self.sampling == "random":
            ds = RandomWindows(self.train_tokens, self.block_size, self.train_samples, self.seed)
        else:
            ds = PackedBlocks(self.train_tokens, self.block_size)
        return train_loader(self, ds, self.batch_size, self.seed, shuffle=self.sampling == "packed", drop_last=True,
                            num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        self._check_length("val", self.val_tokens, self.block_size + 1, "one block")
        ds: Dataset = PackedBlocks(self.val_tokens, self.block_size)
        if self.val_samples is not None and self.val_samples < len(ds):
            ds = torch.utils.data.Subset(ds, range(self.val_samples))
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        """The held-out validation text (text sources have two splits); the task world's gold evaluation uses its
        separate test split of questions."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        prompts = self.predict_prompts
        if prompts is None and self.is_task_world:
            prompts = [f"Q: {ex.prompt}\nA:" for ex in make_examples(64, split="test", seed=self.seed)]
        if not prompts:
            raise ValueError("lit-llm predict needs prompts: set data.init_args.predict_prompts")
        return DataLoader(prompts, batch_size=self.batch_size, collate_fn=list)
