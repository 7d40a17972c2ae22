"""GRPO: the advantage and loss rules against hand computation; before the first update the ratio is 1, the KL 0 and
the sampler's log-probs are the training forward's; groups with all-equal rewards give no gradient; dynamic
sampling; the monitors and warnings; a micro run end to end through the CLI."""

import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import read_checkpoint
from lit_llm.commands import main
from lit_llm.generation import Generation
from lit_llm.losses import aggregate_token_loss, group_advantages, overlong_penalty, ppo_policy_loss
from lit_llm.rollout import FormatReward, RewardSource, RolloutConfig, WeightedRewards, sequence_logprobs
from lit_llm.stages.grpo import GRPOModule
from lit_llm.stages.grpo_parts import GroupConfig, GRPOLoss, GRPOUpdate
from tests.test_ppo import attach, ckpt, prompt_batch

GRPO_TINY = str(Path(__file__).resolve().parents[1] / "configs" / "grpo" / "tiny.yaml")


# ---------------------------------------------------------------------------------------------- losses
def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    std = math.sqrt(1 / 3)  # sample std of [1, 0, 0, 1]
    grpo = group_advantages(rewards, "mean", scale_by_std=True, eps=0.0)
    assert grpo[0].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert group_advantages(rewards, "mean", scale_by_std=False)[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    # RLOO: r_i minus the mean of the other three
    assert group_advantages(rewards, "leave_one_out")[0].tolist() == pytest.approx(
        [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3])
    for baseline, scale in (("mean", True), ("mean", False), ("leave_one_out", False)):
        assert group_advantages(rewards, baseline, scale)[1].tolist() == [0.0] * 4  # all equal: no signal


def test_aggregations_clip_higher_and_overlong_penalty_by_hand() -> None:
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_token_loss(losses, mask, "sequence", 3).item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate_token_loss(losses, mask, "token", 3).item() == pytest.approx(10.0 / 4)
    assert aggregate_token_loss(losses, mask, "constant", 5).item() == pytest.approx(10.0 / (2 * 5))
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_token_loss(losses, mask, "mean", 3)
    ratio = torch.tensor([[1.25, 0.7]])  # log-probs of two tokens against an old policy at log 1 = 0
    logp, adv = ratio.log(), torch.tensor([[1.0, -1.0]])
    loss, clipped = ppo_policy_loss(logp, torch.zeros_like(logp), adv, 0.2, 0.28)
    assert loss.tolist()[0] == pytest.approx([-1.25, 0.8])  # 1.25 < 1 + 0.28: not clipped; 0.7 -> 0.8
    assert clipped.tolist() == [[False, True]]
    loss, clipped = ppo_policy_loss(logp, torch.zeros_like(logp), adv, 0.2)  # symmetric: 1.25 -> 1.2
    assert loss.tolist()[0] == pytest.approx([-1.2, 0.8]) and clipped.tolist() == [[True, True]]
    lengths = torch.tensor([10, 12, 14, 16])
    assert overlong_penalty(lengths, 16, 4).tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0])


# ---------------------------------------------------------------------------------------------- module
class ParityReward(RewardSource):
    """1 when the first response token is even: rewards that vary within groups even for an untrained model."""

    def score(self, records: list[dict], texts: list[str], generation: Generation) -> torch.Tensor:
        return (generation.response[:, 0] % 2 == 0).float()


def grpo_module(tiny_pretrain: Path, **kwargs) -> GRPOModule:
    torch.manual_seed(0)
    module = attach(GRPOModule(ckpt(tiny_pretrain), rollout=RolloutConfig(max_new_tokens=6),
                               group=GroupConfig(size=4), **kwargs))
    module.reward_source = ParityReward("parity")
    return module


def test_before_the_first_update_ratio_is_one_kl_zero_and_sampler_logprobs_match(tiny_pretrain: Path) -> None:
    module = grpo_module(tiny_pretrain)
    stats: dict[str, float] = {}
    rollout, samples, rewards = module.make_groups(prompt_batch(module, n=4), stats)
    assert rollout.tokens.shape[0] == 16 and len(samples.texts) == 16
    assert stats["logprob_mismatch"] < 1e-5  # the KV-cache sampler's log-probs are the training forward's
    assert torch.equal(rollout.ref_logprobs, rollout.logprobs)  # policy = reference
    _, minibatch = module.minibatch_loss(rollout)
    assert minibatch["ratio_error"].item() < 1e-5 and minibatch["kl"].item() == 0.0
    assert minibatch["clip_fraction_low"].item() == minibatch["clip_fraction_high"].item() == 0.0
    for key in ("reward", "accuracy", "zero_variance_share", "truncation_rate", "response_length",
                "response_length_drift", "groups_all_correct", "groups_all_wrong", "reward_group_std"):
        assert key in stats, key


