"""PPOModule: RLHF with proximal policy optimisation (InstructGPT: Ouyang et al. 2022; Ziegler et al. 2019).

One training step = one PPO iteration on a batch of prompts from `lit_llm.data.prompts.PromptDataModule`:

1. Rollout (no gradients). The policy samples a response per prompt with the KV cache (`generate`: temperature
   1 by default, each row stops at the chat's end-of-turn/eos, at most `max_new_tokens`). Responses are
   right-padded after their stop token; `mask` (B, N) marks generated tokens up to and including it.
2. Scoring. One forward pass of the policy gives the rollout's log-probs (under softmax(logits / temperature),
   the distribution it sampled from) and, from the value model, V(s_t) = the value head at the position that
   predicts response token t. The frozen reference gives its log-probs. The score is the reward model's value at
   the sequence's last real token (the stop token, never a pad: the reward model was trained on sequences ending
   there) normalised with its stored statistics, (r − mean) / std, or the task world's gold reward (1/0,
   `reward_from: gold`: RL with verifiable rewards). Then optionally `reward_clip` to ±c, and
   `missing_eos_penalty` subtracted from responses that never stopped.
3. Rewards per token: −β·KL_t (KL_t the k1 or k3 estimate of log π − log π_ref at the sampled token, β the KL
   coefficient), plus the score at the response's last token. GAE(γ, λ) over the response tokens gives
   advantages and returns; advantages are whitened over every rank's tokens (the statistics are all-reduced).
4. Update. `ppo_epochs` passes over shuffled mini-batches of the rollout: clipped policy loss + `vf_coef` ×
   clipped value loss − `entropy_coef` × entropy (+ `ptx_coef` × the LM loss on pretraining blocks: PPO-ptx),
   each a token mean over the mini-batch. The module optimises manually: it clips the gradient norm itself
   (`max_grad_norm`; Lightning refuses `trainer.gradient_clip_val` under manual optimisation), steps the
   optimizer every `gradient_accumulation_steps` mini-batches, and steps the LR schedule with it.
5. The KL coefficient is fixed, or with `target_kl` adapted after each rollout (Ziegler et al.'s proportional
   controller): β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon), n = rollouts in the batch (all ranks).

Options come in sections (`--model.init_args.<section>.<option>`): `rollout` (sampling, `rollout.RolloutConfig`),
`reward` (shaping the score, `rollout.RewardShaping`), `kl` (the penalty and its controller, `KLConfig`), `loss`
(the PPO objective and GAE, `PPOLoss`) and `update` (epochs, mini-batches, clipping, `PPOUpdate`).

Value model (`value_model`): "separate" (default, as InstructGPT) — its own backbone + scalar head, initialised
from `value_from` (default: the reward model, head included; the policy when the reward is gold); it doubles the
trained weights and optimizer memory but keeps value gradients out of the policy. "shared" — a scalar head on
the policy's trunk: half the memory and one forward pass for both, but the value loss also moves the policy's
features (`vf_coef` then trades value fit against policy quality).

Steps and logging. Lightning counts optimizer steps in `trainer.global_step` (so `max_steps` counts updates:
each rollout makes `updates_per_batch` = ppo_epochs × ceil(mini-batches / accumulation) of them), while
`val_check_interval` and the MLflow step axis count rollouts (batches). Metrics per rollout under train/: reward
(raw score), reward_normalized (after normalisation, clipping and penalty), kl (per-sequence sum of the
estimator, mean over rollouts), kl_coef, entropy, clip_fraction, approx_kl (½·mean (log π − log π_old)²),
policy_loss, value_loss, explained_variance, response_length, eos_rate, ptx_loss, and timings (time_generate_s,
time_score_s, time_update_s, rollout_tokens_per_s); at validation val/reward, val/response_length (greedy) and
val/gold_accuracy (`evaluation.GoldEval`, as in every stage that generates). Every
`rollout_table_every` rollouts a table of (prompt, response, score, kl) goes to MLflow under rollouts/.

With `lora`, the policy and a separate value model train adapters only, and the reference is the policy with its
adapters disabled (no frozen copy) unless `ref_from` names another model.

Dropout is switched off in the policy and value models: with it, the log-probs of the rollout and of the first
update would differ and the ratio would not start at 1.

Resume: checkpoints carry the KL coefficient and each rank's rollout random generator (samples and mini-batch
order), so a resumed run continues the same sequence of rollouts.

Deliberate simplifications: one response per prompt; the reference and reward model must share the policy's
tokenizer; top-k/top-p sampling is allowed but then the sampler differs from the policy PPO optimises. Sampling,
scoring and the log-probs of responses are `lit_llm.rollout`'s, shared with rejection sampling.
"""

