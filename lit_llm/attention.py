"""Attention: multi-head self-attention with grouped-query KV heads through `scaled_dot_product_attention`, the
masks and positions for padded, packed and cached batches, and the KV caches of incremental decoding.

Deliberate simplifications: attention masks are materialised as a boolean (B, 1, T, S) tensor whenever left
padding, packed documents, a KV cache or a sliding window shorter than the keys are involved (a single decode step
gets just its key-padding row); right-padded and unpadded batches take the `is_causal` SDPA fast path
(`Transformer._mask` chooses). Packed documents (`doc_ids`) are not supported together with a KV cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_llm.rope import apply_rope

if TYPE_CHECKING:  # model.py imports this module
    from lit_llm.model import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (as HF Llama), learned per-channel gain, no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., dim) -> (..., dim) in x's dtype."""
        if x.dtype == self.weight.dtype == torch.float32:  # one fused kernel, the same values as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class KVCache:
    """Preallocated key/value buffers for incremental decoding.

    Each layer i owns ``k[i]``/``v[i]`` of shape (B, n_kv_head, max_len, head_dim). ``length`` counts the positions
    already filled; the Transformer writes a call's T new positions at [length, length + T) in every layer and then
    advances ``length`` by T.

    Args:
        config: Model config (layers, kv heads, head dim).
        batch_size: Number of rows B.
        max_len: Capacity in positions (prompt + generated tokens).
        device: Device of the buffers.
        dtype: Dtype of the buffers (the model's parameter dtype).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        shape = (batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v: (B, n_kv_head, T, head_dim) after the filled part; return all keys/values (.., length+T, ..)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache overflow: {end} positions needed, capacity {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more positions as filled (called once per forward, after all layers)."""
        self.length += n

    def reset(self) -> None:
        self.length = 0


class StaticKVCache(KVCache):
    """A KVCache for a compiled decode step (`generation.generate`'s `compile_backend`): a step writes its key/value
    at the position held in the tensor `slot` (index_copy, so the position is data, not a Python int a compiled
    graph would specialise on) and attends over the first `visible` slots, a dynamic dimension of the graph set by
    the step (`generation.decode_step`), as is the buffers' length. The prompt is written the dynamic way (`update`
    with `slot` None)."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        super().__init__(config, batch_size, max_len, device, dtype)
        for buffer in (*self.k, *self.v):  # one compiled graph for every cache length
            torch._dynamo.mark_dynamic(buffer, 2)
        self.slot: Tensor | None = None  # (1,) long: the position a decode step writes; None while prefilling
        self.visible: int | None = None  # keys a decode step attends over (the first `visible` slots); None: all

    def at(self, position: int) -> None:
        """The next `update`s (one decode step) write at `position`."""
        if self.slot is None:
            self.slot = torch.zeros(1, dtype=torch.long, device=self.k[0].device)
        self.slot.fill_(position)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.slot is None:
            return super().update(layer, k, v)
        self.k[layer].index_copy_(2, self.slot, k)
        self.v[layer].index_copy_(2, self.slot, v)
        return self.k[layer][:, :, : self.visible], self.v[layer][:, :, : self.visible]


class SharedPrefixCache:
    """Keys/values of U prompts, each run once and shared by the B rows that continue it: the cache of a training
    forward (no in-place writes, so gradients flow through it, unlike `KVCache`). The first call (the prompts,
    (U, P)) records every layer's keys/values; the next (the continuations, (B, N)) attends to row b's prompt
    `rows[b]` followed by its own tokens. G responses per prompt then cost one prompt pass instead of G (Prefix
    Grouper, Liu et al. 2025).

    Args:
        rows: (B,) long, the prompt (0..U-1) each continuation row extends.
    """

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.length == 0:  # the prompts' pass
            self.k.append(k)
            self.v.append(v)
            return k, v
        return (torch.cat([self.k[layer].index_select(0, self.rows), k], 2),
                torch.cat([self.v[layer].index_select(0, self.rows), v], 2))

    def advance(self, n: int) -> None:
        self.length += n


class Unpadded:
    """The real tokens of a (B, T) padded batch as one (N, ...) sequence: position-wise work (projections, norms,
    MLP, RoPE) runs on the N real tokens only, and attention scatters them back into the (B, T) grid for SDPA.

    Args:
        real: (B, T) bool or 0/1, the real tokens.
    """

    def __init__(self, real: Tensor) -> None:
        self.shape = real.shape
        self.index = real.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions of the real tokens

    def take(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...): the real tokens' entries."""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: Tensor) -> Tensor:
        """(N, ...) -> (B, T, ...): the real tokens in their places, zeros at the padding."""
        padded = x.new_zeros(self.shape.numel(), *x.shape[1:]).index_copy(0, self.index, x)
        return padded.view(*self.shape, *x.shape[1:])


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and grouped-query KV heads, through F.scaled_dot_product_attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.dropout = config.dropout
        self.wq = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=config.qkv_bias)
        self.wk = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=config.qkv_bias)
        self.wv = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=config.qkv_bias)
        self.wo = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=False)
        if config.qk_norm:  # Qwen3: one gain per head channel, shared by the heads
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        is_causal: bool,
        layer: int = 0,
        kv_cache: KVCache | None = None,
        unpadded: Unpadded | None = None,
    ) -> Tensor:
        """x: (B, T, d_model), or (N, d_model) with `unpadded`; mask: (B, 1, T, S) bool (True = may attend) or
        None -> x's shape."""
        lead = x.shape[:-1]
        q, k = self.wq(x).view(*lead, self.n_head, -1), self.wk(x).view(*lead, self.n_kv_head, -1)
        v = self.wv(x).view(*lead, self.n_kv_head, -1)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if unpadded is not None:
            q, k, v = unpadded.pad(q), unpadded.pad(k), unpadded.pad(v)
        B, T = q.shape[:2]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, n_kv_head, S, head_dim)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.wo(y if unpadded is None else unpadded.take(y))


