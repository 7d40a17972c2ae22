"""Running each shared prompt once. A prompt's G sampled responses (GRPO) or its chosen and rejected responses (DPO)
all start with the same tokens; instead of every row running them again, the prompts run once and their keys and
values are shared by the rows that continue them (`attention.SharedPrefixCache`; Prefix Grouper, Liu et al. 2025).
The results equal one forward of the whole rows up to float rounding, gradients included (tests/test_generation.py,
tests/test_dpo.py).

Layout: U prompts left-padded to (U, P), each row b's continuation right-padded to (B, C), `rows[b]` the prompt
it extends. Positions come from the masks, so a continuation token sits where it sits in the whole row.

Two ways to run that layout: two passes (the prompts, then the continuations attending to their prompt's cached
keys/values), or one pass over packed rows (a prompt followed by its G continuations, each attending to the prompt
and itself: a tree mask, as in Wang et al. 2024, "Accelerating Direct Preference Optimization with Prefix
Sharing"). The packed pass launches half the kernels but attends over longer rows, so it pays on short rows, where
the kernels' count costs more than their work: `shared_prefix_target_logprobs` packs rows of at most
`PACKED_MAX_TOKENS` (on a CPU, benchmarks/dpo_packing.py: 1.1-1.2x a tiny model's DPO step, 1.10x a 12M model's
policy pass on packed rows of up to 320 tokens, break-even at 640).

DPO's rows also skip their padding (`SKIP_PADDING`, `Transformer.hidden_states(skip_padding=True)`): a batch of
pairs is ~40% padding (prompts left-padded to the longest, each response slot to the longest response), and the
position-wise work (projections, norms, RoPE, MLP) runs on the real tokens only; attention keeps the padded grid.
On a CPU, 1.34x a tiny model's DPO step (1.37x with precomputed reference log-probs), 1.07-1.14x a 12M model's
two-pass policy pass (benchmarks/dpo_packing.py). GRPO's groups (`rollout.py`) run their padding: only their
prompts are padded (~17%), where skipping measured 0.98x.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_llm.attention import SharedPrefixCache
from lit_llm.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from lit_llm.model import Transformer

PACKED_MAX_TOKENS = 512  # packed rows up to this length run in one pass (see the module docstring)
SKIP_PADDING = True  # DPO's rows run their position-wise work on real tokens only (see the module docstring)


def prompt_groups(ids: Tensor) -> tuple[Tensor, Tensor]:
    """The prompts of (B,) rows labelled by any ids: each row's prompt number `rows` (B,) in 0..U-1, and the first
    row of each prompt (U,)."""
    unique, rows = torch.unique(ids, return_inverse=True)
    order = torch.arange(len(rows), device=rows.device)
    first = torch.full((len(unique),), len(rows), device=rows.device, dtype=torch.long)
    return rows, first.scatter_reduce_(0, rows, order, "amin")


def shared_prefix_hidden(model: Transformer, prompts: Tensor, prompt_mask: Tensor, rows: Tensor,
                         continuation: Tensor, continuation_mask: Tensor, skip_padding: bool = False
                         ) -> tuple[Tensor, Tensor]:
    """Final hidden states of the (U, P) left-padded prompts, each run once, and of the (B, C) right-padded
    continuations, row b attending to prompt `rows[b]`'s keys/values and then its own.

    Returns:
        The hidden state of each prompt's last position (U, d_model), which predicts its continuations' first
        token, and the continuations' (B, C, d_model).
    """
    cache = SharedPrefixCache(rows)
    last = model.hidden_states(prompts, prompt_mask, kv_cache=cache, skip_padding=skip_padding)[:, -1]
    if not continuation.shape[1]:
        return last, last.new_zeros(len(rows), 0, last.shape[-1])
    mask = torch.cat([prompt_mask[rows], continuation_mask], 1)
    return last, model.hidden_states(continuation, mask, kv_cache=cache, skip_padding=skip_padding)


def packed_prefix_hidden(model: Transformer, prompts: Tensor, prompt_mask: Tensor, rows: Tensor,
                         continuation: Tensor, continuation_mask: Tensor, skip_padding: bool = False
                         ) -> tuple[Tensor, Tensor]:
    """What `shared_prefix_hidden` returns, from one pass over U packed rows of P + G·C tokens: prompt u, then a slot
    of C tokens for each of its (at most G) continuations, in row order; a continuation attends to its prompt and
    its own earlier tokens, at the positions it has in its whole row."""
    (U, P), C = prompts.shape, continuation.shape[1]
    slot = F.one_hot(rows, U).cumsum(0).gather(1, rows[:, None])[:, 0] - 1  # (B,) row b's place among its prompt's
    G, device = int(slot.max()) + 1, prompts.device
    L, pos = P + G * C, torch.arange(P + G * C, device=device)
    columns = P + slot[:, None] * C + pos[:C]  # (B, C) packed column of each continuation token
    ids = torch.cat([prompts, prompts.new_zeros(U, G * C)], 1).index_put_((rows[:, None], columns), continuation)
    real = torch.cat([prompt_mask, prompt_mask.new_zeros(U, G * C)], 1).index_put_((rows[:, None], columns),
                                                                                    continuation_mask).bool()
    positions = (prompt_mask.cumsum(1) - 1).clamp(min=0)  # as `default_position_ids` numbers a left-padded prompt
    start = positions[:, -1] + 1  # (U,) the position after each prompt's last token
    positions = torch.cat([positions, positions.new_zeros(U, G * C)], 1).index_put_(
        (rows[:, None], columns), start[rows, None] + pos[:C])
    segment = torch.where(pos < P, 0, (pos - P) // max(C, 1) + 1)  # (L,) 0: the prompt, g + 1: slot g
    tree = (pos[None, :] <= pos[:, None]) & ((segment[None, :] == 0) | (segment[None, :] == segment[:, None]))
    mask = (real[:, None, :] & tree) | torch.eye(L, dtype=torch.bool, device=device)  # a pad query keeps its own key
    hidden = model.hidden_states(ids, real, positions, attn_mask=mask[:, None], skip_padding=skip_padding)
    return hidden[:, P - 1], hidden[rows[:, None], columns]


def shared_prefix_target_logprobs(model: Transformer, input_ids: Tensor, labels: Tensor, prompt_index: Tensor
                                  ) -> Tensor | None:
    """(N,) float32 sum of each row's target log-probs, as `model.target_logprobs(model.hidden_states(input_ids,
    mask), labels).sum(-1)` computes them on (N, T) right-padded rows, with each prompt run once.

    A row's prefix is its tokens up to the position that predicts its first target (labels != IGNORE_INDEX); rows
    with the same `prompt_index` (N,) share it. None when they do not (a prompt truncated differently for two of
    its responses) or a row has no target: the caller then runs the whole rows.
    """
    targets = labels != IGNORE_INDEX
    if not bool(targets.any(1).all()):
        return None
    N, T = labels.shape
    pos = torch.arange(T, device=labels.device)
    first = torch.where(targets, pos, T).min(1).values  # (N,) last prefix position: predicts the first target
    lengths = torch.where(targets, pos, -1).max(1).values - first  # (N,) continuation tokens
    rows, rep = prompt_groups(prompt_index)  # rep (U,): a row per prompt
    same_prefix = (first == first[rep][rows]) & ((input_ids == input_ids[rep][rows]) | (pos > first[:, None])).all(1)
    if not bool(same_prefix.all()):
        return None
    width = first[rep] + 1  # (U,) prefix lengths
    P, C = int(width.max()), int(lengths.max())
    source = pos[:P] - (P - width)[:, None]  # (U, P) left-padded: column j holds token j − (P − width)
    prompt_mask = (source >= 0).long()
    prompts = input_ids[rep].gather(1, source.clamp(min=0)) * prompt_mask
    continuation_mask = (pos[:C] < lengths[:, None]).long()  # (N, C): tokens first + 1 .. first + length
    continuation = input_ids.gather(1, (first[:, None] + 1 + pos[:C]).clamp(max=T - 1)) * continuation_mask
    packed = C and P + int(torch.bincount(rows).max()) * C <= PACKED_MAX_TOKENS
    run = packed_prefix_hidden if packed else shared_prefix_hidden
    last, hidden = run(model, prompts, prompt_mask, rows, continuation, continuation_mask, SKIP_PADDING)
    hidden = torch.cat([last[rows, None], hidden], 1)  # (N, C + 1, d): positions first .. first + C
    shifted = labels.gather(1, (first[:, None] + pos[:C + 1]).clamp(max=T - 1))
    shifted = shifted.masked_fill(pos[:C + 1] > lengths[:, None], IGNORE_INDEX)
    return model.target_logprobs(hidden, shifted).sum(-1)
