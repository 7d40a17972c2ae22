"""Rotary position embeddings (RoPE) in Hugging Face Llama's convention ("rotate_half", non-interleaved), with
their context-extension scalings.

Deliberate simplification: dynamic-NTK RoPE is stateless: the base is recomputed from the largest position in the
*current* call (as HF does for a single forward). HF additionally remembers the largest length seen so far across
calls; this only differs when a short call follows a longer one with both above max_seq_len.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # model.py imports this module
    from lit_llm.model import ModelConfig

ROPE_TYPES = ("linear", "dynamic", "llama3")
LLAMA3_KEYS = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def normalise_rope_scaling(scaling: dict | None) -> dict | None:
    """Validate a rope_scaling dict and return it as {"type": str, "factor": float} (llama3: plus LLAMA3_KEYS)."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or None, got {type(scaling).__name__}")
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type must be one of {ROPE_TYPES}, got {kind!r}")
    allowed = {"type", "rope_type", "factor", *(LLAMA3_KEYS if kind == "llama3" else ())}
    unknown = sorted(set(scaling) - allowed)
    if unknown:
        raise ValueError(f"rope_scaling has unsupported keys {unknown} for type {kind!r}; expected {sorted(allowed)}")
    factor = scaling.get("factor")
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ValueError(f"rope_scaling factor must be a positive number, got {factor!r}")
    normalised = {"type": kind, "factor": float(factor)}
    if kind == "llama3":
        missing = [key for key in LLAMA3_KEYS if not isinstance(scaling.get(key), (int, float))]
        if missing:
            raise ValueError(f"rope_scaling type 'llama3' needs numbers for {missing}")
        normalised.update({key: float(scaling[key]) for key in LLAMA3_KEYS[:2]})
        normalised[LLAMA3_KEYS[2]] = int(scaling[LLAMA3_KEYS[2]])  # a context length, an int in HF configs
    return normalised


def llama3_inv_freq(inv_freq: Tensor, scaling: dict) -> Tensor:
    """Llama 3.1's frequency-dependent scaling: wavelengths longer than the original context / low_freq_factor
    are divided by `factor` (interpolated), shorter than it / high_freq_factor kept, those between blended."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(medium, smoothed, scaled)


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
        elif self.scaling_type == "llama3":
            inv_freq = llama3_inv_freq(inv_freq, scaling)
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
        """position_ids: (B, T) -> cos, sin: (B, T, 1, head_dim) float32 (broadcast over heads)."""
        inv_freq = self._dynamic_inv_freq(position_ids) if self.scaling_type == "dynamic" else self.inv_freq
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # rotate_half layout: first half pairs with second half
        return emb.cos()[:, :, None], emb.sin()[:, :, None]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x: (B, T, H, head_dim) by the angles in cos/sin: (B, T, 1, head_dim); returns x's dtype.

    Heads second-to-last: the projections' output is already in this layout, so the elementwise kernels run on
    contiguous memory (rotating after the (B, H, T) transpose is slower; the values are the same)."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)
