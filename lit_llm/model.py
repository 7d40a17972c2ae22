"""Llama-style decoder-only Transformer backbone and scalar (reward/value) head. (Attention, masks and the KV
cache: `lit_llm.attention`; rotary embeddings: `lit_llm.rope`.)

Architecture (pre-norm): token embedding -> N x [RMSNorm -> causal multi-head attention with RoPE on Q/K and
grouped-query KV heads -> residual -> RMSNorm -> SwiGLU MLP -> residual] -> final RMSNorm -> LM head (tied to the
embedding by default). Parameter layout and RoPE convention ("rotate_half", non-interleaved) follow Hugging Face's
Llama so weights map 1:1 (see lit_llm.hf).

Families are flags of one config, not subclasses (LitGPT's way): Llama-2/3 and SmolLM are the defaults, Qwen2 adds
`qkv_bias`, Qwen3 `qk_norm` and a `head_dim` of its own, Mistral a `sliding_window`.

Deliberate simplifications:
- No partial rotary, no YaRN RoPE scaling, no MoE, no biases beyond Qwen2's q/k/v (lit_llm.hf refuses the rest).
- Sequences longer than ``max_seq_len`` are not rejected (RoPE has no learned positions); ``max_seq_len`` only
  drives dynamic-NTK scaling and the default ``flops_per_token`` length.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_llm.attention import (Attention, KVCache, RMSNorm, Unpadded, build_attention_mask, decode_key_mask,
                               default_position_ids, right_padded)
from lit_llm.losses import IGNORE_INDEX, token_logprobs
from lit_llm.rope import RotaryEmbedding, normalise_rope_scaling


@dataclass
class ModelConfig:
    """Hyper-parameters of the backbone.

    Args:
        vocab_size: Number of token ids.
        n_layer: Number of Transformer blocks.
        n_head: Number of query heads.
        n_kv_head: Number of key/value heads (grouped-query attention); None means n_head. Must divide n_head.
        d_model: Residual stream width.
        head_dim: Width of one attention head (even, for RoPE); None means d_model / n_head, which must divide.
        d_ff: SwiGLU hidden width; None means the Llama rule int(8 * d_model / 3) rounded up to a multiple of 64.
        max_seq_len: Context length the model is trained for (dynamic RoPE scaling kicks in beyond it).
        rope_base: RoPE base (theta).
        rope_scaling: Optional RoPE scaling {"type": "linear"|"dynamic"|"llama3", "factor": float} (llama3 also
            `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`); the HF key "rope_type" is
            accepted in place of "type".
        norm_eps: RMSNorm epsilon.
        tie_embeddings: Share the LM head weight with the token embedding.
        dropout: Dropout probability on attention weights and on both residual branches (training only).
        qkv_bias: Biases on the query, key and value projections (Qwen2).
        qk_norm: RMSNorm over each query and key head before RoPE (Qwen3).
        sliding_window: Each token attends to the last `sliding_window` positions only (Mistral); None = all.
    """

    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 128
    head_dim: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 256
    rope_base: float = 10000.0
    rope_scaling: dict | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.head_dim is None:
            if self.d_model % self.n_head != 0:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}) "
                                 f"unless head_dim is set")
            self.head_dim = self.d_model // self.n_head
        if self.head_dim <= 0 or self.head_dim % 2 != 0:
            raise ValueError(f"head_dim = {self.head_dim} must be a positive even number (RoPE rotates pairs)")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}")
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
        self.rope_scaling = normalise_rope_scaling(self.rope_scaling)

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


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


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
        unpadded: Unpadded | None = None,
    ) -> Tensor:
        """x: (B, T, d_model), or (N, d_model) with `unpadded` -> x's shape."""
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask, is_causal, layer, kv_cache, unpadded))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


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
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
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
        attn_mask: Tensor | None = None,
        skip_padding: bool = False,
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
            attn_mask: (B, 1, T, T) bool, True where a query may attend a key: used as given instead of the mask
                the other arguments imply (e.g. `shared_prefix`'s packed rows); needs position_ids, no kv_cache.
            skip_padding: Run the position-wise work (embedding, norms, projections, RoPE, MLP) on the real tokens
                of `attention_mask` only, attention on the padded grid (`attention.Unpadded`): the same outputs at
                real positions, 0 at the padding, gradients equal to float rounding. Pays where padding is a large
                share of the batch.

        Returns:
            (B, T, d_model) hidden states after the final RMSNorm.
        """
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if doc_ids is not None and kv_cache is not None:
            raise ValueError("doc_ids (packed documents) are not supported together with a kv_cache")
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask must have shape {(B, past + T)}, got {tuple(attention_mask.shape)}")
        if attn_mask is not None and (position_ids is None or kv_cache is not None):
            raise ValueError("an explicit attn_mask needs position_ids and no kv_cache")
        if skip_padding and attention_mask is None:
            raise ValueError("skip_padding needs the attention_mask that says which tokens are real")
        if position_ids is None:
            position_ids = default_position_ids(B, T, past, attention_mask, doc_ids, idx.device)
        if attn_mask is not None:
            mask, is_causal = attn_mask, False
        else:
            mask, is_causal = self._mask(T, past, attention_mask, doc_ids, causal, idx.device)
        rope = self.rope(position_ids)
        unpadded = Unpadded(attention_mask[:, past:]) if skip_padding else None
        if unpadded is not None:
            idx, rope = unpadded.take(idx), (unpadded.take(rope[0]), unpadded.take(rope[1]))
        x = self.drop(self.embed(idx))
        use_ckpt = self.activation_checkpointing and self.training and kv_cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if use_ckpt:
                x = checkpoint(block, x, rope, mask, is_causal, i, None, unpadded, use_reentrant=False)
            else:
                x = block(x, rope, mask, is_causal, i, kv_cache, unpadded)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.norm(x)
        return x if unpadded is None else unpadded.pad(x)

    def _mask(
        self, T: int, past: int, attention_mask: Tensor | None, doc_ids: Tensor | None, causal: bool,
        device: torch.device,
    ) -> tuple[Tensor | None, bool]:
        """Pick the cheapest SDPA masking: (None, is_causal) when no explicit mask is needed, else (mask, False)."""
        window = self.config.sliding_window
        window = window if window is not None and past + T > window else None  # a window no key falls out of
        if attention_mask is None and doc_ids is None and window is None:
            if not causal or T == 1:  # one new query may see every cached key
                return None, False
            if past == 0:
                return None, True  # SDPA fast path
        if T == 1 and causal and doc_ids is None and attention_mask is not None:  # a decode step
            return decode_key_mask(attention_mask, window)[:, None, None, :], False
        if past == 0 and causal and doc_ids is None and window is None and right_padded(attention_mask):
            # Pads only after the real tokens: a causal query never sees a later pad, so the fast path gives the
            # real positions the same outputs (pad positions get values nobody reads: losses mask them).
            return None, True
        return build_attention_mask(T, past, attention_mask, doc_ids, causal, device, window), False

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

    def target_logits(self, hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Float32 logits (M, V) and target ids (M,) of the M positions whose target is not IGNORE_INDEX: the LM
        head and the softmax run only where a loss reads them (SFT prompts and padding cost no vocabulary-sized
        work). hidden: (B, T, d_model); targets: (B, T)."""
        where = targets != IGNORE_INDEX
        return self.lm_head(hidden[where]).float(), targets[where]

    def target_logprobs(self, hidden: Tensor, targets: Tensor, chunk_rows: int = 4096) -> Tensor:
        """(B, T) float32 log-probs of the targets, 0 where ignored; the head and log-softmax run on the target
        positions only, `chunk_rows` at a time (without gradients only one chunk's (rows, V) logits is alive)."""
        where = targets != IGNORE_INDEX
        rows, ids = hidden[where], targets[where]
        chunks = zip(rows.split(chunk_rows), ids.split(chunk_rows))
        parts = [token_logprobs(self.lm_head(r).float(), t) for r, t in chunks]
        out = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
        if parts:
            out = out.masked_scatter(where, torch.cat(parts))
        return out

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
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6 * N + 12 * L * (n_head * head_dim) * T.

        N counts every weight used in a matmul: the non-embedding parameters plus the LM head (d_model * vocab,
        which is a real matmul even when tied; the embedding lookup is free). The attention term is the score and
        value matmuls (2 matmuls * 2 FLOPs/MAC * 3 for fwd+bwd, per layer, over T keys), counted over the full
        T x T matrix (no causal halving).

        Args:
            seq_len: Context length T; defaults to config.max_seq_len.
        """
        c = self.config
        T = c.max_seq_len if seq_len is None else seq_len
        n_matmul = self.num_params(exclude_embeddings=True) + c.d_model * c.vocab_size
        return float(6 * n_matmul + 12 * c.n_layer * c.n_head * c.head_dim * T)


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
