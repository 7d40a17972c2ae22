"""The pieces of a GRPO iteration besides the module: its option sections (`GroupConfig`, `GRPOLoss`,
`GRPOUpdate`, `Monitors`), the batch of groups it learns from (`GroupRollout`) and joining two generations of the
same prompts (`join_generations`, for dynamic sampling)."""

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from lit_llm.generation import Generation


@dataclass
class GroupConfig:
    """How each prompt's group of responses becomes advantages.

    Args:
        size: G, responses sampled per prompt.
        baseline: "mean" (GRPO, Dr. GRPO, DAPO: the group's mean reward) or "leave_one_out" (RLOO: the mean of the
            other G − 1).
        scale_by_std: Divide by the group's reward std (GRPO, DAPO); False = Dr. GRPO's unscaled advantages.
        dynamic_sampling: What to do with groups whose rewards are all equal (no signal): "off" (they stay in the
            loss's denominators), "drop" (left out of the loss: DAPO's filter) or "resample" (sample their prompts
            again, up to `max_resample` times, then drop what is still all equal).
        max_resample: Re-draws per step with "resample".
    """

    size: int = 8
    baseline: str = "mean"
    scale_by_std: bool = True
    dynamic_sampling: str = "off"
    max_resample: int = 2

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"group.size must be >= 2 (advantages compare responses), got {self.size}")
        if self.baseline not in ("mean", "leave_one_out"):
            raise ValueError(f"group.baseline must be 'mean' or 'leave_one_out', got {self.baseline!r}")
        if self.dynamic_sampling not in ("off", "drop", "resample"):
            raise ValueError(f"group.dynamic_sampling must be 'off', 'drop' or 'resample', got "
                             f"{self.dynamic_sampling!r}")


@dataclass
class GRPOLoss:
    """The objective.

    Args:
        clip_range: ε_low of the clipped ratio.
        clip_range_high: ε_high (DAPO's clip-higher, e.g. 0.28); None = ε_low.
        aggregation: "sequence" (GRPO: token mean per response, then mean), "token" (DAPO: mean over every token
            of the mini-batch) or "constant" (Dr. GRPO: sum over tokens / (rows · max_new_tokens)).
        kl_coef: Weight of the k3 KL to the reference in the loss; 0 = off (DAPO, Dr. GRPO). The KL is logged
            either way.
        overlong_buffer: DAPO's soft overlong penalty: the last this-many tokens before max_new_tokens cost up to
            `overlong_weight` of reward; 0 = off.
        overlong_weight: Size of that penalty at the limit.
        positive_nll_coef: Weight of a language-model loss (token-mean NLL) on the responses whose reward reaches
            `positive_reward` (VAPO's positive-example LM loss, Yue et al. 2025): it imitates the correct answers
            the policy found, as RPO's NLL term does for DPO; 0 = off (plain GRPO).
        positive_reward: The reward a response needs to count as positive (1.0: the gold verifier's "correct").
    """

    clip_range: float = 0.2
    clip_range_high: float | None = None
    aggregation: str = "sequence"
    kl_coef: float = 0.0
    overlong_buffer: int = 0
    overlong_weight: float = 1.0
    positive_nll_coef: float = 0.0
    positive_reward: float = 1.0


@dataclass
class GRPOUpdate:
    """How each batch of groups is learned from.

    Args:
        epochs: Passes over the batch (more than 1: later mini-batches learn off-policy, through the ratio).
        mini_batch_size: Responses per mini-batch and optimizer step (per device).
        max_grad_norm: Clip the gradient norm before each step; None = off.
        recompute_logprobs: Score the responses with a training forward (and the reference) after sampling, for
            the ratio's denominator ("recompute old log-probs"), checking every sampled token. False uses the
            sampler's log-probs, which are the same numbers (same weights, same softmax(logits / T)); the first
            mini-batch's forward checks them, and the reference scores only that mini-batch (for the KL
            monitor) unless `loss.kl_coef` > 0: one forward pass over the batch fewer, twice.
    """

    epochs: int = 1
    mini_batch_size: int = 64
    max_grad_norm: float | None = 1.0
    recompute_logprobs: bool = True


@dataclass
class Monitors:
    """When a run says it is learning nothing (a warning, also in the log file), besides the metrics.

    Args:
        zero_variance_warn: Warn when more than this share of groups have all-equal rewards (too hard or too easy:
            no gradient).
        truncation_warn: Warn when more than this share of responses reach max_new_tokens without stopping.
    """

    zero_variance_warn: float = 0.8
    truncation_warn: float = 0.5


@dataclass
class GroupRollout:
    """A batch of groups: row g·G + i is response i to prompt g. N = response columns."""

    tokens: Tensor          # (B, P + N) left-padded prompt + right-padded response
    attention_mask: Tensor  # (B, P + N)
    response: Tensor        # (B, N)
    group: Tensor           # (B,) long: the prompt (g) each row answers; rows of a group share its prompt pass
    mask: Tensor            # (B, N) float: generated tokens up to the stop token, 0 for dropped groups
    logprobs: Tensor        # (B, N) before any update (the ratio's denominator): training forward's or sampler's
    ref_logprobs: Tensor | None  # (B, N) the reference's (None: not computed, see GRPOUpdate.recompute_logprobs)
    advantages: Tensor      # (B,) one per response
    positive: Tensor        # (B, N) float: the generated tokens of responses with a positive reward (for the NLL)

    def select(self, index: Tensor) -> "GroupRollout":
        return GroupRollout(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                               for f in fields(self)})


def join_generations(first: Generation, second: Generation, pad_id: int) -> Generation:
    """Rows of two generations of equally padded prompts in one, responses right-padded to the wider one."""
    width = max(first.response.shape[1], second.response.shape[1])

    def pad(gen: Generation) -> list[Tensor]:
        extra = width - gen.response.shape[1]

        def right(t: Tensor, value: float) -> Tensor:
            return torch.nn.functional.pad(t, (0, extra), value=value)
        return [right(gen.tokens, pad_id), right(gen.response, pad_id), right(gen.logprobs, 0.0),
                right(gen.response_mask, False), right(gen.attention_mask, 0)]

    return Generation(*[torch.cat(pair) for pair in zip(pad(first), pad(second))])
