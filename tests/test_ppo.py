"""PPO stage: the invariants before the first update, reward placement at the stop token, the adaptive KL rule,
all-reduced whitening, the frozen models kept out of checkpoints, and micro runs through the CLI (reward model
and gold reward), resumed from a checkpoint."""

import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import load_backbone, read_checkpoint
from lit_llm.commands import main
from lit_llm.data.prompts import PromptDataModule, prompt_text, ptx_blocks
from lit_llm.data.records import RecordReader
from lit_llm.generation import Generation, generate
from lit_llm.losses import masked_whiten
from lit_llm.rollout import KLConfig, KLController, RewardShaping, RolloutConfig, Samples
from lit_llm.stages.ppo import PPO_STATE_KEY, PPOModule
from lit_llm.stages.ppo_parts import PPOLoss
from tests.conftest import REPO

PPO_TINY = str(REPO / "configs" / "ppo" / "tiny.yaml")
PPO_GOLD = str(REPO / "configs" / "ppo" / "tiny_gold.yaml")


def ckpt(run: Path) -> str:
    return str(run / "checkpoints" / "last.ckpt")


def attach(module: PPOModule) -> PPOModule:
    """Give a module outside `fit` the single-device trainer its methods read (strategy, world size)."""
    module.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    return module


def prompt_batch(module: PPOModule, n: int = 6) -> dict:
    dm = PromptDataModule(num_prompts=n, num_val_prompts=2, batch_size=n)
    dm.tokenizer = module.tokenizer
    dm.setup("fit")  # tokenizer set: no trainer needed
    return next(iter(dm.train_dataloader()))


def test_before_the_first_update_ratio_is_one_kl_zero_and_nothing_clipped(tiny_pretrain: Path,
                                                                           reward_ckpt: str) -> None:
    torch.manual_seed(0)
    module = attach(PPOModule(ckpt(tiny_pretrain), reward_ckpt, rollout=RolloutConfig(max_new_tokens=8)))
    batch = prompt_batch(module)
    rollout, texts = module.make_rollout(batch, {})
    assert len(texts) == 6
    assert torch.all(rollout.kl == 0) and torch.all(rollout.ref_logprobs == rollout.logprobs)
    _, stats = module.minibatch_loss(rollout, None)
    assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-5)
    assert stats["clip_fraction"].item() == 0.0
    assert stats["approx_kl"].item() < 1e-10


def test_rollout_logprobs_match_what_the_kv_cache_sampler_reported(tiny_pretrain: Path, reward_ckpt: str) -> None:
    module = attach(PPOModule(ckpt(tiny_pretrain), reward_ckpt, rollout=RolloutConfig(8, temperature=0.7)))
    batch = prompt_batch(module)
    gen = generate(module.model, batch["input_ids"], batch["attention_mask"], 8, temperature=0.7,
                   eos_id=module.answer_stop_ids(), pad_id=module.tokenizer.pad_id,
                   generator=torch.Generator().manual_seed(3))
    logprobs, _, _ = module.policy_and_values(gen.tokens, gen.attention_mask, gen.response)
    mask = gen.response_mask
    torch.testing.assert_close(logprobs[mask], gen.logprobs[mask], atol=1e-5, rtol=1e-5)


def right_padded_generation(module: PPOModule, batch: dict, lengths: list[int]) -> Generation:
    """Responses of the given lengths, each ending at the end-of-turn token, right-padded after it."""
    width, pad, stop = max(lengths), module.tokenizer.pad_id, module.tokenizer.end_of_turn_id
    response = torch.full((len(lengths), width), pad)
    response_mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, n in enumerate(lengths):
        response[b, : n - 1] = torch.randint(10, 40, (n - 1,))
        response[b, n - 1] = stop
        response_mask[b, :n] = True
    return Generation(torch.cat([batch["input_ids"], response], 1), response, torch.zeros(response.shape),
                      response_mask, torch.cat([batch["attention_mask"], response_mask.long()], 1))


