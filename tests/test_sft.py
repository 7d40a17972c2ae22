"""SFT: label masks, data formats, truncation accounting, packing equivalence, and the tiny chain end to end."""

import json
import re
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.commands import main
from lit_llm.data.records import RecordError, RecordReader
from lit_llm.data.sft import (SFTCollator, SFTDataModule, SFTRows, SFTStats, apply_length_policy, conversation,
                              encode_example, pack_examples)
from lit_llm.world import alpaca_prompt, sft_records
from lit_llm.losses import IGNORE_INDEX, token_logprobs
from lit_llm.model import ModelConfig, Transformer
from lit_llm.tokenizer import Tokenizer
from tests.conftest import REPO

SFT_TINY = str(REPO / "configs" / "sft" / "tiny.yaml")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.byte_level()


def targets_text(tok: Tokenizer, labels: list[int]) -> str:
    return tok.decode([t for t in labels if t != IGNORE_INDEX], skip_special=False)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def data_module(tok: Tokenizer, **kwargs) -> SFTDataModule:
    dm = SFTDataModule(**kwargs)
    dm.tokenizer = tok
    dm.setup("fit")
    return dm


# ------------------------------------------------------------------------------------------------ label masks
def test_prompt_tokens_are_ignored_and_assistant_tokens_are_shifted_targets(tok: Tokenizer) -> None:
    messages = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"}]
    ex = encode_example(tok, messages)
    ids, mask = tok.render_chat(messages)
    assert ex.input_ids == ids[:-1] and len(ex.labels) == len(ids) - 1
    for t, label in enumerate(ex.labels):  # labels[t] = ids[t+1] exactly where ids[t+1] is an assistant token
        assert label == (ids[t + 1] if mask[t + 1] else IGNORE_INDEX)
    assert targets_text(tok, ex.labels) == "5<|end|>"
    first = ex.labels.index(ids[mask.index(True)])
    assert tok.decode(ex.input_ids[: first + 1], skip_special=False).endswith("<|assistant|>\n")


def test_every_assistant_turn_of_a_conversation_is_a_target(tok: Tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    ex = encode_example(tok, messages)
    assert targets_text(tok, ex.labels) == "hello<|end|>4<|end|>"
    everything = encode_example(tok, messages, train_on_prompt=True)
    assert everything.labels == tok.render_chat(messages)[0][1:]


# ---------------------------------------------------------------------------------------------------- formats
def test_each_format_becomes_the_same_conversation() -> None:
    want = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    cases = [
        ("alpaca", {"instruction": "Q", "input": "", "output": "A", "system": "S"}, {}),
        ("prompt_completion", {"prompt": "Q", "completion": "A"}, {}),
        ("messages", {"messages": want}, {}),
        ("sharegpt", {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                        {"from": "gpt", "value": "A"}]}, {}),
        ("alpaca", {"question": "Q", "text": "A"}, {"instruction": "question", "output": "text"}),  # remapped
        ("messages", {"chat": [{"speaker": "user", "text": "Q"}, {"speaker": "assistant", "text": "A"}]},
         {"messages": "chat", "role": "speaker", "content": "text"}),
    ]
    for fmt, record, fields in cases:
        got = conversation(RecordReader(fmt, fields, "mem", system_prompt="S"), record, "mem, record 0")
        assert got == want, (fmt, fields)
    alpaca = conversation(RecordReader("alpaca", {}, "mem"), {"instruction": "Reverse", "input": "dog", "output": "god"},
                          "mem, record 0")
    assert alpaca[0]["content"] == alpaca_prompt("Reverse", "dog")


