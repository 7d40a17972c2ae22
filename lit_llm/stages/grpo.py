"""GRPOModule: critic-free, group-relative policy optimisation with verifiable rewards (GRPO: Shao et al. 2024,
DeepSeekMath), with the options of its fixes: Dr. GRPO (Liu et al. 2025), DAPO (Yu et al. 2025) and RLOO
(Ahmadian et al. 2024).

One training step = one batch of prompts from `lit_llm.data.prompts.PromptDataModule`:

1. Rollout (no gradients). The policy samples G responses per prompt with the KV cache (`rollout.sample`), each
   prompt's pass once for its G rows. Every later forward over the groups (scoring, reference, update) also runs
   each distinct prompt once and shares its keys/values with the rows that answer it
   (`rollout.shared_prompt_logprobs`, Prefix Grouper: Liu et al. 2025): the same values up to float rounding, a
   fifth less time per batch on the tiny recipe. Each response is scored by the reward source: the task
   world's gold verifier (`reward_from: gold`), a format bonus ("format"), a reward-model checkpoint, or a
   weighted sum of them (`reward_weights`); DAPO's soft overlong penalty is added when `loss.overlong_buffer` > 0.
2. Advantages per response from its group's rewards (`losses.group_advantages`): r − mean, divided by the std
   (GRPO, DAPO) or not (Dr. GRPO), or r − the mean of the others (RLOO). A group whose rewards are all equal
   gives every response advantage 0; `group.dynamic_sampling` leaves such groups in ("off"), takes them out of
   the loss ("drop") or samples their prompts again first ("resample").
3. Scoring pass (no gradients; `update.recompute_logprobs`): the training forward's log-probs of the responses,
   the ratio's denominator, and the reference's. `train/logprob_mismatch` is the largest |sampler − training
   forward| log-prob: the sampler's log-probs are computed from the same weights under the same
   softmax(logits / T), so it stays ~1e-5 (peers correct a real mismatch with importance weights; here there is
   none to correct). Without the pass, the sampler's log-probs are the denominator and the update's first
   mini-batch, before its step, measures the mismatch (and the KL, unless the KL is in the loss).
4. Update: `update.epochs` passes over shuffled mini-batches, one optimizer step each: the clipped surrogate
   (`losses.ppo_policy_loss` with ε_low/ε_high) aggregated per `loss.aggregation`
   (`losses.aggregate_token_loss`), plus `loss.kl_coef` × the k3 KL to the reference (default 0), plus
   `loss.positive_nll_coef` × the token-mean NLL of the responses whose reward reaches `loss.positive_reward`
   (VAPO's positive-example LM loss; default 0). The NLL counts every correct response, those of all-correct
   groups too: those groups give no policy gradient (advantage 0) but do give the NLL's (measured: restricting
   the NLL to groups that disagree gained a third as much, reports/grpo.md).

Monitors every step under train/: reward, accuracy (gold correctness when the prompts carry answers), zero_
variance_share (groups with all-equal rewards, before and after dynamic sampling), groups_all_correct /
groups_all_wrong, reward_group_std, truncation_rate (no stop within max_new_tokens), response_length and its
drift from the first rollout, entropy, clip_fraction_low / clip_fraction_high, kl, ratio_start_error (|ratio − 1|
before the batch's first step: 0), logprob_mismatch, samples_generated (this rank's, resamples included), timings;
a warning (stderr and progress.log) when the zero-variance share or the truncation rate passes `monitors.*_warn`.
Rollout tables go to MLflow as PPO's do.
Validation: greedy answers (val/reward, val/response_length) and val/gold_accuracy (`evaluation.GoldEval`).

The reference is a frozen copy of the starting policy (`ref_from`), or with `lora` the policy with its adapters
off. Dropout is switched off, so the ratio starts at 1. Checkpoints carry each rank's rollout generator and the
first rollout's response length, so a resumed run continues the same sequence of rollouts.
"""

import time
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

from lit_llm.losses import aggregate_token_loss, group_advantages, kl_penalty, masked_mean, overlong_penalty, \
    ppo_policy_loss