def test_score_is_read_at_the_stop_token_and_padding_gets_no_reward(tiny_pretrain: Path, reward_ckpt: str) -> None:
    module = attach(PPOModule(ckpt(tiny_pretrain), reward_ckpt, kl=KLConfig(coef=0.0),
                              loss=PPOLoss(whiten_advantages=False, gamma=1.0, lam=1.0)))
    batch = prompt_batch(module, n=4)
    lengths = [3, 7, 1, 5]
    generation = right_padded_generation(module, batch, lengths)
    rollout = module.score_rollout(batch["records"], Samples(generation, [""] * len(lengths)))
    assert rollout.has_stop.all()
    scorer = module.reward_source.scorer
    for b, n in enumerate(lengths):
        nonzero = rollout.rewards[b].nonzero().flatten().tolist()
        assert nonzero in ([n - 1], [])  # only the stop token carries the score
        # the score equals the reward model on the unpadded prompt + response, read at its final token
        seq = rollout.tokens[b][rollout.attention_mask[b].bool()][None]
        expected = ((scorer.score(seq, torch.ones_like(seq)) - 0.25) / 2.0).item()
        assert rollout.rewards[b, n - 1].item() == pytest.approx(expected, abs=1e-5)
        assert rollout.scores[b].item() == pytest.approx(expected, abs=1e-5)
        assert torch.all(rollout.rewards[b, n:] == 0) and torch.all(rollout.advantages[b, n:] == 0)
        # with gamma = lambda = 1 and no KL, the return at every response token is the score
        torch.testing.assert_close(rollout.returns[b, :n], torch.full((n,), expected), atol=1e-5, rtol=0)


def test_missing_eos_penalty_and_clipping_shape_the_score(tiny_pretrain: Path, reward_ckpt: str) -> None:
    module = PPOModule(ckpt(tiny_pretrain), reward_ckpt, reward=RewardShaping(missing_eos_penalty=1.0, clip=0.5))
    raw = torch.tensor([0.25, 10.25, -9.75])
    scores = module.reward_source.shape(raw, torch.tensor([True, True, False]), module.shaping)
    assert scores.tolist() == pytest.approx([0.0, 0.5, -1.5])  # (r - 0.25) / 2, clipped to ±0.5, minus 1


def test_adaptive_kl_controller_follows_the_proportional_rule() -> None:
    fixed = KLController(0.1)
    fixed.update(kl=50.0, n_steps=64)
    assert fixed.value == 0.1
    ctl = KLController(0.1, target=6.0, horizon=10000)
    ctl.update(kl=9.0, n_steps=32)  # error 0.5 clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 32 / 10000))
    before = ctl.value
    ctl.update(kl=5.4, n_steps=32)  # error -0.1
    assert ctl.value == pytest.approx(before * (1 - 0.1 * 32 / 10000))


