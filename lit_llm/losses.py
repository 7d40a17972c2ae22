"""Loss functions, one pure function per objective.

Every function takes tensors and returns tensors; none holds state or touches a module. Shapes use
B = batch, T = sequence length, V = vocabulary. `IGNORE_INDEX` marks target positions that carry no loss.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token under `logits`.

    Args:
        logits: (B, T, V) unnormalised scores; position t predicts `targets[:, t]`.
        targets: (B, T) token ids; positions equal to `IGNORE_INDEX` get log-prob 0.

    Returns:
        (B, T) float32 log-probs, 0 where the target is ignored.
    """
    valid = targets != IGNORE_INDEX
    safe = targets.masked_fill(~valid, 0)
    # log_softmax in float32: bf16 log-probs lose the precision DPO/PPO ratios need.
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(~valid, 0.0)


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not `IGNORE_INDEX`.

    The caller shifts: `targets[:, t]` is the token that follows input position t. Used by pretraining (causal
    and masked objectives, where unmasked positions are ignored) and SFT (prompt tokens ignored).

    Args:
        logits: (B, T, V).
        targets: (B, T).

    Returns:
        Scalar mean over non-ignored positions (0 with a valid graph when there are none).
    """
    flat_targets = targets.reshape(-1)
    if not bool((flat_targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), flat_targets, ignore_index=IGNORE_INDEX)


def reward_pair_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley–Terry pairwise loss of a reward model, per pair: −log σ(r_c − r_r − m).

    The reward-model objective of InstructGPT (Ouyang et al. 2022, eq. 1), with the optional margin of Llama 2
    (Touvron et al. 2023, eq. 2): a pair with margin m counts as won only once r_c exceeds r_r by m.

    Args:
        chosen: (P,) rewards of the preferred responses.
        rejected: (P,) rewards of the other responses.
        margin: (P,) per-pair margins, or None for 0.

    Returns:
        (P,) float32 losses (the caller weights and reduces them).
    """
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    return -F.logsigmoid(diff)  # logsigmoid is stable for large |diff|, unlike log(sigmoid(.))


def reward_centering_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Reward-centring penalty per pair: (r_c + r_r)², which keeps rewards near zero mean.

    The Bradley–Terry loss only sees reward differences, so the reward's offset drifts freely; Eisenstein et al.
    2023 ("Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking") add
    coef · (r_c + r_r)² (coef 0.01) to pin it. The caller multiplies by the coefficient.

    Args:
        chosen: (P,) rewards of the preferred responses.
        rejected: (P,) rewards of the other responses.

    Returns:
        (P,) float32 penalties.
    """
    return (chosen.float() + rejected.float()) ** 2


def reward_regression_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error of a reward model regressing scalar scores, per response: (r − s)².

    Args:
        predicted: (N,) rewards.
        target: (N,) scores.

    Returns:
        (N,) float32 squared errors (their mean is the MSE).
    """
    return (predicted.float() - target.float()) ** 2


# ------------------------------------------------------------------------------------------ direct preference
# The DPO family works on the per-pair log-ratio difference
#     h = (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x)),
# sequence log-probs summed over response tokens. Each function below maps h (P,) to per-pair losses (P,); the
# caller weights and reduces them (the DPO stage: sum(weight · loss) / num_prompts, i.e. the mean over pairs for
# plain pair data).


def dpo_logratios(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor) -> torch.Tensor:
    """h = (log π_c − log π_ref,c) − (log π_r − log π_ref,r), per pair.

    Args:
        policy_chosen: (P,) policy sequence log-probs of the preferred responses.
        policy_rejected: (P,) policy sequence log-probs of the other responses.
        ref_chosen: (P,) reference log-probs of the preferred responses.
        ref_rejected: (P,) reference log-probs of the other responses.

    Returns:
        (P,) float32 log-ratio differences.
    """
    return (policy_chosen.float() - ref_chosen.float()) - (policy_rejected.float() - ref_rejected.float())


