"""The pretraining data module: sources, caching, splitting, blocks and sampling."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_llm.checkpoint import load_backbone
from lit_llm.data.text import PackedBlocks, RandomWindows, TextDataModule, read_tokens, token_dtype, write_tokens


def test_packed_blocks_tile_the_stream_with_shifted_labels() -> None:
    tokens = np.arange(21, dtype=np.uint16)
    blocks = PackedBlocks(tokens, block_size=5)
    assert len(blocks) == 4
    item = blocks[1]
    assert item["input_ids"].tolist() == [5, 6, 7, 8, 9]
    assert item["labels"].tolist() == [6, 7, 8, 9, 10]


def test_random_windows_are_a_pure_function_of_seed_and_index() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    a, b = RandomWindows(tokens, 8, 50, seed=1), RandomWindows(tokens, 8, 50, seed=1)
    assert all(a[i]["input_ids"].tolist() == b[i]["input_ids"].tolist() for i in range(50))
    assert a[0]["input_ids"].tolist() != RandomWindows(tokens, 8, 50, seed=2)[0]["input_ids"].tolist()


def test_token_files_round_trip_through_memmap(tmp_path: Path) -> None:
    assert token_dtype(300) == np.uint16 and token_dtype(70_000) == np.uint32
    n = write_tokens(tmp_path / "t.bin", [[1, 2], [3]], eos_id=0, dtype=np.dtype(np.uint16))
    assert n == 5
    assert read_tokens(tmp_path / "t.bin", np.dtype(np.uint16)).tolist() == [1, 2, 0, 3, 0]


def test_task_world_source_is_cached_and_deterministic(tmp_path: Path) -> None:
    kwargs = dict(num_docs=100, vocab_size=300, block_size=16, cache_dir=str(tmp_path))
    first = TextDataModule(**kwargs)
    first.setup()
    second = TextDataModule(**kwargs)
    second.setup()
    assert first.fingerprint == second.fingerprint
    assert len(list(tmp_path.iterdir())) == 1  # one cache folder, built once
    np.testing.assert_array_equal(first.train_tokens, second.train_tokens)
    assert first.train_tokens[0] == first.tokenizer.bos_id
    assert TextDataModule(**{**kwargs, "seed": 1})._cache_folder() != first._cache_folder()


def test_single_text_file_is_split_by_position(tmp_path: Path) -> None:
    text = "".join(f"line {i} of the play\n" for i in range(400))
    (tmp_path / "play.txt").write_text(text)
    dm = TextDataModule(source=str(tmp_path / "play.txt"), tokenizer="byte", block_size=16, val_fraction=0.1,
                        cache_dir=str(tmp_path / "cache"))
    dm.setup()
    val_text = dm.tokenizer.decode(dm.val_tokens.tolist())
    assert val_text == text[int(len(text) * 0.9):]
    assert dm.tokenizer.vocab_size == 256 + 8


def test_jsonl_source_with_a_renamed_text_field(tmp_path: Path) -> None:
    rows = [{"body": f"document number {i} " * 5} for i in range(40)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dm = TextDataModule(source=str(tmp_path / "docs.jsonl"), text_field="body", tokenizer="byte", block_size=8,
                        cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert len(dm.train_dataloader()) > 0


def test_missing_field_names_the_available_ones(tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").write_text('{"body": "a"}\n')
    dm = TextDataModule(source=str(tmp_path / "docs.jsonl"), tokenizer="byte", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(KeyError, match=r"no field 'text'; available fields: \['body'\]"):
        dm.setup()


def test_malformed_json_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    dm = TextDataModule(source=str(tmp_path / "docs.jsonl"), tokenizer="byte", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"docs.jsonl:2: malformed JSON"):
        dm.setup()


def test_a_checkpoint_lends_its_tokenizer_to_a_second_model(tiny_pretrain: Path, tmp_path: Path) -> None:
    """`tokenizer: <.ckpt>` (a reward model's own pretraining must read the policy's tokens)."""
    ckpt = str(tiny_pretrain / "checkpoints" / "last.ckpt")
    dm = TextDataModule(tokenizer=ckpt, num_docs=30, block_size=16, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.tokenizer.to_json() == load_backbone(ckpt).tokenizer.to_json()
    bpe = TextDataModule(num_docs=30, block_size=16, cache_dir=str(tmp_path / "cache"))
    assert bpe._cache_folder() != dm._cache_folder()
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match=f"data.tokenizer: {foreign} is not a lit_llm checkpoint"):
        TextDataModule(tokenizer=str(foreign), num_docs=30, cache_dir=str(tmp_path / "cache")).prepare_data()
