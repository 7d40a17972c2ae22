"""Rollouts: sampling responses from a policy and scoring them, shared by PPO, rejection sampling (and any stage
that learns from its own samples).

- `sample`: responses to a batch of left-padded prompts with the KV cache, decoded to text, with the sampler's
  log-probs (`generation.Generation`).
- `response_logprobs`: a training forward's log-probs and entropies of those responses, under the same
  softmax(logits / temperature) the sampler drew from.
- `RewardSource`: where a response's score comes from, "gold" (the task world's verifier: 1 for a correct answer,
  else 0) or a reward-model checkpoint (its scalar at the response's last token), with its normalisation, and the
  one check that it reads the policy's tokens. `RewardShaping` turns the raw score into the reward a stage
  optimises (normalised, clipped, penalised when the response never stopped).
- `RolloutConfig`: how a stage samples; `disable_dropout` keeps the training forward's log-probs equal to the
  sampler's; `KLConfig`/`KLController`: the KL penalty to a reference and its coefficient.

Deliberate simplification: a reward model must share the policy's tokenizer (it scores the policy's token ids).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lit_llm.checkpoint import load_backbone
from lit_llm.generation import Generation, generate
from lit_llm.model import ScalarHead, Transformer
from lit_llm.shared_prefix import prompt_groups, shared_prefix_hidden
from lit_llm.tokenizer import Tokenizer
from lit_llm.world import gold_reward

GOLD = "gold"
FORMAT = "format"
REWARD_STAGE = "reward"


@dataclass
class RolloutConfig:
    """How responses are sampled.

    Args:
        max_new_tokens: Longest response; a response stops earlier at the chat's end-of-turn or eos.
        temperature: Sampling temperature; 0 = greedy.
        top_k: Sample from the k most likely tokens (None: all).
        top_p: Nucleus sampling mass (None: all). With top_k or top_p the sampler differs from the policy a
            stage optimises (its log-probs are the untruncated policy's).
    """

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None



@dataclass
class RewardShaping:
    """How a raw score becomes the reward a stage optimises.

    Args:
        normalize: Normalise a reward model's score with its stored mean and std (the gold reward is kept as is).
        clip: Clip the (normalised) score to ±clip; None = off.
        missing_eos_penalty: Subtracted from the score of a response that never stopped; None = off.
    """

    normalize: bool = True
    clip: float | None = None
    missing_eos_penalty: float | None = None


@dataclass
class Samples:
    """Sampled responses: the generation (tokens, response, sampler log-probs, masks) and the responses as text."""

    generation: Generation
    texts: list[str]


def decode_responses(tokenizer: Tokenizer, response: Tensor, mask: Tensor) -> list[str]:
    """The text of each row's generated tokens up to (and including) its stop token; special tokens dropped."""
    return [tokenizer.decode([t for t, keep in zip(row, keep_row) if keep])
            for row, keep_row in zip(response.tolist(), mask.tolist())]


@torch.no_grad()
def sample(model: Transformer, tokenizer: Tokenizer, prompt_ids: Tensor, prompt_mask: Tensor,
           config: RolloutConfig, stop_ids: list[int], generator: torch.Generator | None = None, repeats: int = 1
           ) -> Samples:
    """Responses to (U, T) left-padded prompts, `repeats` per prompt (row u * repeats + i answers prompt u, whose
    prompt pass runs once), sampled with the KV cache; each row stops at one of `stop_ids`."""
    generation = generate(model, prompt_ids, prompt_mask, config.max_new_tokens, temperature=config.temperature,
                          top_k=config.top_k, top_p=config.top_p, eos_id=stop_ids, pad_id=tokenizer.pad_id,
                          generator=generator, repeats=repeats)
    return Samples(generation, decode_responses(tokenizer, generation.response, generation.response_mask))


def response_logprobs(model: Transformer, hidden: Tensor, response: Tensor, temperature: float
                      ) -> tuple[Tensor, Tensor]:
    """Log-probs (B, N) of the response tokens and the policy's entropy (B, N) at each, from the hidden states
    (B, N, d) of the positions that predict them, under softmax(logits / temperature): the distribution the
    sampler drew from, so before any update they equal the sampler's log-probs."""
    logp = (model.lm_head(hidden).float() / temperature).log_softmax(-1)  # (B, N, V)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, response.unsqueeze(-1)).squeeze(-1), entropy


def sequence_logprobs(model: Transformer, tokens: Tensor, attention_mask: Tensor, response: Tensor,
                      temperature: float) -> tuple[Tensor, Tensor]:
    """`response_logprobs` of the responses that end the (B, P + N) sequences `tokens`, from one forward pass: the
    positions that predict them run from the prompt's last position to the response's second-to-last."""
    start, end = tokens.shape[1] - response.shape[1] - 1, tokens.shape[1] - 1
    hidden = model.hidden_states(tokens, attention_mask)[:, start:end]
    return response_logprobs(model, hidden, response, temperature)


def shared_prompt_logprobs(model: Transformer, tokens: Tensor, attention_mask: Tensor, response: Tensor,
                           group: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """`sequence_logprobs` with each distinct prompt run once: rows with the same `group` id (B,) continue the
    same prompt (the first P = width − N columns of `tokens` and `attention_mask`), whose keys/values the rows then
    share (`lit_llm.shared_prefix`). The same values as one forward of the whole sequences, up to float rounding;
    G samples per prompt cost one prompt pass instead of G."""
    width = tokens.shape[1] - response.shape[1]
    rows, first = prompt_groups(group)
    last, hidden = shared_prefix_hidden(model, tokens[first, :width], attention_mask[first, :width], rows,
                                        tokens[:, width:-1], attention_mask[:, width:-1])
    return response_logprobs(model, torch.cat([last[rows, None], hidden], 1), response, temperature)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of a model to 0 (modules and the attention's SDPA dropout): with dropout on,
    the training forward's log-probs would differ from the sampler's and the first update's ratio would not be 1."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    if hasattr(getattr(model, "config", None), "dropout"):
        model.config.dropout = 0.0


def stopped(generation: Generation, stop_ids: list[int]) -> Tensor:
    """(B,) bool: the response ended with a stop token (else it ran to max_new_tokens)."""
    stops = torch.tensor(stop_ids, device=generation.response.device)
    return (torch.isin(generation.response, stops) & generation.response_mask).any(1)


# --------------------------------------------------------------------------------------------------- KL penalty
@dataclass
class KLConfig:
    """The KL penalty to the reference, β·KL per token, and its controller.

    Args:
        coef: β, the initial (or fixed) KL coefficient.
        estimator: "k1" (log-ratio; unbiased, can be negative) or "k3" ((r − 1) − log r; unbiased, ≥ 0).
        target: Target per-sequence KL of the adaptive controller; None keeps β fixed.
        horizon: Horizon of the adaptive controller in rollouts.
    """

    coef: float = 0.05
    estimator: Literal["k1", "k3"] = "k1"
    target: float | None = None
    horizon: int = 10000

    def __post_init__(self) -> None:
        if self.estimator not in ("k1", "k3"):
            raise ValueError(f"kl.estimator must be 'k1' or 'k3', got {self.estimator!r}")


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
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)  # proportional control, clipped to ±20%
        self.value *= 1.0 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------------- reward sources
class RewardSource:
    """Scores responses: `score` gives the raw score (B,) of each, `normalize` maps raw scores to a scale a stage
    can optimise (identity, unless a reward model carries statistics).

    Args:
        name: What `reward_from` said ("gold" or the checkpoint's path), for messages and params.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def model(self) -> nn.Module | None:
        """The frozen model behind the scores, if any (a stage moves it to its device)."""
        return None

    def score(self, records: list[dict], texts: list[str], generation: Generation) -> Tensor:
        raise NotImplementedError

    def normalize(self, raw: Tensor) -> Tensor:
        return raw

    def shape(self, raw: Tensor, has_stop: Tensor, shaping: RewardShaping) -> Tensor:
        """The reward a stage optimises from raw scores (B,): normalised, clipped, penalised when unstopped."""
        scores = self.normalize(raw) if shaping.normalize else raw
        if shaping.clip is not None:
            scores = scores.clamp(-shaping.clip, shaping.clip)
        if shaping.missing_eos_penalty is not None:
            scores = torch.where(has_stop, scores, scores - shaping.missing_eos_penalty)
        return scores


def gold_correct(records: list[dict], texts: list[str]) -> Tensor | None:
    """(B,) 1.0 where a response states its record's gold answer, else 0.0; None when the records carry none."""
    if not records or not all("answer" in r for r in records):
        return None
    return torch.tensor([gold_reward(r, t) for r, t in zip(records, texts)])


class GoldReward(RewardSource):
    """The task world's verifier: 1.0 for a response stating the record's gold `answer`, else 0.0 (RL with
    verifiable rewards; the records must carry `answer`)."""

    def score(self, records: list[dict], texts: list[str], generation: Generation) -> Tensor:
        return torch.tensor([gold_reward(r, t) for r, t in zip(records, texts)], device=generation.tokens.device)


class RewardModelScore(RewardSource):
    """A reward model's scalar at each sequence's last real token (the stop token, never a pad: it was trained on
    sequences ending there), normalised as (r − mean) / std with the statistics stored after its training.

    Args:
        name: The checkpoint's path.
        scorer: The reward model (backbone + head), frozen.
        mean: Mean of its rewards over its training responses.
        std: Their standard deviation.
    """

    def __init__(self, name: str, scorer: ScalarHead, mean: float, std: float) -> None:
        super().__init__(name)
        self.scorer, self.mean, self.std = scorer.requires_grad_(False).eval(), mean, std

    @property
    def model(self) -> nn.Module:
        return self.scorer

    @torch.no_grad()
    def score(self, records: list[dict], texts: list[str], generation: Generation) -> Tensor:
        device = generation.tokens.device
        if next(self.scorer.parameters()).device != device:
            self.scorer.to(device)
        return self.scorer.score(generation.tokens, generation.attention_mask).float()

    def normalize(self, raw: Tensor) -> Tensor:
        return (raw - self.mean) / self.std


def load_reward_model(path: str | Path) -> tuple[ScalarHead, Tokenizer, float, float]:
    """A trained reward model for scoring: (ScalarHead in eval mode, tokenizer, mean, std).

    Score a batch with `scorer.score(ids, attention_mask)` (the value at the last real token, any padding side)
    and normalise as (r - mean) / std. Sequences should end at the response's end-of-turn token, as in training.

    Args:
        path: A `.ckpt` written by the reward stage; other stages' checkpoints are refused.
    """
    loaded = load_backbone(path)
    if loaded.stage != REWARD_STAGE:
        raise ValueError(f"{path} was written by the {loaded.stage!r} stage, not by the reward stage: it has no "
                         f"trained reward head. Train one with `lit-llm fit --config configs/reward/tiny.yaml` "
                         f"(model: lit_llm.RewardModule) and pass its last.ckpt")
    scorer = ScalarHead(loaded.model)
    state = loaded.state_dict
    scorer.head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
    if "reward_stats" not in loaded.meta:
        warnings.warn(f"{path} has no reward statistics (written before training ended?); "
                      f"mean/std are {float(state['reward_mean'])}/{float(state['reward_std'])}", stacklevel=2)
    return scorer.eval(), loaded.tokenizer, float(state["reward_mean"]), float(state["reward_std"])


class FormatReward(RewardSource):
    """1.0 for a well-formed answer: a single non-empty line that closes its turn (ends with a stop token within
    the length limit), else 0.0. A shaping bonus beside the gold reward, never a substitute for it."""

    def __init__(self, name: str, stop_ids: list[int]) -> None:
        super().__init__(name)
        self.stop_ids = stop_ids

    def score(self, records: list[dict], texts: list[str], generation: Generation) -> Tensor:
        closed = stopped(generation, self.stop_ids).tolist()
        return torch.tensor([float(ok and len(text.strip().splitlines()) == 1) for ok, text in zip(closed, texts)],
                            device=generation.tokens.device)


class WeightedRewards(RewardSource):
    """The weighted sum of several sources' scores, each normalised as its own source normalises it."""

    def __init__(self, sources: list[RewardSource], weights: list[float]) -> None:
        super().__init__(" + ".join(f"{w:g}*{s.name}" for s, w in zip(sources, weights)))
        self.sources, self.weights = sources, weights

    def score(self, records: list[dict], texts: list[str], generation: Generation) -> Tensor:
        return sum(w * s.normalize(s.score(records, texts, generation)) for s, w in zip(self.sources, self.weights))


def reward_sources(names: list[str], weights: list[float] | None, policy_tokenizer: Tokenizer,
                   stop_ids: list[int]) -> RewardSource:
    """One source, or the weighted sum of several: "gold", "format" (`FormatReward`) or reward-stage checkpoints."""
    weights = [1.0] * len(names) if weights is None else list(weights)
    if len(weights) != len(names) or not names:
        raise ValueError(f"reward_weights {weights} must give one weight per reward_from source {names}")
    sources = [FormatReward(name, stop_ids) if name == FORMAT else reward_source(name, policy_tokenizer)
               for name in names]
    return sources[0] if len(sources) == 1 and weights[0] == 1.0 else WeightedRewards(sources, weights)


def reward_source(reward_from: str, policy_tokenizer: Tokenizer) -> RewardSource:
    """The source `reward_from` names: "gold", or a reward-stage checkpoint, which must read the policy's tokens."""
    if reward_from == GOLD:
        return GoldReward(GOLD)
    scorer, tokenizer, mean, std = load_reward_model(reward_from)
    if (difference := policy_tokenizer.difference(tokenizer)) is not None:
        raise ValueError(f"the reward model {reward_from} has a different tokenizer than the policy: {difference} "
                         f"(here = the policy's); its token ids would mean other text")
    return RewardModelScore(str(reward_from), scorer, mean, std)
