"""Reward model: losses, preference formats and batches, last-token rewards, metrics, and the stage end to end."""

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import checkpoint_meta, load_backbone
from lit_llm.commands import main
from lit_llm.data.preference import PreferenceDataModule, comparison, split_shared_text
from lit_llm.data.preference_batch import (Comparison, PreferenceCollator, PreferenceStats, encode_comparison,
                                          encode_response)
from lit_llm.data.records import RecordError, RecordReader
from lit_llm.losses import IGNORE_INDEX, reward_centering_loss, reward_pair_loss, reward_regression_loss
from lit_llm.model import ModelConfig, Transformer
from lit_llm.rollout import load_reward_model
from lit_llm.stages.reward import RewardModule
from lit_llm.tokenizer import Tokenizer
from tests.conftest import REPO

REWARD_TINY = str(REPO / "configs" / "reward" / "tiny.yaml")


def read(reader: RecordReader, record: dict, index: int):
    """The comparison of record `index` of a source named as the reader's."""
    return comparison(reader, record, f"{reader.source}, record {index}")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def sft_like_ckpt(tmp_path_factory: pytest.TempPathFactory, tok: Tokenizer) -> Path:
    """A minimal checkpoint of another stage (micro backbone + byte tokenizer), without a Trainer."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32))
    path = tmp_path_factory.mktemp("sft") / "sft.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "lit_llm": checkpoint_meta("sft", model.config, tok, "parent-run")}, path)
    return path


def pref_batch(tok: Tokenizer, comparisons_records: list[tuple[str, dict]]) -> dict[str, torch.Tensor]:
    stats = PreferenceStats()
    items = [encode_comparison(tok, read(RecordReader(fmt, {}, "test"), r, i), 256, "truncate", stats)
             for i, (fmt, r) in enumerate(comparisons_records)]
    return PreferenceCollator(tok.pad_id)(items)


# --------------------------------------------------------------------------------------------------- losses
def test_pair_loss_centering_and_regression_match_hand_computation() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, -1.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = [-math.log(sig(1.0)), -math.log(sig(-2.0)), -math.log(sig(4.0))]
    torch.testing.assert_close(reward_pair_loss(chosen, rejected), torch.tensor(want))
    margin = torch.tensor([0.5, -1.0, 0.0])
    want_m = [-math.log(sig(0.5)), -math.log(sig(-1.0)), -math.log(sig(4.0))]
    torch.testing.assert_close(reward_pair_loss(chosen, rejected, margin), torch.tensor(want_m))
    torch.testing.assert_close(reward_centering_loss(chosen, rejected), torch.tensor([1.0, 4.0, 4.0]))
    torch.testing.assert_close(reward_regression_loss(chosen, torch.tensor([0.0, 0.0, 1.0])),
                               torch.tensor([1.0, 0.0, 4.0]))
    big = reward_pair_loss(torch.tensor([-100.0]), torch.tensor([100.0]))  # stable far in the tail
    assert torch.isfinite(big).all() and big.item() == pytest.approx(200.0)


# ------------------------------------------------------------------------------------------ formats, batch
def test_ranked_list_expands_to_all_pairs_weighted_so_each_prompt_counts_once(tok: Tokenizer,
                                                                             sft_like_ckpt: Path) -> None:
    ranked = {"prompt": "Q1", "responses": ["a", "bb", "ccc", "dddd"]}
    pair = {"prompt": "Q2", "chosen": "x", "rejected": "y", "margin": 0.5}
    batch = pref_batch(tok, [("ranked", ranked), ("pairs", pair)])
    assert batch["input_ids"].shape[0] == 6  # 4 + 2 unique sequences, each rendered once
    assert batch["chosen_index"].tolist() == [0, 0, 0, 1, 1, 2, 4]
    assert batch["rejected_index"].tolist() == [1, 2, 3, 2, 3, 3, 5]
    torch.testing.assert_close(batch["weight"], torch.tensor([1 / 6] * 6 + [1.0]))
    assert batch["margin"].tolist() == [0.0] * 6 + [0.5]
    assert batch["prompt_index"].tolist() == [0] * 6 + [1] and int(batch["num_prompts"]) == 2
    assert batch["sequence_prompt_index"].tolist() == [0, 0, 0, 0, 1, 1]
    # the loss is the mean over prompts of each prompt's mean pair loss
    module = RewardModule(init_from=str(sft_like_ckpt))
    rewards = torch.tensor([3.0, 1.0, 0.5, -2.0, 0.2, 0.1])
    module.forward = lambda ids, mask: rewards
    per_pair = reward_pair_loss(rewards[batch["chosen_index"]], rewards[batch["rejected_index"]], batch["margin"])
    want = (per_pair[:6].mean() + per_pair[6]) / 2
    torch.testing.assert_close(module.compute(batch)["loss"], want)
    module.center_coef = 0.1
    centre = reward_centering_loss(rewards[batch["chosen_index"]], rewards[batch["rejected_index"]])
    want_c = ((per_pair + 0.1 * centre)[:6].mean() + (per_pair + 0.1 * centre)[6]) / 2
    torch.testing.assert_close(module.compute(batch)["loss"], want_c)


def test_labels_are_shifted_response_tokens_and_sequences_end_at_end_of_turn(tok: Tokenizer) -> None:
    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "earlier"},
              {"role": "user", "content": "2+2?"}]
    seq = encode_response(tok, prompt, [{"role": "assistant", "content": "4"}])
    assert seq.input_ids[-1] == tok.end_of_turn_id
    targets = [t for t in seq.labels if t != IGNORE_INDEX]
    assert tok.decode(targets, skip_special=False) == "4<|end|>"  # not the earlier assistant turn
    for t, label in enumerate(seq.labels):
        assert label == IGNORE_INDEX or label == seq.input_ids[t + 1]
    assert tok.decode(seq.input_ids[: seq.response_start], skip_special=False).endswith("<|assistant|>\n")


HH_CHOSEN = ("\n\nHuman: What is 2 plus 3?\n\nAssistant: Let me think.\n\nHuman: Well?"
             "\n\nAssistant: It is 5.")
HH_REJECTED = ("\n\nHuman: What is 2 plus 3?\n\nAssistant: Let me think.\n\nHuman: Well?"
               "\n\nAssistant: It is 6, I think.")
MULTI_TURN_PROMPT = [{"role": "user", "content": "What is 2 plus 3?"},
                     {"role": "assistant", "content": "Let me think."}, {"role": "user", "content": "Well?"}]


def test_a_comparison_renders_its_prompt_once_with_the_sequences_of_each_response_alone(
        tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    responses = [[{"role": "assistant", "content": text}] for text in ("4", "five", "It is 4.")]
    responses.append([{"role": "assistant", "content": "4"}, {"role": "user", "content": "sure?"},
                      {"role": "assistant", "content": "yes"}])
    item = Comparison(MULTI_TURN_PROMPT, responses, pairs=[(0, 1)], margins=[0.0], weights=[1.0])
    calls = []
    render = tok.render_chat
    monkeypatch.setattr(tok, "render_chat", lambda messages, *args: calls.append(messages) or render(messages, *args))
    encoded = encode_comparison(tok, item, 256, "truncate", PreferenceStats())
    assert calls.count(MULTI_TURN_PROMPT) == 1 and len(calls) == 1 + len(responses)
    monkeypatch.undo()
    assert encoded.sequences == [encode_response(tok, MULTI_TURN_PROMPT, response) for response in responses]


def test_implicit_prompt_splits_at_the_last_shared_assistant_turn() -> None:
    prompt, chosen, rejected = split_shared_text(HH_CHOSEN, HH_REJECTED)  # shared prefix ends inside "It is "
    assert prompt == MULTI_TURN_PROMPT
    assert split_shared_text(HH_CHOSEN.lstrip(), HH_REJECTED.lstrip())[0] == MULTI_TURN_PROMPT
    assert chosen == [{"role": "assistant", "content": "It is 5."}]
    assert rejected == [{"role": "assistant", "content": "It is 6, I think."}]
    # responses that continue with more turns keep them; differing first answers split at the first turn
    _, c, r = split_shared_text("\n\nHuman: hi\n\nAssistant: a\n\nHuman: b\n\nAssistant: c",
                                "\n\nHuman: hi\n\nAssistant: x")
    assert [m["role"] for m in c] == ["assistant", "user", "assistant"] and r[0]["content"] == "x"
    with pytest.raises(RecordError, match="no 'Assistant:' turn"):
        split_shared_text("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: b")


def test_openai_message_lists_explicit_and_implicit_give_the_same_comparison(tok: Tokenizer) -> None:
    chosen = MULTI_TURN_PROMPT + [{"role": "assistant", "content": "It is 5."}]
    rejected = MULTI_TURN_PROMPT + [{"role": "assistant", "content": "It is 6, I think."}]
    text = read(RecordReader("implicit", {}, "t"), {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, 0)
    implicit = read(RecordReader("implicit", {}, "t"), {"chosen": chosen, "rejected": rejected}, 0)
    explicit = read(RecordReader("pairs", {}, "t"), {"prompt": MULTI_TURN_PROMPT, "chosen": chosen[-1:],
                                                    "rejected": rejected[-1:]}, 0)
    repeated = read(RecordReader("pairs", {}, "t"), {"prompt": MULTI_TURN_PROMPT, "chosen": chosen,
                                                    "rejected": rejected}, 0)  # prompt repeated in the lists
    remapped = read(RecordReader("pairs", {"prompt": "q", "chosen": "good", "rejected": "bad", "role": "from",
                                      "content": "value"}, "t"), 
        {"q": [{"from": m["role"], "value": m["content"]} for m in MULTI_TURN_PROMPT],
         "good": "It is 5.", "bad": "It is 6, I think."}, 0)
    for c in (implicit, explicit, repeated, remapped):
        assert (c.prompt, c.responses, c.pairs) == (text.prompt, text.responses, [(0, 1)])
    with pytest.raises(RecordError, match="record 3, response 0, turn 0"):
        read(RecordReader("pairs", {}, "t"), {"prompt": "q", "chosen": [{"role": "bot", "content": "x"}],
                                             "rejected": "y"}, 3)


def test_data_module_reads_files_detects_formats_and_scores(tok: Tokenizer, tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "response": "yes" if i % 2 else "no", "score": float(i % 2)} for i in range(10)]
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PreferenceDataModule(source=str(path), val_fraction=0.2, batch_size=4)
    dm.tokenizer = tok
    dm.setup("fit")
    assert dm.stats["train"].prompts == 8 and dm.stats["val"].prompts == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["score"].shape == (4,) and batch["chosen_index"].numel() == 0
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}) + "\n")
    dm = PreferenceDataModule(source=str(hh), val_source=str(hh))
    dm.tokenizer = tok
    dm.setup("fit")
    assert dm.stats["train"].pairs == 1 and dm.datasets["train"][0].comparison.prompt == MULTI_TURN_PROMPT


def test_regression_loss_on_scored_batches(tok: Tokenizer, sft_like_ckpt: Path) -> None:
    batch = pref_batch(tok, [("scored", {"prompt": "q", "response": "a", "score": 1.0}),
                             ("scored", {"prompt": "r", "response": "", "score": -1.0})])
    module = RewardModule(init_from=str(sft_like_ckpt))
    module.forward = lambda ids, mask: torch.tensor([0.5, 0.0])
    out = module.compute(batch)
    torch.testing.assert_close(out["loss"], torch.tensor((0.25 + 1.0) / 2))


def test_truncation_cuts_the_prompt_and_counts_what_it_drops(tok: Tokenizer) -> None:
    records = [{"prompt": "x" * 100, "chosen": "a", "rejected": "b"},
               {"prompt": "q", "chosen": "y" * 100, "rejected": "b"}]
    stats = PreferenceStats()
    items = [encode_comparison(tok, read(RecordReader("pairs", {}, "t"), r, i), 40, "truncate", stats)
             for i, r in enumerate(records)]
    assert items[1] is None and stats.dropped_too_long == 1 and stats.truncated == 2
    kept = items[0].sequences[0]
    assert len(kept) == 40 and kept.input_ids[0] == tok.bos_id
    assert tok.decode([t for t in kept.labels if t != IGNORE_INDEX], skip_special=False) == "a<|end|>"
    dropped = PreferenceStats()
    assert encode_comparison(tok, read(RecordReader("pairs", {}, "t"), records[0], 0), 40, "drop", dropped) is None
    assert dropped.dropped_too_long == 1


# ----------------------------------------------------------------------------------- rewards and metrics
def test_reward_is_read_at_the_last_real_token_under_left_and_right_padding(tok: Tokenizer,
                                                                          sft_like_ckpt: Path) -> None:
    module = RewardModule(init_from=str(sft_like_ckpt)).eval()
    torch.nn.init.normal_(module.head.weight)
    ids = torch.tensor(tok.encode("The answer is 5.", bos=True))
    n, pad = len(ids), 3
    right = torch.cat([ids, torch.full((pad,), tok.pad_id)]).unsqueeze(0)
    left = torch.cat([torch.full((pad,), tok.pad_id), ids]).unsqueeze(0)
    right_mask = torch.tensor([[1] * n + [0] * pad])
    left_mask = torch.tensor([[0] * pad + [1] * n])
    alone = module(ids.unsqueeze(0), torch.ones(1, n, dtype=torch.long))
    torch.testing.assert_close(module(right, right_mask), alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(module(left, left_mask), alone, atol=1e-5, rtol=1e-5)
    per_token = module.scalar_head()(ids.unsqueeze(0))  # (1, T): the last token's value is the reward
    torch.testing.assert_close(per_token[:, -1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(module.scalar_head().score(right, right_mask), alone, atol=1e-5, rtol=1e-5)


def test_pair_accuracy_and_reward_metrics_of_known_rewards(tok: Tokenizer, sft_like_ckpt: Path) -> None:
    ranked = {"prompt": "Q1", "responses": ["a", "b", "c"]}
    batch = pref_batch(tok, [("ranked", ranked), ("pairs", {"prompt": "Q2", "chosen": "x", "rejected": "y"})])
    module = RewardModule(init_from=str(sft_like_ckpt))
    # ranked list: (0,1) won, (0,2) won, (1,2) a tie -> 2.5/3 for the prompt; the pair is lost -> 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    module.forward = lambda ids, mask: rewards
    module.validation_step(batch, 0)
    metrics = {k: float(m.compute()) for k, m in module.val_metrics.items() if k != "mse"}
    assert metrics["pair_accuracy"] == pytest.approx((2.5 / 3 + 0.0) / 2)  # each prompt counts once
    assert metrics["reward_chosen"] == pytest.approx(((1 + 1 + 0) / 3 + 0.0) / 2)
    assert metrics["reward_rejected"] == pytest.approx(((0 + 0 + 0) / 3 + 1.0) / 2)
    assert metrics["reward_margin"] == pytest.approx(metrics["reward_chosen"] - metrics["reward_rejected"])
    assert module.samples[0]["prompt"].endswith("Q1") and module.samples[0]["chosen"] == "a"


def test_load_reward_model_refuses_other_stages(sft_like_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="written by the 'sft' stage, not by the reward stage"):
        load_reward_model(sft_like_ckpt)


# ------------------------------------------------------------------------------------------- end to end
def test_reward_stage_end_to_end_from_the_pretrain_checkpoint(tiny_pretrain: Path, tmp_path: Path,
                                                              mlflow_db: str) -> None:
    init = tiny_pretrain / "checkpoints" / "last.ckpt"
    main(["fit", "--config", REWARD_TINY, f"--model.init_args.init_from={init}",
          "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=2",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", "--trainer.logger.init_args.experiment_name=tests",
          "--model.init_args.stats_prompts=8", "--data.init_args.num_pairs=24", "--data.init_args.num_ranked=8",
          "--data.init_args.num_val_pairs=8", "--data.init_args.num_val_ranked=4", "--data.init_args.batch_size=4"])
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    meta = checkpoint["lit_llm"]
    assert meta["stage"] == "reward" and checkpoint["global_step"] == 4
    stats = meta["reward_stats"]
    assert stats["num_sequences"] > 8 and stats["std"] > 0
    assert checkpoint["state_dict"]["reward_mean"].item() == pytest.approx(stats["mean"])
    scorer, tokenizer, mean, std = load_reward_model(path)
    assert (mean, std) == pytest.approx((stats["mean"], stats["std"]))
    assert load_backbone(path).model.config.n_layer == 2  # the backbone still loads like any checkpoint
    # a later stage (or a second reward run) starting from this checkpoint gets the trained head
    again = RewardModule(init_from=str(path))
    torch.testing.assert_close(again.head.weight, scorer.head.weight)
    assert again.reward_mean.item() == pytest.approx(mean)
    run = MlflowClient(mlflow_db).get_run(meta["mlflow_run_id"])
    parent = torch.load(init, weights_only=True)["lit_llm"]["mlflow_run_id"]
    assert run.data.tags["lit_llm.stage"] == "reward" and run.data.tags["lit_llm.parent_run_id"] == parent
    for name in ("val/pair_accuracy", "val/reward_chosen", "val/reward_margin", "train/loss",
                 "train/pair_accuracy", "reward_stats/mean"):
        assert name in run.data.metrics, name
    assert run.data.params["data_stats.train.pairs"] == str(24 + 8 * 6)