def test_files_in_every_format_load_through_the_data_module(tok: Tokenizer, tmp_path: Path) -> None:
    rows = {
        "alpaca": [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(10)],
        "messages": [{"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}"},
                                   {"role": "user", "content": "again"}, {"role": "assistant", "content": f"{i}"}]}
                     for i in range(10)],
        "sharegpt": [{"conversations": [{"from": "human", "value": f"Say {i}"}, {"from": "gpt", "value": f"{i}"}]}
                     for i in range(10)],
        "prompt_completion": [{"prompt": f"Say {i}", "completion": f"{i}"} for i in range(10)],
    }
    for fmt, records in rows.items():
        dm = data_module(tok, source=write_jsonl(tmp_path / f"{fmt}.jsonl", records), val_fraction=0.2)
        assert dm.stats["train"].examples == 8 and dm.stats["val"].examples == 2, fmt
        batch = next(iter(dm.train_dataloader()))
        assert {"input_ids", "labels", "attention_mask", "doc_ids"} <= set(batch)
        expect = r"(\d)<\|end\|>\1<\|end\|>" if fmt == "messages" else r"\d<\|end\|>"
        for ex in dm.datasets["train"].examples:
            assert re.fullmatch(expect, targets_text(tok, ex.labels)), fmt


def test_dolly_fields_are_remapped_and_default_source_is_the_task_world(tok: Tokenizer, tmp_path: Path) -> None:
    dolly = [{"instruction": f"When {i}?", "text": f"At {i}.", "decoded": "junk", "id": i} for i in range(5)]
    dm = data_module(tok, source=write_jsonl(tmp_path / "dolly.jsonl", dolly), fields={"output": "text"},
                     val_source=write_jsonl(tmp_path / "dolly_val.jsonl", dolly[:2]))
    ex = dm.datasets["train"].examples[0]
    assert targets_text(tok, ex.labels).startswith("At ") and "junk" not in tok.decode(ex.input_ids)
    tasks = data_module(tok, num_records=20, num_val_records=5, packing=False)
    assert (tasks.stats["train"].examples, tasks.stats["val"].examples) == (20, 5)


def test_missing_and_empty_fields_raise_naming_field_and_record_or_are_skipped(tok: Tokenizer,
                                                                               tmp_path: Path) -> None:
    records = [{"instruction": "a", "output": "b"}] * 4 + [{"instruction": "a", "output": "  "}]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(RecordError, match=r"bad.jsonl:5: field 'output' is empty"):  # the file's line
        data_module(tok, source=path, val_fraction=0.2, format="alpaca")
    dm = data_module(tok, source=path, val_fraction=0.2, skip_invalid=True)
    assert dm.stats["train"].skipped_invalid + dm.stats["val"].skipped_invalid == 1
    with pytest.raises(KeyError, match="no field 'answer'"):
        data_module(tok, source=path, format="alpaca", fields={"output": "answer"})
    with pytest.raises(RecordError, match="turn 1: field 'from' is 'bot'"):
        conversation(RecordReader("sharegpt", {}, "mem"),
                     {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}, "mem, 3")


# ------------------------------------------------------------------------------------------------- truncation
def test_truncation_is_counted_and_examples_without_targets_are_dropped(tok: Tokenizer) -> None:
    short = encode_example(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}])
    long = encode_example(tok, [{"role": "user", "content": "q" * 40}, {"role": "assistant", "content": "a" * 20}])
    stats = SFTStats()
    cut = apply_length_policy(long, 50, "truncate", stats)
    assert len(cut) == 50 and cut.input_ids == long.input_ids[:50] and 0 < cut.num_targets < long.num_targets
    assert apply_length_policy(long, 30, "truncate", stats) is None  # the answer starts after position 30
    assert apply_length_policy(short, 50, "truncate", stats) is short
    assert (stats.truncated, stats.dropped_no_target, stats.dropped_too_long) == (2, 1, 0)
    assert apply_length_policy(long, 50, "drop", stats) is None and stats.dropped_too_long == 1


def test_data_module_counts_truncated_and_dropped_examples(tok: Tokenizer) -> None:
    dm = data_module(tok, num_records=40, num_val_records=5, max_length=45)
    lengths = [len(encode_example(tok, m)) for m in _task_conversations(40)]
    over = sum(n > 45 for n in lengths)
    assert over > 0
    stats = dm.stats["train"]
    assert stats.truncated == over and stats.examples == 40 - stats.dropped_no_target
    dropped = data_module(tok, num_records=40, num_val_records=5, max_length=45, truncation="drop")
    assert dropped.stats["train"].dropped_too_long == over and dropped.stats["train"].examples == 40 - over


