"""The parts of a tokenizer below `Tokenizer`: the lossless byte-level pipeline our tokenizers use, and finding
the special tokens (bos, eos, pad, end of turn, mask) of any ``tokenizer.json`` by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from lit_llm.chat import SPECIAL_TOKENS

# Roles whose ids the class exposes; the state dict stores their token strings under f"{role}_token".
ID_ROLES = ("bos", "eos", "pad", "end_of_turn", "mask")
CONFIG_KEYS = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "mask": "mask_token"}
COMMON_NAMES = {
    "bos": ("<s>", "<|startoftext|>", "<bos>", "[CLS]"),
    "eos": ("</s>", "<|endoftext|>", "<eos>", "[SEP]"),
    "pad": ("<pad>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>"),
    "end_of_turn": ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|eot|>"),
    "mask": ("<mask>", "[MASK]"),
}


# ----------------------------------------------------------------------------------------------- backends
def byte_symbols() -> list[str]:
    """The byte-level alphabet in byte order: ``symbols[b]`` stands for byte ``b``.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, soft hyphen) are moved to
    code points 256, 257, ... so every symbol is a visible character. This is the mapping ``ByteLevel``
    uses (checked in the tests against ``ByteLevel.alphabet()``).
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def byte_level_backend(model: models.Model) -> tokenizers.Tokenizer:
    """Wrap a BPE model with the lossless byte-level pipeline (no normalizer, no prefix space).

    Args:
        model: the BPE model (empty for training, or with an explicit vocabulary).
    """
    backend = tokenizers.Tokenizer(model)
    # add_prefix_space=False: a prefix space would be added on encode and kept on decode, changing the text.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend


def special_added_tokens() -> list[AddedToken]:
    """``SPECIAL_TOKENS`` as special, un-normalized added tokens (in ``SPECIAL_TOKENS`` order)."""
    return [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS.values()]


# ----------------------------------------------------------------------------------- checkpoint metadata
def token_content(value: Any) -> str | None:
    """A special-token entry of ``tokenizer_config.json``: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def resolve_special_tokens(backend: tokenizers.Tokenizer, config: dict) -> dict[str, str | None]:
    """Find each role's special token by name: config entry, then our name, then common names. A config that
    names the key with null means none (Qwen has no bos token), as in `transformers`.

    Args:
        backend: the loaded tokenizer; a candidate counts only when it is in its vocabulary.
        config: parsed ``tokenizer_config.json`` (empty when absent).
    """
    resolved = {}
    for role in ID_ROLES:
        if CONFIG_KEYS.get(role) in config and config[CONFIG_KEYS[role]] is None:
            resolved[role] = None
            continue
        candidates = [token_content(config.get(CONFIG_KEYS.get(role, "")))]
        candidates += [SPECIAL_TOKENS[role], *COMMON_NAMES[role]]
        present = [token for token in candidates if token and backend.token_to_id(token) is not None]
        resolved[role] = present[0] if present else None
    return resolved


def adds_bos(backend: tokenizers.Tokenizer, bos: str | None, config: dict) -> bool:
    """Whether the model's texts start with bos: ``add_bos_token`` of the config when set, else whether the
    ``tokenizer.json`` post-processor puts bos first (Llama-3 does, SmolLM's does not), else whenever there is one."""
    if bos is None:
        return False
    if isinstance(config.get("add_bos_token"), bool):
        return config["add_bos_token"]
    if backend.post_processor is not None:
        return backend.encode("a", add_special_tokens=True).ids[:1] == [backend.token_to_id(bos)]
    return True


def generation_stop_tokens(directory: Path, backend: tokenizers.Tokenizer) -> list[str]:
    """The tokens ``generation_config.json`` stops at (``eos_token_id``: an id or a list; Llama-3-Instruct stops
    at ``<|eot_id|>`` and ``<|end_of_text|>``), as token strings; empty without the file."""
    file = directory / "generation_config.json"
    if not file.is_file():
        return []
    ids = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
    ids = [ids] if isinstance(ids, int) else ids or []
    tokens = [backend.id_to_token(i) if isinstance(i, int) else None for i in ids]
    if None in tokens:
        raise ValueError(f"{file}: eos_token_id {ids} names ids outside the tokenizer's vocabulary")
    return tokens


def encoding_pipeline(backend: tokenizers.Tokenizer) -> dict:
    """What decides a tokenizer's ids in `encode`: its JSON without the post-processor, which `encode` never runs."""
    state = json.loads(backend.to_str())
    state.pop("post_processor", None)
    return state