def test_without_recompute_the_first_minibatch_checks_the_sampler_and_measures_the_kl(tiny_pretrain: Path) -> None:
    module = grpo_module(tiny_pretrain, update=GRPOUpdate(recompute_logprobs=False))
    stats: dict[str, float] = {}
    rollout, samples, _ = module.make_groups(prompt_batch(module, n=4), stats)
    assert torch.equal(rollout.logprobs, samples.generation.logprobs) and rollout.ref_logprobs is None
    assert "logprob_mismatch" not in stats  # measured by the update's first mini-batch instead
    first = rollout.select(torch.arange(8))
    _, without_reference = module.minibatch_loss(first)
    assert "kl" not in without_reference and without_reference["logprob_error"].item() < 1e-5
    first.ref_logprobs = module.reference_logprobs(first.tokens, first.attention_mask, first.response, first.group)
    _, minibatch = module.minibatch_loss(first)
    assert minibatch["kl"].item() == 0.0 and minibatch["ratio_error"].item() < 1e-5


def test_groups_with_all_equal_rewards_give_no_gradient(tiny_pretrain: Path) -> None:
    module = grpo_module(tiny_pretrain)
    rollout, _, rewards = module.make_groups(prompt_batch(module, n=4), {})
    equal = module.equal_groups(rewards)
    rows = torch.arange(16).view(4, 4)
    flat = rows[equal].flatten()
    if not len(flat):  # make one group all-equal by hand: its advantages are then 0
        flat = rows[0]
        rollout.advantages[flat] = group_advantages(torch.ones(1, 4), "mean").flatten()
    module.zero_grad()
    loss, _ = module.minibatch_loss(rollout.select(flat))
    loss.backward()
    grads = [p.grad for p in module.model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)


def test_positive_nll_imitates_the_correct_answers(tiny_pretrain: Path) -> None:
    module = grpo_module(tiny_pretrain, loss=GRPOLoss(positive_nll_coef=0.5))
    rollout, _, rewards = module.make_groups(prompt_batch(module, n=4), {})
    assert rollout.positive.any()
    assert torch.equal(rollout.positive, rollout.mask * (rewards == 1).float()[:, None])
    with_nll, _ = module.minibatch_loss(rollout)
    module.loss = GRPOLoss()
    without, _ = module.minibatch_loss(rollout)
    logprobs = sequence_logprobs(module.model, rollout.tokens, rollout.attention_mask, rollout.response, 1.0)[0]
    nll = -(logprobs * rollout.positive).sum() / rollout.positive.sum()  # token mean over the positive responses
    assert (with_nll - without).item() == pytest.approx(0.5 * nll.item(), rel=1e-5)


def test_drop_takes_equal_groups_out_of_the_loss_and_resample_redraws_them(tiny_pretrain: Path) -> None:
    module = grpo_module(tiny_pretrain)
    module.group = GroupConfig(size=4, dynamic_sampling="drop")
    rollout, _, rewards = module.make_groups(prompt_batch(module, n=4), {})
    kept = (~module.equal_groups(rewards)).repeat_interleave(4)
    assert torch.all(rollout.mask[~kept] == 0)
    module.group = GroupConfig(size=4, dynamic_sampling="resample", max_resample=3)
    module.reward_source = WeightedRewards([ParityReward("parity")], [1.0])
    stats: dict[str, float] = {}
    rollout, samples, rewards = module.make_groups(prompt_batch(module, n=4), stats)
    assert stats["zero_variance_share"] <= stats["zero_variance_share_sampled"]
    assert rollout.tokens.shape[0] == len(samples.texts) == rewards.numel() == 16
    regenerated = (rollout.response[:, 0] % 2 == 0).float()  # each row's reward is its own response's
    assert torch.equal(regenerated, rewards)