def _task_conversations(n: int) -> list[list[dict]]:
    reader = RecordReader("alpaca", {}, "tasks")
    return [conversation(reader, r, f"tasks, record {i}") for i, r in enumerate(sft_records(n, "train"))]


# ---------------------------------------------------------------------------------------------------- packing
def test_packing_fills_rows_without_overflow_and_keeps_every_example() -> None:
    lengths = [30, 5, 17, 64, 1, 40, 22, 22, 9, 63]
    rows = pack_examples(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 5  # total 273 positions -> at least 5 rows of 64


def test_packed_loss_equals_unpacked_loss(tok: Tokenizer) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=128))
    with torch.no_grad():  # larger weights than the init: sharp attention, so leaking across examples shows
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    examples = [encode_example(tok, m) for m in _task_conversations(12)]
    rows = pack_examples([len(ex) for ex in examples], 128)
    assert len(rows) < len(examples)
    collate = SFTCollator(tok.pad_id)

    @torch.no_grad()
    def mean_target_nll(dataset: SFTRows, isolate: bool = True) -> float:
        """Sum of the target tokens' losses / number of target tokens over all rows in one batch."""
        batch = collate([dataset[i] for i in range(len(dataset))])
        doc_ids = batch.get("doc_ids") if isolate else None
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], doc_ids=doc_ids)
        logp = token_logprobs(logits, batch["labels"])
        return float(-logp.sum() / (batch["labels"] != IGNORE_INDEX).sum())

    packed, padded = mean_target_nll(SFTRows(examples, rows)), mean_target_nll(SFTRows(examples))
    assert packed == pytest.approx(padded, rel=1e-5)
    assert mean_target_nll(SFTRows(examples, rows), isolate=False) != pytest.approx(padded, rel=1e-3)
    first = SFTRows(examples, rows)[0]
    assert first["doc_ids"].unique().numel() == len(rows[0])


def test_collator_right_pads_with_ignored_labels_and_attention_mask() -> None:
    rows = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([6, 7, 8])},
            {"input_ids": torch.tensor([9]), "labels": torch.tensor([IGNORE_INDEX])}]
    batch = SFTCollator(pad_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, 8], [IGNORE_INDEX] * 3]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert "doc_ids" not in batch


# -------------------------------------------------------------------------------------------------- end to end
def sft_args(root: Path, init_from: Path, steps: int = 4) -> list[str]:
    return [
        "--config", SFT_TINY, f"--model.init_args.init_from={init_from}",
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}", "--trainer.log_every_n_steps=2",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.logger.init_args.experiment_name=tests",
        "--gold.examples=4", "--gold.max_new_tokens=4",
        "--data.init_args.num_records=48", "--data.init_args.num_val_records=8",
        "--data.init_args.max_length=64", "--data.init_args.batch_size=4",
    ]


def test_sft_chain_from_the_pretrain_checkpoint(tiny_pretrain: Path, tmp_path: Path, mlflow_db: str) -> None:
    main(["fit", *sft_args(tmp_path, tiny_pretrain / "checkpoints" / "last.ckpt")])
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["lit_llm"]["stage"] == "sft" and checkpoint["global_step"] == 4
    pretrain_run = torch.load(tiny_pretrain / "checkpoints" / "last.ckpt", weights_only=True)["lit_llm"]
    run = MlflowClient(mlflow_db).get_run(checkpoint["lit_llm"]["mlflow_run_id"])
    assert run.data.tags["lit_llm.stage"] == "sft"
    assert run.data.tags["lit_llm.parent_run_id"] == pretrain_run["mlflow_run_id"]
    for name in ("train/loss", "val/loss", "val/ppl", "val/gold_accuracy"):
        assert name in run.data.metrics, name
    assert run.data.metrics["val/ppl"] == pytest.approx(torch.tensor(run.data.metrics["val/loss"]).exp().item())
    assert run.data.params["data_stats.train.examples"] == "48"
