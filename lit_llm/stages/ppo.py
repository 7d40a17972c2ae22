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

Value model (`value_model`): "separate" (default, as InstructGPT) — its own backbone + scalar head, initialised
from `value_from` (default: the reward model, head included; the policy when the reward is gold); it doubles the
trained weights and optimizer memory but keeps value gradients out of the policy. "shared" — a scalar head on
the policy's trunk: half the memory and one forward pass for both, but the value loss also moves the policy's
features (`vf_coef` then trades value fit against policy quality).

Steps and logging. Lightning counts optimizer steps in `trainer.global_step` (so `max_steps` counts updates:
each rollout makes `updates_per_rollout` = ppo_epochs × ceil(mini-batches / accumulation) of them), while
`val_check_interval` and the MLflow step axis count rollouts (batches). Metrics per rollout under train/: reward
(raw score), reward_normalized (after normalisation, clipping and penalty), kl (per-sequence sum of the
estimator, mean over rollouts), kl_coef, entropy, clip_fraction, approx_kl (½·mean (log π − log π_old)²),
policy_loss, value_loss, explained_variance, response_length, eos_rate, ptx_loss, and timings (time_generate_s,
time_score_s, time_update_s, rollout_tokens_per_s); at validation val/reward, val/response_length (greedy) and
val/gold_accuracy (greedy answers to held-out task-world questions, as in SFT and DPO). Every
`rollout_table_every` rollouts a table of (prompt, response, score, kl) goes to MLflow under rollouts/.

Dropout is switched off in the policy and value models: with it, the log-probs of the rollout and of the first
update would differ and the ratio would not start at 1.

Resume: checkpoints carry the KL coefficient and each rank's rollout random generator (samples and mini-batch
order), so a resumed run continues the same sequence of rollouts.