import math
import time
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_llm.checkpoint import load_backbone
from lit_llm.losses import causal_lm_loss, gae, kl_penalty, masked_mean, ppo_policy_loss, ppo_value_loss
from lit_llm.model import ScalarHead
from lit_llm.lora import LoRAConfig
from lit_llm.optim import OptimConfig
from lit_llm.rollout import (GOLD, KLConfig, KLController, RewardShaping, RolloutConfig, Samples, disable_dropout,
                             response_logprobs, reward_source, sample, sequence_logprobs, stopped)
from lit_llm.stages.base import TRAIN_DTYPE
from lit_llm.stages.rollout_stage import RolloutStage
from lit_llm.stages.ppo_parts import PPOLoss, PPOUpdate, Rollout, value_metrics

PPO_STATE_KEY = "lit_llm_ppo"


class PPOModule(RolloutStage):
    """PPO stage (RLHF): policy, value model, frozen reference and reward.

    Args:
        init_from: Policy's starting weights and tokenizer: a lit_llm `.ckpt` (usually the SFT run's last.ckpt)
            or a Hugging Face directory or hub id. Required.
        reward_from: A reward-stage checkpoint (`lit-llm fit --config configs/reward/tiny.yaml`), or "gold" for
            the task world's verifiable reward (1 for a correct answer, else 0; prompts need an `answer`).
        ref_from: Reference policy of the KL penalty (same formats as init_from); default: the init_from weights.
        value_model: "separate" (own backbone + head) or "shared" (a head on the policy's trunk).
        value_from: Weights of a separate value model; default: the reward model (with its head), or init_from
            when the reward is gold.
        optim: Optimizer and schedule (over the policy and the value model).
        lora: Train low-rank adapters instead of all weights (`lit_llm.lora.LoRAConfig`: r, alpha, dropout,
            target_modules, modules_to_save); None = full fine-tuning.
        rollout: How responses are sampled (max_new_tokens, temperature > 0, top_k, top_p).
        reward: How the score becomes the reward (normalize, clip, missing_eos_penalty).
        kl: The KL penalty to the reference (coef, estimator, target, horizon).
        loss: The PPO objective (gamma, lam, whiten_advantages, clip_range, value_clip_range, vf_coef,
            entropy_coef, ptx_coef).
        update: How each rollout batch is learned from (ppo_epochs, mini_batch_size, gradient_accumulation_steps,
            max_grad_norm, value_warmup_rollouts).
        activation_checkpointing: Recompute each block in the backward pass to save activation memory.
        rollout_table_every: Log a table of rollouts to MLflow every this many rollouts; 0 = off.
        rollout_table_rows: Rows of that table.
    """

    stage = "ppo"
    state_key = PPO_STATE_KEY

    def __init__(
        self,
        init_from: str,
        reward_from: str,
        ref_from: str | None = None,
        value_model: Literal["separate", "shared"] = "separate",
        value_from: str | None = None,
        optim: OptimConfig | None = None,
        lora: LoRAConfig | None = None,
        rollout: RolloutConfig | None = None,
        reward: RewardShaping | None = None,
        kl: KLConfig | None = None,
        loss: PPOLoss | None = None,
        update: PPOUpdate | None = None,
        activation_checkpointing: bool = False,
        rollout_table_every: int = 50,
        rollout_table_rows: int = 8,
    ) -> None:
        super().__init__(optim, lora, rollout, rollout_table_every, rollout_table_rows)
        if value_model not in ("separate", "shared"):
            raise ValueError(f"value_model must be 'separate' or 'shared', got {value_model!r}")
        self.shaping = reward or RewardShaping()
        self.init_from, self.reward_from, self.ref_from = init_from, reward_from, ref_from
        self.value_model, self.value_from = value_model, value_from
        kl = kl or KLConfig()
        self.kl_estimator, self.kl = kl.estimator, KLController(kl.coef, kl.target, kl.horizon)
        self.loss, self.update = loss or PPOLoss(), update or PPOUpdate()
        self.rollout_table_every, self.rollout_table_rows = rollout_table_every, rollout_table_rows

        self.load_starting_model(init_from, activation_checkpointing)
        disable_dropout(self.model)
        self.set_frozen("reference", self.load_reference(ref_from))
        self.reward_source = reward_source(reward_from, self.tokenizer)  # not a submodule: never in a checkpoint
        self.value = self.build_value_model(activation_checkpointing)

    # ------------------------------------------------------------------------------------------ models
    def build_value_model(self, activation_checkpointing: bool) -> nn.Module:
        """A separate ScalarHead (backbone + head) or, for "shared", only a head on the policy's trunk."""
        if self.value_model == "shared":
            head = nn.Linear(self.model.config.d_model, 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            return head
        source = self.value_from or (self.init_from if self.reward_from == GOLD else self.reward_from)
        loaded = load_backbone(source, dtype=TRAIN_DTYPE)
        self.check_tokenizer(loaded.tokenizer, f"value_from {source}")
        self.adapt(loaded.model, "value.backbone", source)  # with LoRA, adapters on the value backbone too
        value = ScalarHead(loaded.model)
        if loaded.stage == "reward":
            value.head.load_state_dict({"weight": loaded.state_dict["head.weight"],
                                        "bias": loaded.state_dict["head.bias"]})
        disable_dropout(value)
        value.backbone.activation_checkpointing = activation_checkpointing
        return value

    def policy_and_values(self, tokens: Tensor, attention_mask: Tensor, response: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs, entropies and values (each (B, N)) of the response tokens, at the positions that predict
        them (the prompt's last position through the response's second-to-last)."""
        start, end = tokens.shape[1] - response.shape[1] - 1, tokens.shape[1] - 1
        hidden = self.model.hidden_states(tokens, attention_mask)[:, start:end]
        logprobs, entropy = response_logprobs(self.model, hidden, response, self.rollout.temperature)
        if self.value_model == "shared":
            values = self.value(hidden).squeeze(-1).float()
        else:
            values = self.value(tokens, attention_mask)[:, start:end]
        return logprobs, entropy, values

    @torch.no_grad()
    def reference_logprobs(self, tokens: Tensor, attention_mask: Tensor, response: Tensor) -> Tensor:
        with self.reference_model() as reference:  # a frozen copy, or (LoRA) the policy with adapters off
            return sequence_logprobs(reference, tokens, attention_mask, response, self.rollout.temperature)[0]

    # ----------------------------------------------------------------------------------------- rollout
    def whiten(self, values: Tensor, mask: Tensor) -> Tensor:
        """(values − mean) / std over the masked tokens of ALL ranks (sums all-reduced), padding left at 0."""
        sums = torch.stack([(values * mask).sum(), (values.square() * mask).sum(), mask.sum()]).double()
        total, squares, count = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        mean = total / max(count, 1.0)
        var = max(squares / max(count, 1.0) - mean**2, 0.0)
        return (values - mean) * (1.0 / math.sqrt(var + 1e-8)) * mask

    @torch.no_grad()
    def make_rollout(self, batch: dict[str, Any], timings: dict[str, float]) -> tuple[Rollout, list[str]]:
        """Sample responses to a batch of prompts and score them (see the module docstring)."""
        start = time.perf_counter()
        samples = sample(self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"], self.rollout,
                         self.answer_stop_ids(), self.rollout_generator())
        timings["generate"] = time.perf_counter() - start
        start = time.perf_counter()
        rollout = self.score_rollout(batch["records"], samples)
        timings["score"] = time.perf_counter() - start
        return rollout, samples.texts

    @torch.no_grad()
    def score_rollout(self, records: list[dict], samples: Samples) -> Rollout:
        """Log-probs, values, reference log-probs, scores, per-token rewards and advantages of generated responses
        (right-padded after their stop token)."""
        gen = samples.generation
        tokens, attention_mask, response = gen.tokens, gen.attention_mask, gen.response
        mask = gen.response_mask.float()
        was_training = self.training
        self.eval()
        logprobs, _, values = self.policy_and_values(tokens, attention_mask, response)
        self.train(was_training)
        ref_logprobs = self.reference_logprobs(tokens, attention_mask, response)
        raw = self.reward_source.score(records, samples.texts, gen)
        has_stop = stopped(gen, self.answer_stop_ids())
        scores = self.reward_source.shape(raw, has_stop, self.shaping)
        kl = kl_penalty(logprobs, ref_logprobs, self.kl_estimator) * mask
        rewards = -self.kl.value * kl
        last = mask.sum(1).long() - 1  # each response's last token: its stop token when it has one
        rewards[torch.arange(len(last), device=rewards.device), last] += scores
        advantages, returns = gae(rewards, values, mask, self.loss.gamma, self.loss.lam)
        if self.loss.whiten_advantages:
            advantages = self.whiten(advantages, mask)
        return Rollout(tokens, attention_mask, response, mask, logprobs, ref_logprobs, values * mask, kl, rewards,
                       advantages, returns, raw.float(), scores.float(), has_stop)

    # ------------------------------------------------------------------------------------------ update
    @property
    def updates_per_batch(self) -> int:
        """Optimizer steps made per rollout batch (what `trainer.global_step` advances by)."""
        batch_size = getattr(getattr(self.trainer, "datamodule", None), "batch_size", self.update.mini_batch_size)
        minibatches = math.ceil(batch_size / self.update.mini_batch_size)
        return self.update.ppo_epochs * math.ceil(minibatches / self.update.gradient_accumulation_steps)

    def minibatch_loss(self, mb: Rollout, ptx: Tensor | None, value_only: bool = False
                       ) -> tuple[Tensor, dict[str, Tensor]]:
        """The PPO loss of one mini-batch and its statistics; `value_only` (critic warm-up) keeps the policy
        terms in the graph at weight 0, so every parameter still gets a gradient (as DDP expects)."""
        logprobs, entropy, values = self.policy_and_values(mb.tokens, mb.attention_mask, mb.response)
        policy_loss, clipped = ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, self.loss.clip_range)
        value_loss = ppo_value_loss(values, mb.values, mb.returns, self.loss.value_clip_range)
        stats = {"policy_loss": masked_mean(policy_loss, mb.mask), "value_loss": masked_mean(value_loss, mb.mask),
                 "entropy": masked_mean(entropy, mb.mask), "clip_fraction": masked_mean(clipped.float(), mb.mask),
                 "approx_kl": 0.5 * masked_mean((logprobs - mb.logprobs) ** 2, mb.mask),
                 "ratio": masked_mean(torch.exp(logprobs - mb.logprobs), mb.mask)}
        policy_terms = stats["policy_loss"] - self.loss.entropy_coef * stats["entropy"]
        loss = (0.0 if value_only else 1.0) * policy_terms + self.loss.vf_coef * stats["value_loss"]
        if ptx is not None and self.loss.ptx_coef and not value_only:
            stats["ptx_loss"] = causal_lm_loss(self.model(ptx[:, :-1]), ptx[:, 1:])
            loss = loss + self.loss.ptx_coef * stats["ptx_loss"]
        return loss, {k: v.detach() for k, v in stats.items()}

    @property
    def warming_up_value(self) -> bool:
        """True during the first `value_warmup_rollouts` rollouts (counted in optimizer steps, so resume-safe)."""
        return self.trainer.global_step < self.update.value_warmup_rollouts * self.updates_per_batch

    def ppo_update(self, rollout: Rollout, ptx: Tensor | None) -> dict[str, float]:
        """`ppo_epochs` passes over shuffled mini-batches; returns the mean of each statistic. During the value
        warm-up the policy's gradients are dropped before each step, so AdamW leaves it (and its moments) as is."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        value_only = self.warming_up_value
        size = rollout.tokens.shape[0]
        n_mini = math.ceil(size / self.update.mini_batch_size)
        ptx_chunks = ptx.chunk(n_mini) if ptx is not None and self.loss.ptx_coef else None
        totals: dict[str, float] = {}
        for _ in range(self.update.ppo_epochs):
            order = torch.randperm(size, generator=self.rollout_generator(), device=self.device)
            for i in range(n_mini):
                mb = rollout.select(order[i * self.update.mini_batch_size : (i + 1) * self.update.mini_batch_size])
                loss, stats = self.minibatch_loss(mb, ptx_chunks[i % len(ptx_chunks)] if ptx_chunks else None,
                                                  value_only)
                self.manual_backward(loss / self.update.gradient_accumulation_steps)
                if (i + 1) % self.update.gradient_accumulation_steps == 0 or i + 1 == n_mini:
                    if value_only:
                        for param in self.model.parameters():
                            param.grad = None
                    if self.update.max_grad_norm is not None:
                        self.clip_gradients(optimizer, gradient_clip_val=self.update.max_grad_norm,
                                            gradient_clip_algorithm="norm")
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value) / (self.update.ppo_epochs * n_mini)
        return totals

    # -------------------------------------------------------------------------------------------- step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        timings: dict[str, float] = {}
        rollout, texts = self.make_rollout(batch, timings)
        start = time.perf_counter()
        stats = self.ppo_update(rollout, batch.get("ptx_input_ids"))
        timings["update"] = time.perf_counter() - start
        kl_per_sequence = (rollout.kl * rollout.mask).sum(1).mean()
        mean_kl = float(self.trainer.strategy.reduce(kl_per_sequence.detach(), reduce_op="mean"))
        kl_coef_used = self.kl.value
        self.kl.update(mean_kl, rollout.tokens.shape[0] * self.trainer.world_size)
        metrics = {**stats, **value_metrics(rollout), "kl": mean_kl, "kl_coef": kl_coef_used,
                   "time_generate_s": timings["generate"], "time_score_s": timings["score"],
                   "time_update_s": timings["update"],
                   "rollout_tokens_per_s": float(rollout.mask.sum()) / max(timings["generate"], 1e-9)}
        self.log_dict({f"train/{k}": float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False,
                      sync_dist=True)
        self.log("train/reward", float(rollout.raw_scores.mean()), prog_bar=True, sync_dist=True)
        if self.rollout_table_every and batch_idx % self.rollout_table_every == 0:
            self.log_rollouts(batch, rollout, texts)

    def log_rollouts(self, batch: dict[str, Any], rollout: Rollout, texts: list[str]) -> None:
        """A table of this rank's first rollouts: prompt, response, raw and shaped score, KL."""
        n = min(self.rollout_table_rows, len(texts))
        kl = (rollout.kl * rollout.mask).sum(1)
        rows = [{"prompt": batch["records"][i].get("prompt", ""), "response": texts[i],
                 "reward": round(float(rollout.raw_scores[i]), 4), "score": round(float(rollout.scores[i]), 4),
                 "kl": round(float(kl[i]), 4)} for i in range(n)]
        self.log_rollout_table(rows)

    # ------------------------------------------------------------------------------------- checkpoints
    def extra_state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl.value}  # the adaptive controller's coefficient, beside the generators

    def restore_extra_state(self, state: dict[str, Any]) -> None:
        self.kl.value = float(state["kl_coef"])
