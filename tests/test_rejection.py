"""Rejection sampling: best/worst selection and statistics, the written files load in the SFT and preference
data modules, reward-model scoring, and the command end to end with its MLflow run."""

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import read_checkpoint
from lit_llm.commands import main
from lit_llm.data.preference import PreferenceDataModule
from lit_llm.data.sft import SFTDataModule
from lit_llm.world import ppo_prompts, write_jsonl
from lit_llm.generation import left_pad
from lit_llm.rejection import edited_pairs, sample_and_score, select
from lit_llm.rollout import RewardSource, load_reward_model, reward_source
from lit_llm.tokenizer import Tokenizer


def records() -> list[dict]:
    return ppo_prompts(3, seed=0)


def test_select_keeps_best_for_sft_and_best_vs_worst_pairs_skipping_ties() -> None:
    recs = records()
    texts = [[f"The answer is {recs[0]['answer']}.", "wrong", "also wrong"],
             ["a", "b", "c"],  # all tied: no pair
             ["", "x", "y"]]  # best is blank: no SFT record
    scores = torch.tensor([[0.9, -1.0, 0.1], [0.5, 0.5, 0.5], [2.0, 1.0, 0.0]])
    sft, pairs, stats = select(recs, texts, scores, 3)
    assert [p["chosen"] for p in pairs] == [texts[0][0], ""] and [p["rejected"] for p in pairs] == ["wrong", "y"]
    assert len(sft) == 2 and sft[0]["output"] == texts[0][0] and sft[0]["reward"] == pytest.approx(0.9)
    assert sft[0]["instruction"] + ("\n" + sft[0]["input"] if sft[0]["input"] else "") == recs[0]["prompt"]
    assert stats.num_pairs == 2 and stats.usable_pair_share == pytest.approx(2 / 3) and stats.blank_best == 1
    assert stats.mean_best_reward == pytest.approx((0.9 + 0.5 + 2.0) / 3)
    assert stats.mean_worst_reward == pytest.approx((-1.0 + 0.5 + 0.0) / 3)
    assert stats.kept_gold_accuracy == pytest.approx(1 / 3) and stats.sample_gold_accuracy == pytest.approx(1 / 9)
    sft, pairs_again, stats = select(recs, texts, scores, 3, min_reward=0.8)
    assert [r["output"] for r in sft] == [texts[0][0]] and stats.below_min_reward == 1 and pairs_again == pairs


def test_written_files_load_in_the_sft_and_preference_data_modules(tmp_path: Path) -> None:
    recs = ppo_prompts(10, seed=1)
    texts = [[f"The answer is {r['answer']}.", "The answer is 0."] for r in recs]
    sft, pairs, _ = select(recs, texts, torch.tensor([[1.0, 0.0]] * 10), 2)
    write_jsonl(sft, tmp_path / "sft.jsonl")
    write_jsonl(pairs, tmp_path / "pairs.jsonl")
    tok = Tokenizer.byte_level()
    sft_dm = SFTDataModule(source=str(tmp_path / "sft.jsonl"), val_fraction=0.2, packing=False)
    pref_dm = PreferenceDataModule(source=str(tmp_path / "pairs.jsonl"), val_fraction=0.2)
    for dm in (sft_dm, pref_dm):
        dm.tokenizer = tok
        dm.setup("fit")
    assert len(sft_dm.datasets["train"]) + len(sft_dm.datasets["val"]) == 10
    assert pref_dm.stats["train"].pairs + pref_dm.stats["val"].pairs == 10


def test_edited_pairs_put_the_gold_answer_into_each_distinct_wrong_sample() -> None:
    recs = records()
    gold = [r["answer"] for r in recs]
    texts = [[f"The answer is {gold[0]}.", "The answer is 999.", "The answer is 999."],  # one distinct wrong
             ["999", "The answer is 998.", gold[1]],
             ["", "It is 999", "It is 999"]]
    pairs = edited_pairs(recs, texts, seed=0)
    assert [(p["chosen"], p["rejected"]) for p in pairs[:3]] == [
        (f"The answer is {gold[0]}.", "The answer is 999."), (gold[1], "999"),
        (f"The answer is {gold[1]}.", "The answer is 998.")]
    # no answer sentence to edit: the gold answer in one of the task world's formats
    assert [p["rejected"] for p in pairs[3:]] == ["", "It is 999"]
    assert all(p["chosen"] in (gold[2], f"The answer is {gold[2]}.") for p in pairs[3:])
    assert all(p["key"] == r["key"] for p, r in zip(pairs, [recs[0], recs[1], recs[1], recs[2], recs[2]]))


