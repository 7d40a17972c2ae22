"""Llama-style decoder-only Transformer backbone, KV cache and scalar (reward/value) head.

Architecture (pre-norm): token embedding -> N x [RMSNorm -> causal multi-head attention with RoPE on Q/K and
grouped-query KV heads -> residual -> RMSNorm -> SwiGLU MLP -> residual] -> final RMSNorm -> LM head (tied to the
embedding by default). Parameter layout and RoPE convention ("rotate_half", non-interleaved) follow Hugging Face's
Llama so weights map 1:1 (see lit_llm.hf).

Deliberate simplifications:
- No biases anywhere (Llama); no partial rotary, no sliding window, no llama3/yarn RoPE scaling.
- Dynamic-NTK RoPE is stateless: the base is recomputed from the largest position in the *current* call (as HF
  does for a single forward). HF additionally remembers the largest length seen so far across calls; this only
  differs when a short call follows a longer one with both above max_seq_len.
- Sequences longer than ``max_seq_len`` are not rejected (RoPE has no learned positions); ``max_seq_len`` only
  drives dynamic-NTK scaling and the default ``flops_per_token`` length.
- Attention masks are materialised as a boolean (B, 1, T, S) tensor whenever padding, packed documents or a KV
  cache are involved; the ``is_causal`` SDPA fast path is used otherwise.
- Packed documents (``doc_ids``) are not supported together with a KV cache.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

_ROPE_TYPES = ("linear", "dynamic")


@dataclass
class ModelConfig:
    """Hyper-parameters of the backbone.

    Args:
        vocab_size: Number of token ids.
        n_layer: Number of Transformer blocks.
        n_head: Number of query heads.
        n_kv_head: Number of key/value heads (grouped-query attention); None means n_head. Must divide n_head.
        d_model: Residual stream width; must be divisible by n_head (head_dim = d_model / n_head, must be even).
        d_ff: SwiGLU hidden width; None means the Llama rule int(8 * d_model / 3) rounded up to a multiple of 64.
        max_seq_len: Context length the model is trained for (dynamic RoPE scaling kicks in beyond it).
        rope_base: RoPE base (theta).
        rope_scaling: Optional RoPE scaling {"type": "linear"|"dynamic", "factor": float}; the HF key "rope_type"
            is accepted in place of "type". Normalised to {"type", "factor"}.
        norm_eps: RMSNorm epsilon.
        tie_embeddings: Share the LM head weight with the token embedding.
        dropout: Dropout probability on attention weights and on both residual branches (training only).
    """

    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 128
    d_ff: int | None = None
    max_seq_len: int = 256
    rope_base: float = 10000.0
    rope_scaling: dict | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim = d_model / n_head = {self.head_dim} must be even for RoPE")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head != 0):
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must be a positive divisor of n_head ({self.n_head})")
        if self.d_ff is not None and self.d_ff <= 0:
            raise ValueError(f"d_ff must be positive or None, got {self.d_ff}")
        if self.rope_base <= 0:
            raise ValueError(f"rope_base must be positive, got {self.rope_base}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return 64 * math.ceil(int(8 * self.d_model / 3) / 64)

    def to_dict(self) -> dict:
        """Plain-python dict (checkpoint / JSON safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys are an error (they usually mean a typo or a version mismatch)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**d)