def test_format_reward_wants_one_closed_line() -> None:
    response = torch.tensor([[5, 9, 2], [5, 6, 7]])
    mask = torch.tensor([[True, True, True], [True, True, True]])
    generation = Generation(response, response, torch.zeros(2, 3), mask, mask.long())
    scores = FormatReward("format", stop_ids=[2]).score([{}, {}], ["The answer is 4.", "4"], generation)
    assert scores.tolist() == [1.0, 0.0]  # the second never stopped
    assert FormatReward("format", [2]).score([{}], ["a\nb"], Generation(*[t[:1] for t in (
        response, response, torch.zeros(2, 3), mask, mask.long())])).tolist() == [0.0]


def test_monitors_warn_when_nothing_can_be_learned(tiny_pretrain: Path, tmp_path: Path) -> None:
    root = tmp_path / "grpo"
    main(["fit", *micro_grpo_args(root, ckpt(tiny_pretrain)), "--model.init_args.reward_from=[gold, format]",
          "--model.init_args.reward_weights=[1.0, 0.5]", "--model.init_args.group.dynamic_sampling=resample",
          "--model.init_args.loss.clip_range_high=0.28", "--model.init_args.loss.aggregation=token",
          "--model.init_args.loss.overlong_buffer=2", "--model.init_args.loss.kl_coef=0.01",
          "--model.init_args.update.recompute_logprobs=false"])
    checkpoint = read_checkpoint(ckpt(root))
    assert checkpoint["lit_llm"]["stage"] == "grpo" and checkpoint["global_step"] == 4
    assert checkpoint["lit_llm_grpo"]["generator_states"].shape[0] == 1
    client = MlflowClient()
    run = client.get_run(checkpoint["lit_llm"]["mlflow_run_id"])
    for name in ("train/reward", "train/accuracy", "train/zero_variance_share", "train/truncation_rate",
                 "train/response_length", "train/response_length_drift", "train/entropy", "train/kl",
                 "train/clip_fraction_low", "train/clip_fraction_high", "train/logprob_mismatch",
                 "train/ratio_start_error", "val/reward", "val/gold_accuracy"):
        assert name in run.data.metrics, name
    assert run.data.metrics["train/logprob_mismatch"] < 1e-4
    assert any(a.path == "rollouts" for a in client.list_artifacts(run.info.run_id))
    # the micro model answers nothing right: every group is all-wrong, and it says so (also in the log file)
    assert "have all-equal rewards and give no gradient" in (root / "progress.log").read_text()


def micro_grpo_args(root: Path, init_from: str) -> list[str]:
    """The GRPO recipe shrunk to seconds: 4 prompts x 4 samples per batch, 2 updates per batch."""
    return ["--config", GRPO_TINY, f"--model.init_args.init_from={init_from}", "--trainer.max_steps=4",
            "--trainer.val_check_interval=2", f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.logger.init_args.experiment_name=tests", "--gold.examples=4", "--gold.max_new_tokens=4",
            "--model.init_args.rollout.max_new_tokens=6", "--model.init_args.group.size=4",
            "--model.init_args.update.mini_batch_size=8", "--model.init_args.rollout_table_every=1",
            "--data.init_args.num_prompts=32", "--data.init_args.num_val_prompts=4", "--data.init_args.batch_size=4"]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="group.size"):
        GroupConfig(size=1)
    with pytest.raises(ValueError, match="dynamic_sampling"):
        GroupConfig(dynamic_sampling="filter")
    assert GRPOLoss().kl_coef == 0.0  # as DAPO and Dr. GRPO: no KL term unless asked


def test_grpo_with_lora_uses_the_adapter_off_policy_as_its_reference(tiny_pretrain: Path) -> None:
    from lit_llm.lora import LoRAConfig

    module = grpo_module(tiny_pretrain, lora=LoRAConfig(r=4))
    assert module.reference is None
    rollout, _, _ = module.make_groups(prompt_batch(module, n=2), {})
    assert torch.equal(rollout.ref_logprobs, rollout.logprobs)  # adapters start at zero: policy = base
    loss, _ = module.minibatch_loss(rollout)
    loss.backward()
    assert all(p.grad is None for n, p in module.model.named_parameters() if ".lora_" not in n)