Deliberate simplifications: one response per prompt; the reference and reward model must share the policy's
tokenizer; top-k/top-p sampling is allowed but then the sampler differs from the policy PPO optimises.
"""

import math
import time
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_llm.callbacks import log_table
from lit_llm.checkpoint import load_backbone
from lit_llm.data.tasks import gold_reward
from lit_llm.generation import Generation, generate
from lit_llm.losses import (causal_lm_loss, gae, kl_penalty, masked_mean, ppo_policy_loss, ppo_value_loss)
from lit_llm.model import ScalarHead, Transformer
from lit_llm.optim import OptimConfig, configure_adamw
from lit_llm.stages.base import StageModule

GOLD = "gold"
PPO_STATE_KEY = "lit_llm_ppo"


class KLController:
    """The KL coefficient β: fixed, or adaptive toward `target` (Ziegler et al. 2019, section 2.2).

    Args:
        value: Initial β.
        target: Target KL per sequence (nats); None keeps β fixed.
        horizon: Rollouts over which a 20% error changes β by 20%.
    """

    def __init__(self, value: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        """After a batch of `n_steps` rollouts whose mean KL was `kl`."""
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of a model to 0 (modules and the attention's SDPA dropout)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    if hasattr(getattr(model, "config", None), "dropout"):
        model.config.dropout = 0.0


def response_logprobs(model: Transformer, hidden: Tensor, response: Tensor, temperature: float
                      ) -> tuple[Tensor, Tensor]:
    """Log-probs (B, N) of the response tokens and the policy's entropy (B, N) at each, from the hidden states
    (B, N, d) of the positions that predict them, under softmax(logits / temperature)."""
    logp = (model.lm_head(hidden).float() / temperature).log_softmax(-1)  # (B, N, V)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, response.unsqueeze(-1)).squeeze(-1), entropy


@dataclass
class Rollout:
    """One batch of rollouts; every tensor has the batch first. N = response columns, P = prompt columns."""

    tokens: Tensor          # (B, P + N) left-padded prompt + right-padded response
    attention_mask: Tensor  # (B, P + N)
    response: Tensor        # (B, N)
    mask: Tensor            # (B, N) float, 1 on generated tokens up to the stop token
    logprobs: Tensor        # (B, N) under the policy that sampled them
    ref_logprobs: Tensor    # (B, N)
    values: Tensor          # (B, N) V(s_t) at rollout time
    kl: Tensor              # (B, N) per-token KL estimate
    rewards: Tensor         # (B, N) −β·kl, plus the score at the last token
    advantages: Tensor      # (B, N) whitened
    returns: Tensor         # (B, N) value targets
    raw_scores: Tensor      # (B,)
    scores: Tensor          # (B,) after normalisation, clipping and the missing-eos penalty
    has_stop: Tensor        # (B,) bool

    @property
    def prompt_length(self) -> int:
        return self.tokens.shape[1] - self.response.shape[1]

    def select(self, index: Tensor) -> "Rollout":
        """The rollouts at `index` (a mini-batch)."""
        return Rollout(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class PPOModule(StageModule):
    """PPO stage (RLHF): policy, value model, frozen reference and reward.

    Args:
        init_from: Policy's starting weights and tokenizer: a lit_llm `.ckpt` (usually the SFT run's last.ckpt)
            or a Hugging Face Llama directory. Required.
        reward_from: A reward-stage checkpoint (`lit-llm fit --config configs/reward/tiny.yaml`), or "gold" for
            the task world's verifiable reward (1 for a correct answer, else 0; prompts need an `answer`).
        ref_from: Reference policy of the KL penalty (same formats as init_from); default: the init_from weights.
        value_model: "separate" (own backbone + head) or "shared" (a head on the policy's trunk).
        value_from: Weights of a separate value model; default: the reward model (with its head), or init_from
            when the reward is gold.
        optim: Optimizer and schedule (over the policy and the value model).
        max_new_tokens: Longest response of a rollout.
        temperature: Sampling temperature of rollouts (> 0).
        top_k: Sample from the k most likely tokens (None: all).
        top_p: Nucleus sampling mass (None: all).
        kl_coef: β, the initial (or fixed) KL coefficient.
        kl_estimator: "k1" (log-ratio; unbiased, can be negative) or "k3" ((r − 1) − log r; unbiased, ≥ 0).
        target_kl: Target per-sequence KL of the adaptive controller; None keeps β fixed.
        kl_horizon: Horizon of the adaptive controller in rollouts.
        gamma: Discount of GAE.
        lam: λ of GAE.
        ppo_epochs: Passes over each rollout batch.
        mini_batch_size: Rollouts per mini-batch (per device).
        gradient_accumulation_steps: Mini-batches per optimizer step.
        clip_range: ε of the clipped policy ratio.
        value_clip_range: How far a value may move from its rollout value in one update.
        vf_coef: Weight of the value loss.
        entropy_coef: Weight of the entropy bonus; 0 = off.
        max_grad_norm: Clip the global gradient norm to this before each optimizer step; None = off.
        normalize_reward: Normalise the reward model's score with its stored mean and std.
        reward_clip: Clip the (normalised) score to ±reward_clip; None = off.
        missing_eos_penalty: Subtracted from the score of responses without a stop token; None = off.
        whiten_advantages: Whiten advantages over the batch (all ranks).
        ptx_coef: Weight of the LM loss on the data module's pretraining blocks (PPO-ptx); needs data.ptx_source.
        value_warmup_rollouts: Rollouts at the start that train only the value model (critic warm-up); the
            policy's first updates then use a fitted baseline instead of a freshly initialised one.
        activation_checkpointing: Recompute each block in the backward pass to save activation memory.
        gold_eval_examples: Held-out task-world questions answered greedily at each validation; 0 disables it.
        gold_max_new_tokens: Tokens generated per gold question.
        gold_max_digits: Difficulty of the gold questions.
        gold_batch_size: Questions generated per batch.
        num_samples: Gold answers logged to MLflow as a table at each validation.
        rollout_table_every: Log a table of rollouts to MLflow every this many rollouts; 0 = off.
        rollout_table_rows: Rows of that table.
    """

    stage = "ppo"

    def __init__(
        self,
        init_from: str,
        reward_from: str,
        ref_from: str | None = None,
        value_model: Literal["separate", "shared"] = "separate",
        value_from: str | None = None,
        optim: OptimConfig | None = None,
        max_new_tokens: int = 16,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        kl_coef: float = 0.05,
        kl_estimator: Literal["k1", "k3"] = "k1",
        target_kl: float | None = None,
        kl_horizon: int = 10000,
        gamma: float = 1.0,
        lam: float = 0.95,
        ppo_epochs: int = 4,
        mini_batch_size: int = 8,
        gradient_accumulation_steps: int = 1,
        clip_range: float = 0.2,
        value_clip_range: float = 0.2,
        vf_coef: float = 0.1,
        entropy_coef: float = 0.0,
        max_grad_norm: float | None = 1.0,
        normalize_reward: bool = True,
        reward_clip: float | None = None,
        missing_eos_penalty: float | None = None,
        whiten_advantages: bool = True,
        ptx_coef: float = 0.0,
        value_warmup_rollouts: int = 0,
        activation_checkpointing: bool = False,
        gold_eval_examples: int = 64,
        gold_max_new_tokens: int = 16,
        gold_max_digits: int = 2,
        gold_batch_size: int = 32,
        num_samples: int = 4,
        rollout_table_every: int = 50,
        rollout_table_rows: int = 8,
    ) -> None:
        super().__init__(optim)
        self.automatic_optimization = False
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for PPO rollouts (sampling), got {temperature}")
        if kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
        if value_model not in ("separate", "shared"):
            raise ValueError(f"value_model must be 'separate' or 'shared', got {value_model!r}")
        if min(ppo_epochs, mini_batch_size, gradient_accumulation_steps) < 1:
            raise ValueError("ppo_epochs, mini_batch_size and gradient_accumulation_steps must be >= 1")
        self.init_from, self.reward_from, self.ref_from = init_from, reward_from, ref_from
        self.value_model, self.value_from = value_model, value_from
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.kl_estimator, self.gamma, self.lam = kl_estimator, gamma, lam
        self.kl = KLController(kl_coef, target_kl, kl_horizon)
        self.ppo_epochs, self.mini_batch_size = ppo_epochs, mini_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.clip_range, self.value_clip_range, self.vf_coef = clip_range, value_clip_range, vf_coef
        self.entropy_coef, self.max_grad_norm = entropy_coef, max_grad_norm
        self.normalize_reward, self.reward_clip = normalize_reward, reward_clip
        self.missing_eos_penalty, self.whiten_advantages, self.ptx_coef = missing_eos_penalty, whiten_advantages, ptx_coef
        self.value_warmup_rollouts = value_warmup_rollouts
        self.gold_eval_examples, self.gold_max_new_tokens = gold_eval_examples, gold_max_new_tokens
        self.gold_max_digits, self.gold_batch_size, self.num_samples = gold_max_digits, gold_batch_size, num_samples
        self.rollout_table_every, self.rollout_table_rows = rollout_table_every, rollout_table_rows

        self.load_starting_model(init_from, activation_checkpointing)
        disable_dropout(self.model)
        self.set_frozen("reference", self.load_reference(ref_from))
        self.reward_mean, self.reward_std = 0.0, 1.0
        self.set_frozen("reward_model", self.load_reward(reward_from))
        self.value = self.build_value_model(activation_checkpointing)
        self.generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None  # restored from a checkpoint, applied in on_fit_start

    # ------------------------------------------------------------------------------------------ models
    def load_reward(self, reward_from: str) -> ScalarHead | None:
        """The frozen reward model (None for the gold reward); keeps its normalisation statistics."""
        if reward_from == GOLD:
            return None
        from lit_llm.stages.reward import load_reward_model

        scorer, tokenizer, self.reward_mean, self.reward_std = load_reward_model(reward_from)
        self.check_tokenizer(tokenizer, f"reward_from {reward_from}")
        return scorer

    def build_value_model(self, activation_checkpointing: bool) -> nn.Module:
        """A separate ScalarHead (backbone + head) or, for "shared", only a head on the policy's trunk."""
        if self.value_model == "shared":
            head = nn.Linear(self.model.config.d_model, 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            return head
        source = self.value_from or (self.init_from if self.reward_from == GOLD else self.reward_from)
        loaded = load_backbone(source)
        self.check_tokenizer(loaded.tokenizer, f"value_from {source}")
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
        logprobs, entropy = response_logprobs(self.model, hidden, response, self.temperature)
        if self.value_model == "shared":
            values = self.value(hidden).squeeze(-1).float()
        else:
            values = self.value(tokens, attention_mask)[:, start:end]
        return logprobs, entropy, values

    @torch.no_grad()
    def reference_logprobs(self, tokens: Tensor, attention_mask: Tensor, response: Tensor) -> Tensor:
        reference = self.frozen("reference")
        start, end = tokens.shape[1] - response.shape[1] - 1, tokens.shape[1] - 1
        hidden = reference.hidden_states(tokens, attention_mask)[:, start:end]
        return response_logprobs(reference, hidden, response, self.temperature)[0]

    # ----------------------------------------------------------------------------------------- rollout
    def rollout_generator(self) -> torch.Generator:
        """This rank's generator for sampling and mini-batch order (seeded from the run's seed and the rank)."""
        if self.generator is None or self.generator.device != self.device:
            generator = torch.Generator(device=self.device)
            if self._generator_state is not None:
                generator.set_state(self._generator_state)
            else:
                seed = torch.initial_seed() if self.base_seed is None else self.base_seed  # None outside fit
                generator.manual_seed(seed + 1000003 * self.global_rank)
            self.generator = generator
        return self.generator

    def decode_responses(self, response: Tensor, mask: Tensor) -> list[str]:
        return [self.tokenizer.decode([t for t, keep in zip(row, keep_row) if keep])
                for row, keep_row in zip(response.tolist(), mask.tolist())]

    @torch.no_grad()
    def score(self, records: list[dict], texts: list[str], tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,) raw scores: the reward model at each sequence's last real token, or the gold reward."""
        if self.reward_from == GOLD:
            return torch.tensor([gold_reward(r, t) for r, t in zip(records, texts)], device=self.device)
        return self.frozen("reward_model").score(tokens, attention_mask).float()

    def shape_scores(self, raw: Tensor, has_stop: Tensor) -> Tensor:
        """Normalise (reward model only), clip, and penalise responses that never stopped."""
        scores = raw
        if self.normalize_reward and self.reward_from != GOLD:
            scores = (scores - self.reward_mean) / self.reward_std
        if self.reward_clip is not None:
            scores = scores.clamp(-self.reward_clip, self.reward_clip)
        if self.missing_eos_penalty is not None:
            scores = torch.where(has_stop, scores, scores - self.missing_eos_penalty)
        return scores

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
        gen = generate(self.model, batch["input_ids"], batch["attention_mask"], self.max_new_tokens,
                       temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                       eos_id=self.gold_stop_ids(), pad_id=self.tokenizer.pad_id, generator=self.rollout_generator())
        timings["generate"] = time.perf_counter() - start
        start = time.perf_counter()
        rollout, texts = self.score_rollout(batch["records"], gen)
        timings["score"] = time.perf_counter() - start
        return rollout, texts

    @torch.no_grad()
    def score_rollout(self, records: list[dict], gen: Generation) -> tuple[Rollout, list[str]]:
        """Log-probs, values, reference log-probs, scores, per-token rewards and advantages of generated
        responses (right-padded after their stop token), and the responses as text."""
        tokens, attention_mask, response = gen.tokens, gen.attention_mask, gen.response
        mask = gen.response_mask.float()
        texts = self.decode_responses(response, gen.response_mask)
        was_training = self.training
        self.eval()
        logprobs, _, values = self.policy_and_values(tokens, attention_mask, response)
        self.train(was_training)
        ref_logprobs = self.reference_logprobs(tokens, attention_mask, response)
        raw = self.score(records, texts, tokens, attention_mask)
        stop_ids = torch.tensor(self.gold_stop_ids(), device=response.device)
        has_stop = (torch.isin(response, stop_ids) & gen.response_mask).any(1)
        scores = self.shape_scores(raw, has_stop)
        kl = kl_penalty(logprobs, ref_logprobs, self.kl_estimator) * mask
        rewards = -self.kl.value * kl
        last = mask.sum(1).long() - 1  # each response's last token: its stop token when it has one
        rewards[torch.arange(len(last), device=rewards.device), last] += scores
        advantages, returns = gae(rewards, values, mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = self.whiten(advantages, mask)
        rollout = Rollout(tokens, attention_mask, response, mask, logprobs, ref_logprobs, values * mask, kl, rewards,
                          advantages, returns, raw.float(), scores.float(), has_stop)
        return rollout, texts

    # ------------------------------------------------------------------------------------------ update
    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps made per rollout batch (what `trainer.global_step` advances by)."""
        batch_size = getattr(getattr(self.trainer, "datamodule", None), "batch_size", self.mini_batch_size)
        minibatches = math.ceil(batch_size / self.mini_batch_size)
        return self.ppo_epochs * math.ceil(minibatches / self.gradient_accumulation_steps)

    def configure_optimizers(self) -> dict:
        total = self.trainer.max_steps
        if total is None or total < 0:
            total = int(self.trainer.estimated_stepping_batches) * self.updates_per_rollout
        return configure_adamw(self, self.optim, total)

    def minibatch_loss(self, mb: Rollout, ptx: Tensor | None, value_only: bool = False
                       ) -> tuple[Tensor, dict[str, Tensor]]:
        """The PPO loss of one mini-batch and its statistics; `value_only` (critic warm-up) keeps the policy
        terms in the graph at weight 0, so every parameter still gets a gradient (as DDP expects)."""
        logprobs, entropy, values = self.policy_and_values(mb.tokens, mb.attention_mask, mb.response)
        policy_loss, clipped = ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, self.clip_range)
        value_loss = ppo_value_loss(values, mb.values, mb.returns, self.value_clip_range)
        stats = {"policy_loss": masked_mean(policy_loss, mb.mask), "value_loss": masked_mean(value_loss, mb.mask),
                 "entropy": masked_mean(entropy, mb.mask), "clip_fraction": masked_mean(clipped.float(), mb.mask),
                 "approx_kl": 0.5 * masked_mean((logprobs - mb.logprobs) ** 2, mb.mask),
                 "ratio": masked_mean(torch.exp(logprobs - mb.logprobs), mb.mask)}
        policy_terms = stats["policy_loss"] - self.entropy_coef * stats["entropy"]
        loss = (0.0 if value_only else 1.0) * policy_terms + self.vf_coef * stats["value_loss"]
        if ptx is not None and self.ptx_coef and not value_only:
            stats["ptx_loss"] = causal_lm_loss(self.model(ptx[:, :-1]), ptx[:, 1:])
            loss = loss + self.ptx_coef * stats["ptx_loss"]
        return loss, {k: v.detach() for k, v in stats.items()}

    @property
    def warming_up_value(self) -> bool:
        """True during the first `value_warmup_rollouts` rollouts (counted in optimizer steps, so resume-safe)."""
        return self.trainer.global_step < self.value_warmup_rollouts * self.updates_per_rollout

    def ppo_update(self, rollout: Rollout, ptx: Tensor | None) -> dict[str, float]:
        """`ppo_epochs` passes over shuffled mini-batches; returns the mean of each statistic. During the value
        warm-up the policy's gradients are dropped before each step, so AdamW leaves it (and its moments) as is."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        value_only = self.warming_up_value
        size = rollout.tokens.shape[0]
        n_mini = math.ceil(size / self.mini_batch_size)
        ptx_chunks = ptx.chunk(n_mini) if ptx is not None and self.ptx_coef else None
        totals: dict[str, float] = {}
        for _ in range(self.ppo_epochs):
            order = torch.randperm(size, generator=self.rollout_generator(), device=self.device)
            for i in range(n_mini):
                mb = rollout.select(order[i * self.mini_batch_size : (i + 1) * self.mini_batch_size])
                loss, stats = self.minibatch_loss(mb, ptx_chunks[i % len(ptx_chunks)] if ptx_chunks else None,
                                                  value_only)
                self.manual_backward(loss / self.gradient_accumulation_steps)
                if (i + 1) % self.gradient_accumulation_steps == 0 or i + 1 == n_mini:
                    if value_only:
                        for param in self.model.parameters():
                            param.grad = None
                    if self.max_grad_norm is not None:
                        self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm,
                                            gradient_clip_algorithm="norm")
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value) / (self.ppo_epochs * n_mini)
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
        metrics = {**stats, **self.rollout_metrics(rollout), "kl": mean_kl, "kl_coef": kl_coef_used,
                   "time_generate_s": timings["generate"], "time_score_s": timings["score"],
                   "time_update_s": timings["update"],
                   "rollout_tokens_per_s": float(rollout.mask.sum()) / max(timings["generate"], 1e-9)}
        self.log_dict({f"train/{k}": float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False,
                      sync_dist=True)
        self.log("train/reward", float(rollout.raw_scores.mean()), prog_bar=True, sync_dist=True)
        if self.rollout_table_every and batch_idx % self.rollout_table_every == 0:
            self.log_rollouts(batch, rollout, texts)

    def rollout_metrics(self, rollout: Rollout) -> dict[str, float]:
        values, returns, mask = rollout.values, rollout.returns, rollout.mask
        residual_var = masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask)
        returns_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
        return {"reward_normalized": float(rollout.scores.mean()),
                "response_length": float(mask.sum(1).mean()),
                "eos_rate": float(rollout.has_stop.float().mean()),
                "explained_variance": float(1.0 - residual_var / returns_var.clamp(min=1e-8)),
                "value_mean": float(masked_mean(values, mask)),
                "returns_mean": float(masked_mean(returns, mask))}

    def log_rollouts(self, batch: dict[str, Any], rollout: Rollout, texts: list[str]) -> None:
        """A table of this rank's first rollouts: prompt, response, raw and shaped score, KL."""
        n = min(self.rollout_table_rows, len(texts))
        kl = (rollout.kl * rollout.mask).sum(1)
        rows = [{"prompt": batch["records"][i].get("prompt", ""), "response": texts[i],
                 "reward": round(float(rollout.raw_scores[i]), 4), "score": round(float(rollout.scores[i]), 4),
                 "kl": round(float(kl[i]), 4)} for i in range(n)]
        log_table(self.trainer, rows, f"rollouts/rollout_{self.trainer.fit_loop.epoch_loop.batch_idx:07d}.json")

    # ------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Greedy answers to the validation prompts, scored like rollouts (val/reward, val/response_length)."""
        gen = generate(self.model, batch["input_ids"], batch["attention_mask"], self.max_new_tokens,
                       temperature=0.0, eos_id=self.gold_stop_ids(), pad_id=self.tokenizer.pad_id)
        texts = self.decode_responses(gen.response, gen.response_mask)
        raw = self.score(batch["records"], texts, gen.tokens, gen.attention_mask)
        size = len(texts)
        self.log("val/reward", raw.mean(), batch_size=size, sync_dist=True, prog_bar=True)
        self.log("val/response_length", gen.response_mask.sum(1).float().mean(), batch_size=size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.gold_eval_examples and not self.trainer.sanity_checking:
            self.run_gold_eval()

    # ------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also store the KL coefficient and every rank's rollout generator state (gathered to rank 0)."""
        super().on_save_checkpoint(checkpoint)
        states = self.gathered(self.rollout_generator().get_state())
        checkpoint[PPO_STATE_KEY] = {"kl_coef": self.kl.value, "generator_states": states}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(PPO_STATE_KEY)
        if state is None:
            return
        self.kl.value = float(state["kl_coef"])
        states = state["generator_states"]
        rank = self.global_rank
        self._generator_state = states[rank].cpu() if rank < len(states) else None
        self.generator = None