def dpo_sigmoid_loss(logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO loss per pair: −log σ(β·h) (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7).

    Args:
        logratios: (P,) h from `dpo_logratios`.
        beta: Strength β of the implicit KL penalty towards the reference.

    Returns:
        (P,) float32 losses; ln 2 when the policy equals the reference (h = 0).
    """
    return -F.logsigmoid(beta * logratios.float())


def cdpo_loss(logratios: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """Conservative (label-smoothed) DPO per pair: −(1−ε)·log σ(β·h) − ε·log σ(−β·h).

    cDPO (Mitchell 2023, "A note on DPO with noisy preferences"): each label is assumed flipped with probability
    ε, so the target preference probability is 1−ε instead of 1 and the loss no longer pushes h to infinity.
    ε = 0 gives `dpo_sigmoid_loss`.

    Args:
        logratios: (P,) h from `dpo_logratios`.
        beta: Strength β of the implicit KL penalty.
        label_smoothing: Label-flip probability ε in [0, 0.5).

    Returns:
        (P,) float32 losses.
    """
    z = beta * logratios.float()
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def ipo_loss(logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO loss per pair: (h − 1/(2β))² (Azar et al. 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences", eq. 17, with τ = β).

    Regresses h to a finite target instead of pushing it up without bound, so it does not overfit
    deterministic preferences. h uses summed (not length-averaged) sequence log-probs.

    Args:
        logratios: (P,) h from `dpo_logratios`.
        beta: Regularisation τ; the target margin is 1/(2τ).

    Returns:
        (P,) float32 losses.
    """
    return (logratios.float() - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """Hinge (SLiC) loss per pair: max(0, 1 − β·h).

    SLiC-HF (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", eq. 1) uses the
    calibration loss max(0, δ − log π(y_c) + log π(y_r)); here on the reference-normalised log-ratios as in
    the DPO family, with margin δ = 1/β.

    Args:
        logratios: (P,) h from `dpo_logratios`.
        beta: Inverse margin 1/δ.

    Returns:
        (P,) float32 losses.
    """
    return torch.relu(1.0 - beta * logratios.float())


def rpo_nll_loss(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Length-normalised NLL of the preferred responses per pair: −log π(y_c|x) / |y_c|.

    The RPO term (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1): the DPO loss plus
    α times this keeps the chosen responses' likelihood from falling. The caller multiplies by α.

    Args:
        chosen_logps: (P,) policy sequence log-probs of the preferred responses.
        chosen_tokens: (P,) their response token counts.

    Returns:
        (P,) float32 mean NLL per chosen token.
    """
    return -chosen_logps.float() / chosen_tokens.float().clamp(min=1.0)


# ------------------------------------------------------------------------------------------------ PPO (RLHF)
# Shapes: B rollouts, T response positions; `mask` (B, T) is 1 on generated tokens (up to and including eos) and 0
# on padding after it. Per-token values are returned; the caller reduces with `masked_mean`.


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is 1 (0 when the mask is empty). Shapes broadcast."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values − mean) / std over the masked positions (PPO's advantage whitening); padding stays 0.

    Args:
        values: (B, T).
        mask: (B, T).
        shift_mean: False keeps the mean (only rescales), as some implementations do for rewards.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (Schulman 2020, "Approximating KL divergence").

    With log-ratio d = log π − log π_ref at the sampled token: k1 = d (unbiased, can be negative),
    k2 = d²/2 (biased, low variance), k3 = (e^{−d} − 1) + d (unbiased, always ≥ 0).

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the policy.
        ref_logprobs: (B, T) their log-probs under the reference.
        estimator: "k1", "k2" or "k3".

    Returns:
        (B, T) per-token estimates (0 where the two agree).
    """
    d = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"KL estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (Schulman et al. 2016, eq. 16).

    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1}, where V and A past the last generated token are 0
    (the episode ends at eos or at max_new_tokens). Returns are A + V, the value targets.

    Args:
        rewards: (B, T) per-token rewards (e.g. −β·KL on every token, plus the score at the last token).
        values: (B, T) value estimates V(s_t).
        mask: (B, T) 1 on generated tokens, right-padded.
        gamma: Discount.
        lam: GAE λ.

    Returns:
        advantages (B, T) and returns (B, T), both 0 on padding.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards.float() * mask, values.float() * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    clip_range: float = 0.2, clip_range_high: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token (Schulman et al. 2017, eq. 7), as a loss to minimise.

    ratio = π/π_old = exp(logprobs − old_logprobs); loss = max(−A·ratio, −A·clip(ratio, 1−ε_low, 1+ε_high)),
    with ε_high = ε_low unless given (DAPO's clip-higher, Yu et al. 2025: a larger ε_high lets unlikely tokens
    rise).

    Args:
        logprobs: (B, T) log-probs of the rollout tokens under the current policy.
        old_logprobs: (B, T) their log-probs when the rollout was generated.
        advantages: (B, T) advantages (whitened, or a sequence's group-relative advantage on each of its tokens).
        clip_range: ε_low (and ε_high when `clip_range_high` is None).
        clip_range_high: ε_high.

    Returns:
        per-token losses (B, T) and a (B, T) bool tensor marking where clipping was active (for clip_fraction;
        where the ratio is above 1 the upper bound clipped, else the lower).
    """
    high = clip_range if clip_range_high is None else clip_range_high
    ratio = torch.exp(logprobs.float() - old_logprobs.float())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def group_advantages(rewards: torch.Tensor, baseline: str = "mean", scale_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """Critic-free advantages of G responses per prompt from their rewards (B, G), one per response.

    baseline "mean": A_i = r_i − mean(r) (GRPO, Shao et al. 2024), divided by std(r) + eps when `scale_by_std`
    (Dr. GRPO, Liu et al. 2025, drops that division: it up-weights groups that are almost all right or wrong).
    baseline "leave_one_out": A_i = r_i − mean_{j≠i} r_j (RLOO, Ahmadian et al. 2024), never scaled. A group whose
    rewards are all equal gets 0 for every response: it carries no learning signal.
    """
    if baseline == "leave_one_out":
        group = rewards.shape[1]
        return (rewards - rewards.mean(1, keepdim=True)) * group / (group - 1)
    centred = rewards - rewards.mean(1, keepdim=True)
    return centred / (rewards.std(1, keepdim=True) + eps) if scale_by_std else centred


def aggregate_token_loss(losses: torch.Tensor, mask: torch.Tensor, mode: str, max_tokens: int) -> torch.Tensor:
    """Reduce per-token policy losses (B, T) over a batch's response tokens (mask (B, T)) to a scalar.

    "sequence": each response's token mean, averaged over responses (GRPO: a long response's tokens weigh less);
    "token": the mean over every token of the batch (DAPO); "constant": the sum over tokens divided by
    B · max_tokens, the same normaliser for every batch (Dr. GRPO: no length bias at all).
    """
    mask = mask.float()
    if mode == "sequence":
        return ((losses * mask).sum(1) / mask.sum(1).clamp(min=1.0)).mean()
    if mode == "token":
        return (losses * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "constant":
        return (losses * mask).sum() / (losses.shape[0] * max_tokens)
    raise ValueError(f"loss aggregation must be 'sequence', 'token' or 'constant', got {mode!r}")


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025) per response (B,): 0 up to max_tokens − buffer tokens,
    then falling linearly to −1 at max_tokens (a response that reaches the limit gets −1)."""
    start = max_tokens - buffer
    return -((lengths.float() - start) / max(buffer, 1)).clamp(min=0.0, max=1.0)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   clip_range: float = 0.2) -> torch.Tensor:
    """Clipped value loss per token: ½·max((V − R)², (clip(V, V_old ± ε) − R)²) (as in OpenAI's baselines PPO2).

    Args:
        values: (B, T) current value estimates.
        old_values: (B, T) value estimates at rollout time.
        returns: (B, T) targets from `gae`.
        clip_range: ε on how far V may move from V_old in one update.

    Returns:
        (B, T) per-token losses.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