def test_whitening_uses_statistics_of_every_rank() -> None:
    torch.manual_seed(0)
    values, mask = torch.randn(8, 5), (torch.rand(8, 5) > 0.3).float()
    full = masked_whiten(values, mask)
    halves = [(values[:4], mask[:4]), (values[4:], mask[4:])]

    def sum_over_ranks(local: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "sum"
        return sum(torch.stack([(v * m).sum(), (v * v * m).sum(), m.sum()]).double() for v, m in halves)

    fake = SimpleNamespace(trainer=SimpleNamespace(strategy=SimpleNamespace(reduce=sum_over_ranks)))
    for rank, (v, m) in enumerate(halves):
        local = PPOModule.whiten(fake, v, m)
        torch.testing.assert_close(local, full[rank * 4 : rank * 4 + 4], atol=1e-5, rtol=1e-5)


def test_update_moves_the_policy_and_the_frozen_models_stay_out(tiny_pretrain: Path, reward_ckpt: str) -> None:
    module = PPOModule(ckpt(tiny_pretrain), reward_ckpt)
    keys = module.state_dict().keys()
    assert not any(k.startswith(("reference", "reward_model")) for k in keys)
    assert any(k.startswith("value.backbone.") for k in keys) and "value.head.weight" in keys
    # the separate value model starts from the reward model, head included
    torch.testing.assert_close(module.value.head.weight, read_checkpoint(reward_ckpt)["state_dict"]["head.weight"])
    assert all(not p.requires_grad for p in module.reference.parameters())
    assert all(not p.requires_grad for p in module.reward_source.model.parameters())
    shared = PPOModule(ckpt(tiny_pretrain), "gold", value_model="shared")
    assert sum(p.numel() for p in shared.parameters()) == shared.model.num_params() + shared.model.config.d_model + 1
    with pytest.raises(ValueError, match="temperature"):
        PPOModule(ckpt(tiny_pretrain), "gold", rollout=RolloutConfig(temperature=0.0))
    with pytest.raises(ValueError, match="not by the reward stage"):
        PPOModule(ckpt(tiny_pretrain), ckpt(tiny_pretrain))


def test_prompt_data_reads_files_drops_long_prompts_and_builds_ptx_blocks(tiny_pretrain: Path,
                                                                          tmp_path: Path) -> None:
    tokenizer = load_backbone(ckpt(tiny_pretrain)).tokenizer
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "What is 2 plus 3?", "answer": "5"}\n{"prompt": "' + "long " * 200 + '"}\n'
                    '{"instruction": "Add 1 and 1.", "input": ""}\n{"prompt": "Hi"}\n')
    dm = PromptDataModule(source=str(path), val_fraction=0.25, max_prompt_length=64, batch_size=2,
                          ptx_source="tasks", ptx_docs=20, ptx_length=16, ptx_batch_size=3)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    assert dm.stats["train"].dropped_too_long + dm.stats["val"].dropped_too_long == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and batch["ptx_input_ids"].shape == (3, 17)
    assert (batch["attention_mask"][:, -1] == 1).all()  # left-padded
    reader = RecordReader("prompt", {}, "file.jsonl")
    assert prompt_text(reader, {"instruction": "Add.", "input": "1, 2"}, "x").startswith("Add.")
    with pytest.raises(KeyError, match="available fields"):
        prompt_text(reader, {"question": "?"}, "file.jsonl, record 3")
    with pytest.raises(ValueError, match="record 0.*empty"):
        prompt_text(reader, {"prompt": " "}, "file.jsonl, record 0")
    assert ptx_blocks(tokenizer, ["a b c"] * 10, 4).shape[1] == 5


def micro_ppo_args(config: str, root: Path, init_from: str, reward_from: str, rollouts: int = 2) -> list[str]:
    """A PPO recipe shrunk to seconds: 8 prompts per rollout, 2 updates per rollout."""
    return ["--config", config, f"--trainer.max_steps={2 * rollouts}", "--trainer.val_check_interval=2",
            f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.logger.init_args.experiment_name=tests",
            f"--model.init_args.init_from={init_from}", f"--model.init_args.reward_from={reward_from}",
            "--model.init_args.rollout.max_new_tokens=6", "--model.init_args.update.ppo_epochs=1",
            "--model.init_args.update.mini_batch_size=4", "--gold.examples=4",
            "--gold.max_new_tokens=4", "--model.init_args.rollout_table_every=1",
            "--data.init_args.num_prompts=32", "--data.init_args.num_val_prompts=4",
            "--data.init_args.batch_size=8"]


def metrics_of(root: Path) -> dict[str, float]:
    meta = read_checkpoint(ckpt(root))["lit_llm"]
    return MlflowClient().get_run(meta["mlflow_run_id"]).data.metrics