def _normalise_rope_scaling(scaling: dict | None) -> dict | None:
    """Validate a rope_scaling dict and return it as {"type": str, "factor": float} (or None)."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or None, got {type(scaling).__name__}")
    unknown = sorted(set(scaling) - {"type", "rope_type", "factor"})
    if unknown:
        raise ValueError(f"rope_scaling has unsupported keys {unknown}; expected 'type' and 'factor'")
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind not in _ROPE_TYPES:
        raise ValueError(f"rope_scaling type must be one of {_ROPE_TYPES}, got {kind!r}")
    factor = scaling.get("factor")
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ValueError(f"rope_scaling factor must be a positive number, got {factor!r}")
    return {"type": kind, "factor": float(factor)}


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (as HF Llama), learned per-channel gain, no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., dim) -> (..., dim) in x's dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE cos/sin tables computed on the fly from position ids (HF Llama semantics incl. linear/dynamic scaling)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dim = config.head_dim
        self.base = config.rope_base
        self.max_seq_len = config.max_seq_len
        scaling = config.rope_scaling or {}
        self.scaling_type = scaling.get("type")
        self.factor = scaling.get("factor", 1.0)
        inv_freq = self._inv_freq(self.base)
        if self.scaling_type == "linear":
            inv_freq = inv_freq / self.factor  # == dividing positions by factor
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _inv_freq(self, base: float | Tensor) -> Tensor:
        """(dim/2,) float32 inverse frequencies base^(-2i/dim)."""
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim
        return 1.0 / (base**exponents)

    def _dynamic_inv_freq(self, position_ids: Tensor) -> Tensor:
        """Dynamic NTK: grow the base once the (batch-wide) sequence length exceeds max_seq_len."""
        seq_len = int(position_ids.max()) + 1
        if seq_len <= self.max_seq_len:
            return self.inv_freq
        ratio = self.factor * seq_len / self.max_seq_len - (self.factor - 1)
        base = self.base * ratio ** (self.dim / (self.dim - 2))
        return self._inv_freq(base).to(self.inv_freq.device)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """position_ids: (B, T) -> cos, sin: (B, 1, T, head_dim) float32 (broadcast over heads)."""
        inv_freq = self._dynamic_inv_freq(position_ids) if self.scaling_type == "dynamic" else self.inv_freq
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # rotate_half layout: first half pairs with second half
        return emb.cos()[:, None], emb.sin()[:, None]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x: (B, H, T, head_dim) by the angles in cos/sin: (B, 1, T, head_dim); returns x's dtype."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


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

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device, dtype) -> None:
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


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and grouped-query KV heads, through F.scaled_dot_product_attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.dropout = config.dropout
        self.wq = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=False)
        self.wk = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.wv = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=False)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        """(B, T, n * head_dim) -> (B, n, T, head_dim)."""
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        is_causal: bool,
        layer: int = 0,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """x: (B, T, d_model); mask: (B, 1, T, S) bool (True = may attend) or None -> (B, T, d_model)."""
        B, T, _ = x.shape
        q = apply_rope(self._heads(self.wq(x), self.n_head), *rope)
        k = apply_rope(self._heads(self.wk(x), self.n_kv_head), *rope)
        v = self._heads(self.wv(x), self.n_kv_head)
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
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class SwiGLU(nn.Module):
    """Gated MLP: w_down(silu(w_gate x) * w_up x)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(config.d_model, config.ff_dim, bias=False)
        self.w_up = nn.Linear(config.d_model, config.ff_dim, bias=False)
        self.w_down = nn.Linear(config.ff_dim, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, d_model) -> (B, T, d_model)."""
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        is_causal: bool,
        layer: int = 0,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """x: (B, T, d_model) -> (B, T, d_model)."""
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask, is_causal, layer, kv_cache))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


# ----------------------------------------------------------------------------------------------------------------
# Masks and positions
# ----------------------------------------------------------------------------------------------------------------


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


def build_attention_mask(
    T: int, past: int, attention_mask: Tensor | None, doc_ids: Tensor | None, causal: bool, device: torch.device
) -> Tensor:
    """Boolean (B or 1, 1, T, S) mask, True where query t may attend key s; S = past + T.

    Key padding, causality (query t sits at absolute position past + t) and document boundaries are combined;
    then the diagonal is forced on so pad queries (whose own key is masked) never get an all-False row (NaN).
    """
    S = past + T
    q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    allowed = (k_pos <= q_pos) if causal else torch.ones(T, S, dtype=torch.bool, device=device)
    allowed = allowed[None]  # (1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]  # (B, T, S)
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, :, None] == doc_ids[:, None, :])
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed[:, None]


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class Transformer(nn.Module):
    """Decoder-only Llama-style language model (backbone + LM head).

    Args:
        config: Model hyper-parameters.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.activation_checkpointing = False
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.rope = RotaryEmbedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """normal(0, 0.02) for embeddings and linears; residual output projections (wo, w_down) get
        0.02 / sqrt(2 * n_layer) so the residual stream variance does not grow with depth (GPT-2); norms to 1."""
        std = 0.02
        nn.init.normal_(self.embed.weight, 0.0, std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, std)
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            for lin in (block.attn.wq, block.attn.wk, block.attn.wv, block.mlp.w_gate, block.mlp.w_up):
                nn.init.normal_(lin.weight, 0.0, std)
            for lin in (block.attn.wo, block.mlp.w_down):
                nn.init.normal_(lin.weight, 0.0, resid_std)
            block.attn_norm.weight.fill_(1.0)
            block.mlp_norm.weight.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def hidden_states(
        self,
        idx: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        doc_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        causal: bool = True,
    ) -> Tensor:
        """Final-normed hidden states.

        Args:
            idx: (B, T) token ids.
            attention_mask: (B, S) 1 = real token, 0 = pad, over all key positions (S = cache length + T with a
                KV cache, else T). Left or right padding.
            position_ids: (B, T) RoPE positions; default derived from attention_mask / doc_ids / cache length.
            doc_ids: (B, T) document ids of packed sequences; attention stays within a document and positions
                restart at 0 for each document.
            kv_cache: Optional cache; the T new keys/values are appended and ``kv_cache.length`` advances by T.
            causal: False for bidirectional attention (masked LM); padding is still masked.

        Returns:
            (B, T, d_model) hidden states after the final RMSNorm.
        """
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if doc_ids is not None and kv_cache is not None:
            raise ValueError("doc_ids (packed documents) are not supported together with a kv_cache")
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask must have shape {(B, past + T)}, got {tuple(attention_mask.shape)}")
        if position_ids is None:
            position_ids = default_position_ids(B, T, past, attention_mask, doc_ids, idx.device)
        mask, is_causal = self._mask(T, past, attention_mask, doc_ids, causal, idx.device)
        rope = self.rope(position_ids)
        x = self.drop(self.embed(idx))
        use_ckpt = self.activation_checkpointing and self.training and kv_cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if use_ckpt:
                x = checkpoint(block, x, rope, mask, is_causal, i, None, use_reentrant=False)
            else:
                x = block(x, rope, mask, is_causal, i, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm(x)

    @staticmethod
    def _mask(
        T: int, past: int, attention_mask: Tensor | None, doc_ids: Tensor | None, causal: bool, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        """Pick the cheapest SDPA masking: (None, is_causal) when no explicit mask is needed, else (mask, False)."""
        if attention_mask is None and doc_ids is None:
            if not causal or T == 1:  # one new query may see every cached key
                return None, False
            if past == 0:
                return None, True  # SDPA fast path
        return build_attention_mask(T, past, attention_mask, doc_ids, causal, device), False

    def forward(
        self,
        idx: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        doc_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        causal: bool = True,
    ) -> Tensor:
        """Next-token logits (B, T, vocab_size) in float32. Arguments as in ``hidden_states``."""
        h = self.hidden_states(idx, attention_mask, position_ids, doc_ids, kv_cache, causal)
        return self.lm_head(h).float()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of (unique) parameters; tied weights count once.

        Args:
            exclude_embeddings: Leave out the token-embedding matrix (and the LM head when untied), i.e. the
                "non-embedding" parameter count of the scaling-law literature.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6 * N + 12 * L * d_model * T.

        N counts every weight used in a matmul: the non-embedding parameters plus the LM head (d_model * vocab,
        which is a real matmul even when tied; the embedding lookup is free). The 12 * L * d_model * T term is the
        attention score and value matmuls (2 matmuls * 2 FLOPs/MAC * 3 for fwd+bwd, per layer, over T keys), counted
        over the full T x T matrix (no causal halving).

        Args:
            seq_len: Context length T; defaults to config.max_seq_len.
        """
        c = self.config
        T = c.max_seq_len if seq_len is None else seq_len
        n_matmul = self.num_params(exclude_embeddings=True) + c.d_model * c.vocab_size
        return float(6 * n_matmul + 12 * c.n_layer * c.d_model * T)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """(B,) index of the last real (mask = 1) token per row; works for left and right padding.

    attention_mask: (B, T). Rows without any real token return T - 1.
    """
    T = attention_mask.shape[-1]
    return T - 1 - attention_mask.long().flip(-1).argmax(-1)


class ScalarHead(nn.Module):
    """Backbone + linear scalar head (reward model / value function). The head starts at zero output.

    Args:
        backbone: The Transformer whose final hidden states are projected to one scalar per token.
    """

    def __init__(self, backbone: Transformer) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.d_model, 1, bias=True)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None, **kw) -> Tensor:
        """(B, T) float32 per-token scalars. Extra keyword arguments go to ``Transformer.hidden_states``."""
        h = self.backbone.hidden_states(idx, attention_mask, **kw)
        return self.head(h).squeeze(-1).float()

    def score(self, idx: Tensor, attention_mask: Tensor, index: Tensor | None = None) -> Tensor:
        """(B,) scalar at ``index`` per row (default: the last real token, ``last_token_index(attention_mask)``)."""
        values = self(idx, attention_mask)
        if index is None:
            index = last_token_index(attention_mask)
        return values.gather(1, index.long().view(-1, 1)).squeeze(1)
