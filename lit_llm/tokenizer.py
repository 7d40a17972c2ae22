"""Tokenizer: byte-level BPE training, loading any ``tokenizer.json``, and the chat template.

The :class:`Tokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` (the Rust backend, kept as
``Tokenizer.backend``) and adds what the training stages need: resolved special-token ids, ``bos``/``eos``
wrapping, a checkpoint-safe state dict, and chat rendering with an assistant-token mask.

Vocabularies:
    * ``Tokenizer.train``: byte-level BPE (GPT-2 style: ``ByteLevel`` pre-tokenizer without a prefix space,
      ``ByteLevel`` decoder, the 256-symbol byte alphabet always in the vocabulary), so every UTF-8 string
      encodes without ``<unk>`` and decodes back exactly. Ids ``0..7`` are the special tokens in
      ``SPECIAL_TOKENS`` order, then the byte alphabet, then the learned merges.
    * ``Tokenizer.byte_level``: the character-level case, no merges. Id ``b`` (0..255) is byte ``b``; the
      special tokens follow at 256..263.
    * ``Tokenizer.from_file``: any ``tokenizer.json`` (also Llama-family BPE with byte fallback). Special tokens
      are found by name: ``tokenizer_config.json`` (``bos_token``, ``eos_token``, ``pad_token``, ``mask_token``)
      first, then our ``SPECIAL_TOKENS`` names, then common names (``<s>``, ``</s>``, ``<|endoftext|>``,
      ``<|eot_id|>`` ...). An id property is ``None`` when its token is absent, except ``pad_id``, which falls
      back to ``eos_id`` (padded positions are masked, so any real id works). A token that the config names
      but the vocabulary lacks is an error, not a fallback.

Chats (`lit_llm.chat`): the default template (used unless a checkpoint ships its own)::

    <|begin_of_text|><|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{answer}<|end|>\\n

i.e. ``bos`` then, per message, ``<|{role}|>\\n{content}<|end|>\\n``; the generation prompt is
``<|assistant|>\\n``. ``save`` writes it to ``tokenizer_config.json`` as Jinja (``DEFAULT_CHAT_TEMPLATE``) so
``transformers``' ``apply_chat_template`` renders the same text. The assistant mask is True on the assistant's
content tokens and its closing ``<|end|>``; False on ``bos``, role headers, the newline separators and the other
turns. A checkpoint's own Jinja ``chat_template`` wins when present; a tokenizer with neither its own template nor
the default template's markers renders the plain-text fallback (``pick_chat_template``). ``difference`` names how
two tokenizers disagree (a special token or id, the vocabulary, the template), for the checks that a model is
never paired with another tokenizer.

Deliberate simplifications:
    * Special tokens are split out of text, as Hugging Face ``tokenizers`` (and ``transformers``) do: plain
      text that contains ``<|end|>`` encodes to the ``<|end|>`` id. Keeping this makes ``encode`` agree with
      ``transformers`` and makes a rendered chat equal the encoding of its rendered string. Data that must not
      contain control markers has to be cleaned before tokenization.
    * The default template is rendered segment by segment (role header / content / separator are encoded
      separately) so the mask is exact. This equals encoding the whole rendered string except when a message's
      content starts with whitespace: the pre-tokenizer may then merge the header's ``\\n`` with that whitespace
      in the whole-string encoding. Both encodings decode to the same text.
    * Decoding is lossless for the byte-level tokenizers; for sentencepiece-style tokenizers it is as lossless
      as their decoder (e.g. a literal ``▁`` decodes to a space).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence, Sized
from os import PathLike
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import models, pre_tokenizers, processors, trainers

from lit_llm import chat
from lit_llm.chat import DEFAULT_CHAT_TEMPLATE, PLAIN_CHAT_TEMPLATE, SPECIAL_TOKENS
from lit_llm.tokenizer_backend import (
    CONFIG_KEYS, ID_ROLES, adds_bos, byte_level_backend, byte_symbols, encoding_pipeline, generation_stop_tokens,
    resolve_special_tokens, special_added_tokens, token_content,
)


class Tokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer`` with special-token ids and chat rendering.

    Args:
        backend: the wrapped Rust tokenizer (treated as immutable once wrapped).
        special_tokens: role -> token string (or None) for ``bos``, ``eos``, ``pad``, ``end_of_turn``, ``mask``.
            None resolves them by name (our ``SPECIAL_TOKENS`` names, then common names).
        chat_template: the checkpoint's Jinja chat template; None (or ``DEFAULT_CHAT_TEMPLATE``) means the
            default template.
        stop_tokens: more tokens that end generation (``generation_config.json``'s eos ids).
        add_bos: whether texts start with bos (`encode(bos=tokenizer.add_bos)`); None: whenever there is one.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        special_tokens: dict[str, str | None] | None = None,
        chat_template: str | None = None,
        stop_tokens: Sequence[str] = (),
        add_bos: bool | None = None,
    ) -> None:
        self.backend = backend
        if special_tokens is None:
            special_tokens = resolve_special_tokens(backend, {})
        self._special = {role: special_tokens.get(role) for role in ID_ROLES}
        for role, token in self._special.items():
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{role} token {token!r} is not in the vocabulary")
        # Normalized so a save -> from_file round trip keeps chat_template None (and the exact segment path).
        self.chat_template = None if chat_template == DEFAULT_CHAT_TEMPLATE else chat_template
        unknown = [token for token in stop_tokens if backend.token_to_id(token) is None]
        if unknown:
            raise ValueError(f"stop tokens {unknown} are not in the vocabulary")
        self.stop_tokens = list(stop_tokens)
        self.add_bos = self.bos_id is not None if add_bos is None else add_bos and self.bos_id is not None

    # ------------------------------------------------------------------------------------ constructors
    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2, show_progress: bool = False
    ) -> Tokenizer:
        """Train a byte-level BPE tokenizer on a stream of texts.

        The iterator is consumed lazily by the Rust trainer (in batches), so a generator over a large corpus
        is never materialized; its length is passed on when known, for the progress bar.

        Args:
            texts: training texts (any iterable; a generator is fine).
            vocab_size: target vocabulary size including the 256 byte symbols and the special tokens; the result
                is smaller when the corpus has too few pairs reaching ``min_frequency``.
            min_frequency: minimum count for a pair to be merged.
            show_progress: show the trainer's progress bar.
        """
        minimum = 256 + len(SPECIAL_TOKENS)
        if vocab_size < minimum:
            raise ValueError(f"vocab_size must be >= {minimum} (bytes + specials); use Tokenizer.byte_level()")
        backend = byte_level_backend(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=show_progress,
            special_tokens=special_added_tokens(),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte representable
        )
        length = len(texts) if isinstance(texts, Sized) else None
        backend.train_from_iterator(iter(texts), trainer=trainer, length=length)
        return cls(backend)

    @classmethod
    def byte_level(cls) -> Tokenizer:
        """The character-level tokenizer: 256 byte tokens (id = byte value), the special tokens, no merges."""
        vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
        backend = byte_level_backend(models.BPE(vocab=vocab, merges=[]))
        backend.add_special_tokens(special_added_tokens())  # ids 256.. in SPECIAL_TOKENS order
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | PathLike) -> Tokenizer:
        """Load a ``tokenizer.json`` (or a folder holding one), with ``tokenizer_config.json`` beside it if any.

        Args:
            path: the ``tokenizer.json`` file or its folder. The config supplies special-token names, whether
                texts start with bos, and the chat template (``chat_template.jinja`` in the same folder is read
                too); ``generation_config.json`` the further ids generation stops at.
        """
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        backend = tokenizers.Tokenizer.from_file(str(file))
        config_file = file.parent / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        for key in CONFIG_KEYS.values():  # silently resolving another token would change what eos etc. mean
            token = token_content(config.get(key))
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{config_file}: {key} {token!r} is not a token of {file}")
        special = resolve_special_tokens(backend, config)
        return cls(backend, special, chat.read_chat_template(file.parent, config),
                   stop_tokens=generation_stop_tokens(file.parent, backend),
                   add_bos=adds_bos(backend, special["bos"], config))

    @classmethod
    def from_json(cls, state: dict) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_json`'s state.

        Args:
            state: ``{"tokenizer": <tokenizer.json string>, "chat_template": ..., "<role>_token": ...,
                "stop_tokens": [...], "add_bos": ...}`` (the last two absent in older checkpoints).
        """
        backend = tokenizers.Tokenizer.from_str(state["tokenizer"])
        special = {role: state.get(f"{role}_token") for role in ID_ROLES}
        return cls(backend, special, state.get("chat_template"), stop_tokens=state.get("stop_tokens", ()),
                   add_bos=state.get("add_bos"))

    # ------------------------------------------------------------------------------------ persistence
    def to_json(self) -> dict:
        """Checkpoint-safe state (strings, a list of strings, a bool: fine for ``torch.load(weights_only=True)``)."""
        state: dict[str, Any] = {"tokenizer": self.backend.to_str(), "chat_template": self.chat_template}
        state.update({f"{role}_token": token for role, token in self._special.items()})
        state.update(stop_tokens=list(self.stop_tokens), add_bos=self.add_bos)
        return state

    def save(self, directory: str | PathLike, *, model_max_length: int | None = None) -> None:
        """Write ``tokenizer.json`` and a ``transformers``-compatible ``tokenizer_config.json``.

        Args:
            directory: output folder (created if needed).
            model_max_length: optional maximum sequence length recorded for ``transformers``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._with_bos_post_processor().save(str(directory / "tokenizer.json"))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self._special["bos"],
            "eos_token": self._special["eos"],
            "pad_token": self._special["pad"],  # null when absent: loaders then fall back to eos themselves
            "add_bos_token": self.add_bos,  # documents and prompts start with bos here (`encode(bos=...)`)
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,  # decoding must not touch spaces
        }
        template, _ = self.pick_chat_template("auto")
        if template != PLAIN_CHAT_TEMPLATE:  # no template rather than the fallback: a user may add their own
            config["chat_template"] = template or DEFAULT_CHAT_TEMPLATE
        if self._special["mask"] is not None:
            config["mask_token"] = self._special["mask"]
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        (directory / "tokenizer_config.json").write_text(text, encoding="utf-8")

    def _with_bos_post_processor(self) -> tokenizers.Tokenizer:
        """The backend for `tokenizer.json`: with a post-processor that starts every text with bos (when there is
        one and the file has no post-processor of its own), so `transformers`' tokenizer gives the ids this class
        trains and generates with. `encode` never runs it (it adds bos itself), so it is left out of `difference`."""
        if not self.add_bos or self.backend.post_processor is not None:
            return self.backend
        backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
        bos = self._special["bos"]
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                               special_tokens=[(bos, self.bos_id)])
        return backend

    # ------------------------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """Number of ids, added (special) tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, str | None]:
        """Role -> token string (None when absent) for bos, eos, pad, end_of_turn, mask."""
        return dict(self._special)

    def _id(self, role: str) -> int | None:
        """Id of a role's special token, None when the vocabulary has none."""
        token = self._special[role]
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-text id."""
        return self._id("bos")

    @property
    def eos_id(self) -> int | None:
        """End-of-text id."""
        return self._id("eos")

    @property
    def pad_id(self) -> int | None:
        """Padding id; falls back to ``eos_id`` when there is no pad token (padded positions are masked)."""
        pad = self._id("pad")
        return self.eos_id if pad is None else pad

    @property
    def end_of_turn_id(self) -> int | None:
        """Id closing a chat turn (``<|end|>``, ``<|eot_id|>``, ``<|im_end|>`` ...)."""
        return self._id("end_of_turn")

    @property
    def mask_id(self) -> int | None:
        """Masked-LM mask id."""
        return self._id("mask")

    def eos_ids(self) -> list[int]:
        """Ids that end a text: eos, then the stop tokens of ``generation_config.json`` (deduplicated)."""
        ids = [self.eos_id, *map(self.backend.token_to_id, self.stop_tokens)]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def chat_stop_ids(self) -> list[int]:
        """Ids that end an assistant turn: end_of_turn, then `eos_ids` (deduplicated, absent ones left out)."""
        ids = [self.end_of_turn_id, *self.eos_ids()]
        return list(dict.fromkeys(i for i in ids if i is not None))

    # ------------------------------------------------------------------------------------ encode / decode
    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        """Add bos/eos around ids; raises when the tokenizer lacks the requested token."""
        if (bos and self.bos_id is None) or (eos and self.eos_id is None):
            raise ValueError("this tokenizer has no bos/eos token to add")
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Encode one text (special-token strings in it become special ids, see the module docstring).

        Args:
            text: any UTF-8 text.
            bos: prepend the bos id.
            eos: append the eos id.
        """
        return self._wrap(self.backend.encode(text, add_special_tokens=False).ids, bos, eos)

    def encode_batch(self, texts: list[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Encode many texts with the Rust batch encoder (parallel across texts).

        Args:
            texts: the texts.
            bos: prepend the bos id to each.
            eos: append the eos id to each.
        """
        # encode_batch_fast skips offset tracking; older tokenizers only have encode_batch.
        batch_encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        encodings = batch_encode(list(texts), add_special_tokens=False)
        return [self._wrap(encoding.ids, bos, eos) for encoding in encodings]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Decode ids to text.

        Args:
            ids: token ids (a list, tensor or array of ints).
            skip_special: drop special tokens (bos, eos, role markers ...) from the text.
        """
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    # ------------------------------------------------------------------------------------ chat
    def render_chat(
        self, messages: list[dict], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Render a conversation to ids and an assistant mask (`lit_llm.chat`: the default template segment by
        segment, any other Jinja template through `assistant_spans`).

        Args:
            messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
            add_generation_prompt: end with the assistant header so a model continues with the answer.

        Returns:
            ``(ids, mask)`` of equal length; mask is True on the assistant's content tokens and the token(s)
            closing its turn, False on bos, role headers, separators and other turns.
        """
        if self.chat_template is None:
            return chat.render_default(self, messages, add_generation_prompt)
        return chat.render_jinja(self, messages, add_generation_prompt)

    def render_prompt(self, text: str, system_prompt: str | None = None) -> list[int]:
        """[system], user = `text`, then the assistant header: the tokens a model continues with its answer (PPO and
        rejection-sampling prompts, the gold evaluation and `generate --chat` ask this way, as SFT trains)."""
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": text})
        return self.render_chat(messages, add_generation_prompt=True)[0]

    def pick_chat_template(self, choice: str | None = None) -> tuple[str | None, str]:
        """The chat template a chat data module renders with, and how it was chosen (`chat.pick_chat_template`)."""
        return chat.pick_chat_template(self, choice)

    def difference(self, other: Tokenizer) -> str | None:
        """How `other` would give token ids another meaning, or None when both tokenize alike: the first
        mismatching special token or id, the vocabulary size, the first id naming another token, the chat
        template, or the rest of the pipeline (merges, normalizer, pre-tokenizer).

        Args:
            other: The tokenizer to compare with (e.g. the one a checkpoint carries).
        """
        for role in ID_ROLES:
            mine, theirs = (self._special[role], self._id(role)), (other._special[role], other._id(role))
            if mine != theirs:
                return f"{role} token {mine[0]!r} (id {mine[1]}) here, {theirs[0]!r} (id {theirs[1]}) there"
        if self.vocab_size != other.vocab_size:
            return f"vocab_size {self.vocab_size} here, {other.vocab_size} there"
        for i in range(self.vocab_size):
            mine_token, their_token = self.backend.id_to_token(i), other.backend.id_to_token(i)
            if mine_token != their_token:
                return f"id {i} is {mine_token!r} here, {their_token!r} there"
        if self.chat_template != other.chat_template:
            return "the chat templates differ"
        if encoding_pipeline(self.backend) != encoding_pipeline(other.backend):
            return "same vocabulary, but the merges, normalizer or pre-tokenizer differ"
        return None

    def __repr__(self) -> str:
        template = "default" if self.chat_template is None else "custom"
        return f"Tokenizer(vocab_size={self.vocab_size}, special_tokens={self._special}, chat_template={template})"