def _doc_positions(doc_ids: Tensor) -> Tensor:
    """Positions restarting at 0 whenever the doc id changes. doc_ids: (B, T) -> (B, T) long."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    # index of the most recent document start at or before each position
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - last_start


def default_position_ids(
    B: int, T: int, past: int, attention_mask: Tensor | None, doc_ids: Tensor | None, device: torch.device
) -> Tensor:
    """Position ids (B, T) for the T new tokens: per-doc restart, else mask cumsum - 1 (clamped at 0), else arange."""
    if doc_ids is not None:
        return _doc_positions(doc_ids)
    if attention_mask is not None:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S): pads do not advance positions
        return pos[:, -T:]
    return torch.arange(past, past + T, device=device).expand(B, T)


def right_padded(attention_mask: Tensor) -> bool:
    """True when every row of the (B, T) mask is its real tokens followed by padding only (SFT, DPO, reward)."""
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def decode_key_mask(attention_mask: Tensor, window: int | None) -> Tensor:
    """(B, S) bool: the keys one new query (the last of the S positions) may attend. The real keys of the
    (B, S) mask, its own key (so a pad query never gets an all-False row) and, with a sliding window, only the last
    `window` slots, counted as `build_attention_mask` counts them."""
    keys = attention_mask.bool().clone()
    keys[:, -1] = True
    if window is not None and keys.shape[1] > window:
        keys[:, : keys.shape[1] - window] = False
    return keys


def build_attention_mask(
    T: int, past: int, attention_mask: Tensor | None, doc_ids: Tensor | None, causal: bool, device: torch.device,
    sliding_window: int | None = None,
) -> Tensor:
    """Boolean (B or 1, 1, T, S) mask, True where query t may attend key s; S = past + T.

    Key padding, causality (query t sits at absolute position past + t), the sliding window (keys less than
    `sliding_window` slots back, as `transformers` counts them: cache slots, pads included) and document boundaries
    are combined; then the diagonal is forced on so pad queries (whose own key is masked) never get an all-False row
    (NaN).
    """
    S = past + T
    q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    allowed = (k_pos <= q_pos) if causal else torch.ones(T, S, dtype=torch.bool, device=device)
    if sliding_window is not None:
        allowed = allowed & (k_pos > q_pos - sliding_window)
    allowed = allowed[None]  # (1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]  # (B, T, S)
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, :, None] == doc_ids[:, None, :])
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed[:, None]
