"""The pieces of a PPO iteration besides the module: its option sections (`PPOLoss`, `PPOUpdate`), the rollout
batch it learns from (`Rollout`) and that batch's statistics (`value_metrics`)."""

from dataclasses import dataclass, fields

from torch import Tensor

from lit_llm.losses import masked_mean


@dataclass
class PPOLoss:
    """The objective of each mini-batch and the advantages it uses.

    Args:
        gamma: Discount of GAE.
        lam: λ of GAE.
        whiten_advantages: Whiten advantages over the batch (all ranks).
        clip_range: ε of the clipped policy ratio.
        value_clip_range: How far a value may move from its rollout value in one update.
        vf_coef: Weight of the value loss.
        entropy_coef: Weight of the entropy bonus; 0 = off.
        ptx_coef: Weight of the LM loss on the data module's pretraining blocks (PPO-ptx); needs data.ptx_source.
    """

    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    ptx_coef: float = 0.0


@dataclass
class PPOUpdate:
    """How each rollout batch is learned from.

    Args:
        ppo_epochs: Passes over each rollout batch.
        mini_batch_size: Rollouts per mini-batch (per device).
        gradient_accumulation_steps: Mini-batches per optimizer step.
        max_grad_norm: Clip the global gradient norm to this before each optimizer step; None = off.
        value_warmup_rollouts: Rollouts at the start that train only the value model (critic warm-up); the policy's
            first updates then use a fitted baseline instead of a freshly initialised one.
    """

    ppo_epochs: int = 4
    mini_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    value_warmup_rollouts: int = 0

    def __post_init__(self) -> None:
        if min(self.ppo_epochs, self.mini_batch_size, self.gradient_accumulation_steps) < 1:
            raise ValueError("ppo_epochs, mini_batch_size and gradient_accumulation_steps must be >= 1")


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


def value_metrics(rollout: Rollout) -> dict[str, float]:
    """A rollout batch's statistics: the shaped reward, response lengths, stop rate and how well the values fit
    the returns (explained variance)."""
    values, returns, mask = rollout.values, rollout.returns, rollout.mask
    residual_var = masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask)
    returns_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    return {"reward_normalized": float(rollout.scores.mean()),
            "response_length": float(mask.sum(1).mean()),
            "eos_rate": float(rollout.has_stop.float().mean()),
            "explained_variance": float(1.0 - residual_var / returns_var.clamp(min=1e-8)),
            "value_mean": float(masked_mean(values, mask)),
            "returns_mean": float(masked_mean(returns, mask))}