def fake_reward_checkpoint(pretrain_ckpt: str, path: Path) -> str:
    """A reward-stage checkpoint made from the pretraining one with a random head."""
    checkpoint = read_checkpoint(pretrain_ckpt)
    d_model = checkpoint["lit_llm"]["model_config"]["d_model"]
    torch.manual_seed(0)
    checkpoint["state_dict"].update({"head.weight": torch.randn(1, d_model), "head.bias": torch.zeros(1),
                                     "reward_mean": torch.tensor(1.0), "reward_std": torch.tensor(2.0)})
    checkpoint["lit_llm"]["stage"] = "reward"
    checkpoint["lit_llm"]["reward_stats"] = {"mean": 1.0, "std": 2.0}
    torch.save(checkpoint, path)
    return str(path)


def test_reward_model_scores_each_padded_sample_like_the_sequence_alone(tiny_pretrain: Path,
                                                                        tmp_path: Path) -> None:
    ckpt = str(tiny_pretrain / "checkpoints" / "last.ckpt")
    reward_path = fake_reward_checkpoint(ckpt, tmp_path / "reward.ckpt")
    head, tok, _, _ = load_reward_model(reward_path)
    source = reward_source(reward_path, tok)
    captured = []

    class Capture(RewardSource):  # the reward model's scores, keeping the generations to re-score them alone
        def score(self, recs, texts, generation):
            captured.append(generation)
            return source.score(recs, texts, generation)

        def normalize(self, raw):
            return source.normalize(raw)

    _, scores = sample_and_score(head.backbone, tok, ppo_prompts(3, seed=0), 2, Capture("capture"),
                                 max_new_tokens=5, temperature=1.0, batch_size=6, seed=0)
    gen = captured[0]
    for row in range(6):
        seq = gen.tokens[row][gen.attention_mask[row].bool()].tolist()  # prompt + response, no padding
        ids, mask = left_pad([seq], tok.pad_id)
        alone = (head.score(ids, mask) - 1.0) / 2.0
        assert scores.view(-1)[row].item() == pytest.approx(alone.item(), abs=1e-4)


def test_command_writes_data_stats_and_an_mlflow_run_parented_to_the_policy(tiny_pretrain: Path, tmp_path: Path,
                                                                            mlflow_db: str) -> None:
    with pytest.raises(SystemExit) as help_exit:
        main(["rejection-sample", "--help"])
    assert help_exit.value.code == 0
    policy = str(tiny_pretrain / "checkpoints" / "last.ckpt")
    out = tmp_path / "samples"
    main(["rejection-sample", "--policy", policy, "--reward", "gold", "--prompts", "4", "--n", "2", "--out",
          str(out), "--max_new_tokens", "4", "--experiment_name", "tests", "--edited_pairs=true"])
    stats = json.loads((out / "stats.json").read_text())
    edited = (out / "edited_pairs.jsonl").read_text().splitlines()
    assert len(edited) == stats["num_edited_pairs"] > 0  # the micro policy gets most answers wrong
    assert stats["prompts"] == 4 and stats["samples_per_prompt"] == 2 and 0 <= stats["usable_pair_share"] <= 1
    assert (out / "sft.jsonl").exists() and (out / "pairs.jsonl").exists()
    run = MlflowClient(mlflow_db).get_run(stats["mlflow_run_id"])
    assert run.data.tags["lit_llm.stage"] == "rejection_sampling"
    assert run.data.tags["lit_llm.parent_run_id"] == read_checkpoint(policy)["lit_llm"]["mlflow_run_id"]
    assert run.data.metrics["rejection/usable_pair_share"] == pytest.approx(stats["usable_pair_share"])


def test_whole_groups_per_batch_share_the_prompt_pass_with_the_same_samples(tiny_pretrain: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With batch_size a multiple of n, each prompt's pass runs once for its n samples (`sample(repeats=n)`): the
    same texts and scores as sampling the n-times repeated prompts row by row."""
    from lit_llm import rejection
    from lit_llm.checkpoint import load_backbone

    loaded = load_backbone(tiny_pretrain / "checkpoints" / "last.ckpt")
    source, prompts = reward_source("gold", loaded.tokenizer), ppo_prompts(8, seed=0)
    calls = []

    def spy(*args, repeats=1, **kwargs):
        calls.append(repeats)
        return real(*args, repeats=repeats, **kwargs)

    def repeated_rows(model, tok, ids, mask, *args, repeats=1, **kwargs):
        return real(model, tok, ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0), *args, **kwargs)

    real = rejection.sample
    outputs = []
    for replacement in (spy, repeated_rows):
        monkeypatch.setattr(rejection, "sample", replacement)
        outputs.append(sample_and_score(loaded.model, loaded.tokenizer, prompts, 4, source, max_new_tokens=8,
                                        temperature=1.0, batch_size=16, seed=0))
    assert calls == [4, 4]
    assert outputs[0][0] == outputs[1][0] and torch.equal(outputs[0][1], outputs[1][1])
