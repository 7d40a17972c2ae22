"""Batched autoregressive generation for left-padded prompts (greedy, temperature, top-k, top-p).

Deliberate simplifications:
- No beam search, repetition penalty or min-length constraints.
- ``logprobs`` are taken under softmax(logits / temperature) *before* top-k / top-p filtering: they are the
  policy's log-probabilities that a training step (PPO) recomputes, not the truncated sampling distribution.
- When every row has finished early, the returned tensors are shorter than ``max_new_tokens`` (N = steps run).
- Finished rows keep being fed (as pad tokens with attention mask 0) until all rows are done; that keeps the
  batch rectangular and the KV cache in lockstep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from lit_llm.attention import KVCache, StaticKVCache, decode_key_mask, default_position_ids
from lit_llm.model import Transformer


@dataclass
class Generation:
    """Result of ``generate``.

    Attributes:
        tokens: (B, T_prompt + N) the left-padded prompt followed by the response.
        response: (B, N) generated ids; positions after a row's eos hold pad_id.
        logprobs: (B, N) float32 log-prob of each generated token under softmax(logits / temperature)
            (temperature 0 -> plain softmax); 0 where response_mask is False.
        response_mask: (B, N) bool, True for generated tokens up to and including the row's first eos.
        attention_mask: (B, T_prompt + N) long, the prompt mask followed by response_mask.
    """

    tokens: Tensor
    response: Tensor
    logprobs: Tensor
    response_mask: Tensor
    attention_mask: Tensor


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to a (B, T_max) long tensor of ids and a (B, T_max) long mask (1 = real token)."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: (B, V) -> (B, V).

    Nucleus: keep the smallest set of most likely tokens whose probability mass reaches top_p (the most likely
    token is always kept).
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Pick next tokens from last-position logits (B, V) float32; returns ids (B,) and their logprobs (B,)."""
    if temperature == 0:
        next_ids = logits.argmax(-1)
        logprobs = logits.log_softmax(-1)
    else:
        scaled = logits / temperature
        logprobs = scaled.log_softmax(-1)
        probs = filter_logits(scaled, top_k, top_p).softmax(-1)
        next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return next_ids, logprobs.gather(-1, next_ids[:, None]).squeeze(-1)


def _eos_tensor(eos_id: int | Sequence[int] | None, device: torch.device) -> Tensor:
    ids = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    return torch.tensor(ids, dtype=torch.long, device=device)


@torch.no_grad()
def generate(
    model: Transformer,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    compile_backend: str | None = None,
    repeats: int = 1,
) -> Generation:
    """Generate continuations for a batch of left-padded prompts.

    Args:
        model: The language model (put in eval mode for the call, previous mode restored afterwards).
        prompt_ids: (B, T) left-padded prompt ids.
        prompt_mask: (B, T) 1 for real prompt tokens, 0 for padding.
        max_new_tokens: Maximum number of tokens to generate per row.
        temperature: Softmax temperature; 0 means greedy decoding (top_k / top_p ignored).
        top_k: Keep only the k most likely tokens when sampling.
        top_p: Nucleus sampling mass.
        eos_id: Token id (or ids) that end a row; None never stops early.
        pad_id: Id written into a row after it finished.
        generator: Random generator for reproducible sampling (must live on the model's device).
        use_cache: Use a KV cache; False recomputes the whole sequence each step (the correctness reference).
        compile_backend: Run each decode step as one `torch.compile`d graph on this backend ("inductor": fused
            kernels, needs a C++ compiler on CPU) over a preallocated cache, the number of keys a dynamic
            dimension, so one graph serves every step and length. It pays for long generations only: the first
            call per batch size compiles (~10-20 s on a CPU), and the values differ from eager ones in the last
            bits. None (default): eager steps.
        repeats: Continuations per prompt: row u * repeats + i of the result continues prompt u. With the KV cache
            each prompt's pass runs once and its keys/values are copied to its rows.

    Returns:
        A ``Generation`` (see its docstring); N <= max_new_tokens columns (fewer when all rows stop early).
    """
    was_training = model.training
    model.eval()
    # Decoding changes the sequence length every step: blocks compiled for training (callbacks.Compile) would
    # recompile for each length, so generation runs them eagerly.
    try:
        with torch.compiler.set_stance("force_eager"):
            return _generate(
                model, prompt_ids, prompt_mask, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id, generator,
                use_cache, compile_backend, repeats,
            )  # fmt: skip
    finally:
        model.train(was_training)


