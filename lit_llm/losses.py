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