from lit_llm.lora import LoRAConfig
from lit_llm.optim import OptimConfig
from lit_llm.progress import Progress
from lit_llm.rollout import (RolloutConfig, Samples, disable_dropout, gold_correct, reward_sources, sample,
                             shared_prompt_logprobs, stopped)
from lit_llm.stages.grpo_parts import GroupConfig, GroupRollout, GRPOLoss, GRPOUpdate, Monitors, join_generations
from lit_llm.stages.rollout_stage import RolloutStage


def largest_gap(logprobs: Tensor, sampled: Tensor, generated: Tensor) -> Tensor:
    """max |logprobs − sampled| over the generated tokens (0 when there are none): the sampler's mismatch."""
    return (logprobs - sampled).abs()[generated].max() if generated.any() else logprobs.new_zeros(())


class GRPOModule(RolloutStage):
    """GRPO stage (and Dr. GRPO, DAPO, RLOO through its options).

    Args:
        init_from: Policy's starting weights and tokenizer (usually the SFT run's last.ckpt). Required.
        reward_from: Reward sources: "gold" (the task world's verifier), "format", or reward-stage checkpoints; a
            list sums them with `reward_weights`.
        reward_weights: One weight per source (default 1 each).
        ref_from: Reference policy for the KL (default: the init_from weights).
        optim: Optimizer and schedule.
        lora: Train low-rank adapters instead of all weights (`lit_llm.lora.LoRAConfig`); None = full.
        rollout: How responses are sampled (max_new_tokens, temperature > 0, top_k, top_p).
        group: Group size, baseline, std scaling and dynamic sampling (`GroupConfig`).
        loss: Clip ranges, aggregation, KL coefficient, overlong penalty (`GRPOLoss`).
        update: Epochs, mini-batch size, gradient clipping (`GRPOUpdate`).
        monitors: Warning thresholds (`Monitors`).
        rollout_table_every: Log a table of rollouts to MLflow every this many steps; 0 = off.
        rollout_table_rows: Rows of that table.
    """

    stage = "grpo"
    state_key = "lit_llm_grpo"

    def __init__(
        self,
        init_from: str,
        reward_from: str | list[str] = "gold",
        reward_weights: list[float] | None = None,
        ref_from: str | None = None,
        optim: OptimConfig | None = None,
        lora: LoRAConfig | None = None,
        rollout: RolloutConfig | None = None,
        group: GroupConfig | None = None,
        loss: GRPOLoss | None = None,
        update: GRPOUpdate | None = None,
        monitors: Monitors | None = None,
        rollout_table_every: int = 50,
        rollout_table_rows: int = 8,
    ) -> None:
        super().__init__(optim, lora, rollout, rollout_table_every, rollout_table_rows)
        self.group, self.loss = group or GroupConfig(), loss or GRPOLoss()
        self.update, self.monitors = update or GRPOUpdate(), monitors or Monitors()
        self.init_from, self.ref_from = init_from, ref_from
        self.reward_from = [reward_from] if isinstance(reward_from, str) else list(reward_from)
        self.load_starting_model(init_from)
        disable_dropout(self.model)
        self.set_frozen("reference", self.load_reference(ref_from))
        self.reward_source = reward_sources(self.reward_from, reward_weights, self.tokenizer, self.answer_stop_ids())
        self.first_response_length: float | None = None
        self.samples_generated = 0  # responses sampled so far, this rank (dynamic resampling draws extra ones)

    @property
    def updates_per_batch(self) -> int:
        """Optimizer steps per batch of prompts (what `trainer.global_step` advances by)."""
        batch_size = getattr(getattr(self.trainer, "datamodule", None), "batch_size", 1)
        return self.update.epochs * -(-batch_size * self.group.size // self.update.mini_batch_size)

    # ----------------------------------------------------------------------------------------- rollout
    def draw(self, ids: Tensor, mask: Tensor, records: list[dict]) -> tuple[Samples, Tensor]:
        """G responses to each of the (P, T) prompts and their rewards (P·G,), overlong penalty included; `records`
        has one entry per response."""
        samples = sample(self.model, self.tokenizer, ids, mask, self.rollout, self.answer_stop_ids(),
                         self.rollout_generator(), repeats=self.group.size)
        self.samples_generated += len(records)
        rewards = self.reward_source.score(records, samples.texts, samples.generation).float()
        if self.loss.overlong_buffer:
            lengths = samples.generation.response_mask.sum(1)
            rewards = rewards + self.loss.overlong_weight * overlong_penalty(
                lengths, self.rollout.max_new_tokens, self.loss.overlong_buffer)
        return samples, rewards

    def equal_groups(self, rewards: Tensor) -> Tensor:
        """(P,) True for groups whose G rewards are all equal."""
        grouped = rewards.view(-1, self.group.size)
        return grouped.max(1).values == grouped.min(1).values

    def resample(self, ids: Tensor, mask: Tensor, records: list[dict], samples: Samples, rewards: Tensor
                 ) -> tuple[Samples, Tensor]:
        """Draw the all-equal groups' prompts again (up to `max_resample` times), keeping the new group wherever
        its rewards now differ."""
        size = self.group.size
        for _ in range(self.group.max_resample):
            equal = self.equal_groups(rewards).nonzero().squeeze(1)
            if not len(equal):
                break
            rows = (equal[:, None] * size + torch.arange(size, device=equal.device)).flatten()
            again, again_rewards = self.draw(ids[equal], mask[equal], [records[i] for i in rows.tolist()])
            order = torch.arange(rewards.numel(), device=rewards.device)
            within, still_equal = torch.arange(size, device=order.device), self.equal_groups(again_rewards).tolist()
            for k, group in enumerate(equal.tolist()):
                if not still_equal[k]:
                    order[group * size:(group + 1) * size] = rewards.numel() + k * size + within
            generation = join_generations(samples.generation, again.generation, self.tokenizer.pad_id)
            texts = samples.texts + again.texts
            samples = Samples(type(generation)(*[t[order] for t in vars(generation).values()]),
                              [texts[i] for i in order.tolist()])
            rewards = torch.cat([rewards, again_rewards])[order]
        return samples, rewards

    @torch.no_grad()
    def make_groups(self, batch: dict[str, Any], stats: dict[str, float]) -> tuple[GroupRollout, Samples, Tensor]:
        """Sample, score and compute advantages for a batch of prompts (see the module docstring)."""
        size = self.group.size
        ids, mask = batch["input_ids"], batch["attention_mask"]
        records = [r for r in batch["records"] for _ in range(size)]
        start = time.perf_counter()
        samples, rewards = self.draw(ids, mask, records)
        stats["zero_variance_share_sampled"] = float(self.equal_groups(rewards).float().mean())
        if self.group.dynamic_sampling == "resample":
            samples, rewards = self.resample(ids, mask, records, samples, rewards)
        stats["time_generate_s"] = time.perf_counter() - start
        equal = self.equal_groups(rewards)
        advantages = group_advantages(rewards.view(-1, size), self.group.baseline, self.group.scale_by_std).flatten()
        gen = samples.generation
        keep = torch.ones_like(equal) if self.group.dynamic_sampling == "off" else ~equal
        response_mask = gen.response_mask.float() * keep.repeat_interleave(size)[:, None].float()
        start = time.perf_counter()
        logprobs, ref_logprobs = gen.logprobs, None  # the sampler's: same weights, same softmax(logits / T)
        group = torch.arange(len(records), device=ids.device) // size
        if self.update.recompute_logprobs:
            logprobs = shared_prompt_logprobs(self.model, gen.tokens, gen.attention_mask, gen.response, group,
                                              self.rollout.temperature)[0]
            stats["logprob_mismatch"] = float(largest_gap(logprobs, gen.logprobs, gen.response_mask))
        if self.update.recompute_logprobs or self.loss.kl_coef:
            ref_logprobs = self.reference_logprobs(gen.tokens, gen.attention_mask, gen.response, group)
        stats["time_score_s"] = time.perf_counter() - start
        stats.update(self.rollout_stats(records, samples, rewards, equal))
        stats["samples_generated"] = float(self.samples_generated)
        positive = gen.response_mask.float() * (rewards >= self.loss.positive_reward).float()[:, None]
        return (GroupRollout(gen.tokens, gen.attention_mask, gen.response, group, response_mask, logprobs,
                             ref_logprobs, advantages, positive), samples, rewards)

    def rollout_stats(self, records: list[dict], samples: Samples, rewards: Tensor, equal: Tensor
                      ) -> dict[str, float]:
        """The failure monitors of a batch of groups."""
        gen, size = samples.generation, self.group.size
        lengths = gen.response_mask.sum(1).float()
        if self.first_response_length is None:
            self.first_response_length = float(lengths.mean())
        stats = {"reward": float(rewards.mean()), "zero_variance_share": float(equal.float().mean()),
                 "reward_group_std": float(rewards.view(-1, size).std(1).mean()),
                 "truncation_rate": float(1.0 - stopped(gen, self.answer_stop_ids()).float().mean()),
                 "response_length": float(lengths.mean()),
                 "response_length_drift": float(lengths.mean()) - self.first_response_length}
        correct = gold_correct(records, samples.texts)
        if correct is not None:
            correct = correct.view(-1, size)
            stats.update(accuracy=float(correct.mean()), groups_all_correct=float((correct.min(1).values == 1).float()
                         .mean()), groups_all_wrong=float((correct.max(1).values == 0).float().mean()))
        return stats

    @torch.no_grad()
    def reference_logprobs(self, tokens: Tensor, attention_mask: Tensor, response: Tensor, group: Tensor) -> Tensor:
        with self.reference_model() as reference:
            return shared_prompt_logprobs(reference, tokens, attention_mask, response, group,
                                          self.rollout.temperature)[0]

    # ------------------------------------------------------------------------------------------ update
    def minibatch_loss(self, mb: GroupRollout) -> tuple[Tensor, dict[str, Tensor]]:
        """The GRPO loss of one mini-batch and its statistics."""
        logprobs, entropy = shared_prompt_logprobs(self.model, mb.tokens, mb.attention_mask, mb.response, mb.group,
                                                   self.rollout.temperature)
        advantages = mb.advantages[:, None].expand_as(logprobs)
        per_token, clipped = ppo_policy_loss(logprobs, mb.logprobs, advantages, self.loss.clip_range,
                                             self.loss.clip_range_high)
        max_tokens = self.rollout.max_new_tokens
        loss = aggregate_token_loss(per_token, mb.mask, self.loss.aggregation, max_tokens)
        stats = {}
        if mb.ref_logprobs is not None:
            kl = kl_penalty(logprobs, mb.ref_logprobs, "k3")
            if self.loss.kl_coef:
                loss = loss + self.loss.kl_coef * aggregate_token_loss(kl, mb.mask, self.loss.aggregation, max_tokens)
            stats["kl"] = masked_mean(kl, mb.mask)
        if self.loss.positive_nll_coef:
            loss = loss - self.loss.positive_nll_coef * masked_mean(logprobs, mb.positive)
        ratio = torch.exp(logprobs.detach() - mb.logprobs)
        generated = mb.attention_mask[:, -mb.response.shape[1]:].bool()  # dropped groups' tokens too
        stats.update(policy_loss=loss, entropy=masked_mean(entropy, mb.mask),
                     clip_fraction_low=masked_mean((clipped & (ratio < 1)).float(), mb.mask),
                     clip_fraction_high=masked_mean((clipped & (ratio > 1)).float(), mb.mask),
                     ratio_error=((ratio - 1).abs() * mb.mask).max(),
                     logprob_error=largest_gap(logprobs.detach(), mb.logprobs, generated))
        return loss, {k: v.detach() for k, v in stats.items()}

    def grpo_update(self, rollout: GroupRollout) -> dict[str, float]:
        """`update.epochs` passes over shuffled mini-batches, one optimizer step each; the mean of each statistic,
        and |ratio − 1| before the first step. Without `update.recompute_logprobs`, the first mini-batch's forward
        (before any step) is the check of the sampler's log-probs, and the KL is measured there unless it is in the
        loss."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        size, per = rollout.tokens.shape[0], self.update.mini_batch_size
        n_mini = -(-size // per)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for epoch in range(self.update.epochs):
            order = torch.randperm(size, generator=self.rollout_generator(), device=self.device)
            for i in range(n_mini):
                mb = rollout.select(order[i * per:(i + 1) * per])
                first = epoch == 0 and i == 0
                if first and mb.ref_logprobs is None:  # the KL monitor, when the KL is not in the loss
                    mb.ref_logprobs = self.reference_logprobs(mb.tokens, mb.attention_mask, mb.response, mb.group)
                loss, stats = self.minibatch_loss(mb)
                if first:
                    totals["ratio_start_error"] = float(stats["ratio_error"])
                    if not self.update.recompute_logprobs:
                        totals["logprob_mismatch"] = float(stats["logprob_error"])
                self.manual_backward(loss)
                if self.update.max_grad_norm is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=self.update.max_grad_norm,
                                        gradient_clip_algorithm="norm")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                for key, value in stats.items():
                    if key not in ("ratio_error", "logprob_error"):
                        totals[key] = totals.get(key, 0.0) + float(value)
                        counts[key] = counts.get(key, 0) + 1
        return {k: v / counts[k] if k in counts else v for k, v in totals.items()}

    # -------------------------------------------------------------------------------------------- step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        stats: dict[str, float] = {}
        rollout, samples, rewards = self.make_groups(batch, stats)
        start = time.perf_counter()
        stats.update(self.grpo_update(rollout))
        stats["time_update_s"] = time.perf_counter() - start
        self.log_dict({f"train/{k}": float(v) for k, v in stats.items()}, on_step=True, on_epoch=False,
                      sync_dist=True)
        self.warn_if_stuck(stats)
        if self.rollout_table_every and batch_idx % self.rollout_table_every == 0:
            rows = [{"prompt": r.get("prompt", ""), "response": t, "reward": round(float(w), 4),
                     "advantage": round(float(a), 4)} for r, t, w, a in
                    zip([r for r in batch["records"] for _ in range(self.group.size)], samples.texts, rewards,
                        rollout.advantages)]
            self.log_rollout_table(rows[:self.rollout_table_rows])

    @rank_zero_only
    def warn_if_stuck(self, stats: dict[str, float]) -> None:
        """Say why a run learns nothing: groups without signal, or responses cut off at the length limit."""
        problems = []
        if stats["zero_variance_share"] > self.monitors.zero_variance_warn:
            problems.append(f"{stats['zero_variance_share']:.0%} of groups have all-equal rewards and give no "
                            f"gradient (the prompts are too hard or too easy for the policy: a larger group.size, "
                            f"group.dynamic_sampling=resample, or other prompts)")
        if stats["truncation_rate"] > self.monitors.truncation_warn:
            problems.append(f"{stats['truncation_rate']:.0%} of responses reach rollout.max_new_tokens="
                            f"{self.rollout.max_new_tokens} without stopping (raise it, or penalise overlong "
                            f"responses with loss.overlong_buffer)")
        for problem in problems:
            text = f"GRPO step {self.trainer.global_step}: {problem}"
            rank_zero_warn(text)
            for callback in self.trainer.callbacks:
                if isinstance(callback, Progress):
                    callback.emit(self.trainer, f"warning: {text}")

    # ------------------------------------------------------------------------------------- checkpoints
    def extra_state(self) -> dict[str, Any]:
        return {"first_response_length": self.first_response_length, "samples_generated": self.samples_generated}

    def restore_extra_state(self, state: dict[str, Any]) -> None:
        self.first_response_length = state.get("first_response_length")
        self.samples_generated = state.get("samples_generated", 0)