def test_ppo_end_to_end_with_the_reward_model_and_resume(tiny_pretrain: Path, reward_ckpt: str,
                                                         tmp_path: Path) -> None:
    root = tmp_path / "ppo"
    args = micro_ppo_args(PPO_TINY, root, ckpt(tiny_pretrain), reward_ckpt)
    main(["fit", *args, "--model.init_args.kl.target=0.01", "--model.init_args.kl.horizon=100"])
    checkpoint = read_checkpoint(ckpt(root))
    assert checkpoint["lit_llm"]["stage"] == "ppo" and checkpoint["global_step"] == 4
    state = checkpoint[PPO_STATE_KEY]
    assert state["generator_states"].shape[0] == 1 and state["kl_coef"] != 0.05  # the controller moved β
    assert not any(k.startswith(("reference", "reward_model")) for k in checkpoint["state_dict"])
    metrics = metrics_of(root)
    for name in ("train/reward", "train/reward_normalized", "train/kl", "train/kl_coef", "train/entropy",
                 "train/clip_fraction", "train/approx_kl", "train/value_loss", "train/explained_variance",
                 "train/response_length", "train/eos_rate", "train/time_generate_s", "train/rollout_tokens_per_s",
                 "val/reward", "val/gold_accuracy"):
        assert name in metrics and math.isfinite(metrics[name]), name
    run_id = checkpoint["lit_llm"]["mlflow_run_id"]
    artifacts = [a.path for a in MlflowClient().list_artifacts(run_id, "rollouts")]
    assert artifacts, "rollout tables logged"
    # the policy loads as a backbone for generate/export, and the parent link points at the policy's run
    assert load_backbone(ckpt(root)).stage == "ppo"
    # resume: two more rollouts from the checkpoint, with β and the generator restored
    main(["fit", *micro_ppo_args(PPO_TINY, root, ckpt(tiny_pretrain), reward_ckpt, rollouts=4),
          "--model.init_args.kl.target=0.01", "--model.init_args.kl.horizon=100", f"--ckpt_path={ckpt(root)}"])
    assert read_checkpoint(ckpt(root))["global_step"] == 8


def test_ppo_gold_reward_with_a_shared_value_head_and_ptx(tiny_pretrain: Path, tmp_path: Path) -> None:
    root = tmp_path / "ppo-gold"
    main(["fit", *micro_ppo_args(PPO_GOLD, root, ckpt(tiny_pretrain), "gold"),
          "--model.init_args.value_model=shared", "--model.init_args.loss.ptx_coef=0.5",
          "--data.init_args.ptx_source=tasks", "--data.init_args.ptx_docs=20", "--data.init_args.ptx_length=32",
          "--data.init_args.ptx_batch_size=2"])
    metrics = metrics_of(root)
    assert 0.0 <= metrics["train/reward"] <= 1.0 and "train/ptx_loss" in metrics
    keys = read_checkpoint(ckpt(root))["state_dict"].keys()
    assert "value.weight" in keys and not any(k.startswith("value.backbone") for k in keys)


def test_value_warmup_trains_the_value_model_and_leaves_the_policy(tiny_pretrain: Path, reward_ckpt: str,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "ppo-warmup"
    main(["fit", *micro_ppo_args(PPO_TINY, root, ckpt(tiny_pretrain), reward_ckpt, rollouts=1),
          "--model.init_args.update.value_warmup_rollouts=1"])
    state = read_checkpoint(ckpt(root))["state_dict"]
    start = read_checkpoint(ckpt(tiny_pretrain))["state_dict"]
    reward = read_checkpoint(reward_ckpt)["state_dict"]
    policy = [k for k in state if k.startswith("model.")]
    assert policy and all(torch.equal(state[k], start[k]) for k in policy)
    assert not torch.equal(state["value.head.weight"], reward["head.weight"])
    # after the warm-up the policy moves
    main(["fit", *micro_ppo_args(PPO_TINY, root, ckpt(tiny_pretrain), reward_ckpt, rollouts=2),
          "--model.init_args.update.value_warmup_rollouts=1", f"--ckpt_path={ckpt(root)}"])
    state = read_checkpoint(ckpt(root))["state_dict"]
    assert not all(torch.equal(state[k], start[k]) for k in policy)