def _generate(
    model: Transformer,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | Sequence[int] | None,
    pad_id: int,
    generator: torch.Generator | None,
    use_cache: bool,
    compile_backend: str | None = None,
    repeats: int = 1,
) -> Generation:
    U, T0 = prompt_ids.shape
    B, device = U * repeats, prompt_ids.device
    total = T0 + max_new_tokens
    tokens = torch.full((B, total), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, total), dtype=torch.long, device=device)
    tokens[:, :T0], mask[:, :T0] = prompt_ids.repeat_interleave(repeats, 0), prompt_mask.long().repeat_interleave(
        repeats, 0)
    logprobs = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    eos = _eos_tensor(eos_id, device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = None
    if use_cache:
        dtype = next(model.parameters()).dtype
        cache = (StaticKVCache if compile_backend else KVCache)(model.config, B, total, device, dtype)

    # Without left padding no mask is needed: the prompt takes SDPA's causal fast path and each new token may see
    # every cached key. (Rows that finished keep running unmasked; their outputs are never read.)
    padded = not bool(prompt_mask.bool().all())
    steps = 0
    for step in range(max_new_tokens):
        cur = T0 + step  # tokens[:, :cur] are known
        step_mask = mask[:, :cur] if padded else None
        if isinstance(cache, StaticKVCache) and step > 0:
            logits = static_step(model, tokens, mask, cache, cur, compile_backend)
        else:
            # only the last position's logits are needed: the LM head runs on it alone (not on the whole prompt)
            if cache is None:
                hidden = model.hidden_states(tokens[:, :cur], attention_mask=step_mask)[:, -1]
            elif step == 0 and repeats > 1:
                hidden = shared_prefill(model, prompt_ids, prompt_mask if padded else None, cache, repeats)
            else:
                start = cache.length  # first step feeds the prompt, later steps only the newest token
                hidden = model.hidden_states(tokens[:, start:cur], attention_mask=step_mask, kv_cache=cache)[:, -1]
            logits = model.lm_head(hidden).float()
        next_ids, next_logprobs = sample_next(logits, temperature, top_k, top_p, generator)
        active = ~done
        tokens[:, cur] = torch.where(active, next_ids, torch.full_like(next_ids, pad_id))
        mask[:, cur] = active.long()
        logprobs[:, step] = torch.where(active, next_logprobs, torch.zeros_like(next_logprobs))
        done = done | (active & torch.isin(next_ids, eos))
        steps = step + 1
        if bool(done.all()):
            break

    end = T0 + steps
    return Generation(
        tokens=tokens[:, :end],
        response=tokens[:, T0:end],
        logprobs=logprobs[:, :steps],
        response_mask=mask[:, T0:end].bool(),
        attention_mask=mask[:, :end],
    )


def shared_prefill(model: Transformer, prompt_ids: Tensor, prompt_mask: Tensor | None, cache: KVCache,
                   repeats: int) -> Tensor:
    """The prompts' pass, each of the U prompts once: its keys/values are copied to its `repeats` rows of the
    (U * repeats)-row cache. Returns the last position's hidden state of every row (U * repeats, d_model)."""
    once = KVCache(model.config, prompt_ids.shape[0], prompt_ids.shape[1], prompt_ids.device, cache.k[0].dtype)
    hidden = model.hidden_states(prompt_ids, attention_mask=prompt_mask, kv_cache=once)[:, -1]
    for layer, (k, v) in enumerate(zip(once.k, once.v)):
        cache.update(layer, k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0))
    cache.advance(prompt_ids.shape[1])
    return hidden.repeat_interleave(repeats, 0)


def decode_step(model: Transformer, token: Tensor, positions: Tensor, keys: Tensor, cache: StaticKVCache) -> Tensor:
    """Next-token logits (B, V) float32 of one token per row over a `StaticKVCache`: token and positions (B, 1), keys
    (B, L) bool for the first L cache slots, True where the new token may attend (its own slot included). The blocks
    are the model's own."""
    cache.visible = keys.shape[1]  # attend over the L slots written so far, not the whole buffer
    x = model.embed(token)
    rope = model.rope(positions)
    mask = keys[:, None, None, :]
    for i, block in enumerate(model.blocks):
        x = block(x, rope, mask, False, i, cache)
    return model.lm_head(model.norm(x)[:, -1]).float()


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def static_step(model: Transformer, tokens: Tensor, mask: Tensor, cache: StaticKVCache, cur: int,
                backend: str) -> Tensor:
    """Feed tokens[:, cur - 1] (the newest) through the compiled `decode_step`, with the eager step's keys and
    positions. The number of slots attended (cur) and the buffers' length are dynamic dimensions of the graph: one
    graph serves every step and every generation length of a batch size, and attention reads only the written slots
    (a static length would read the whole buffer every step)."""
    cache.at(cur - 1)
    keys = decode_key_mask(mask[:, :cur], model.config.sliding_window)  # (B, cur)
    torch._dynamo.mark_dynamic(keys, 1)
    # fresh (B, 1) tensors: a slice of a (B, n) one keeps stride n (also at B = 1, where .contiguous() keeps it),
    # a guard on it and so a recompile every step (positions) or generation length (tokens)
    fresh = partial(torch.clone, memory_format=torch.contiguous_format)
    positions = fresh(default_position_ids(mask.shape[0], 1, cur - 1, mask[:, :cur], None, mask.device))
    if backend not in _COMPILED:
        _COMPILED[backend] = torch.compile(decode_step, backend=backend, dynamic=False)
    with torch.compiler.set_stance("default"):  # generate() runs training-compiled blocks eagerly
        logits = _COMPILED[backend](model, fresh(tokens[:, cur - 1 : cur]), positions, keys, cache)
    cache.advance(1)
    return logits
