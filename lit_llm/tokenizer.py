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

Default chat template (used by every stage unless a checkpoint ships its own)::

    <|begin_of_text|><|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{answer}<|end|>\\n

i.e. ``bos`` then, per message, ``<|{role}|>\\n{content}<|end|>\\n``; the generation prompt is
``<|assistant|>\\n``. ``DEFAULT_CHAT_TEMPLATE`` is the same template as a Jinja string; ``save`` writes it to
``tokenizer_config.json`` so ``transformers``' ``apply_chat_template`` renders the same text. The assistant mask
is True on the assistant's content tokens and its closing ``<|end|>``; False on ``bos``, role headers, the
newline separators and the other turns. A checkpoint's own Jinja ``chat_template`` wins when present; a tokenizer
with neither its own template nor the default template's markers as tokens cannot render chats (``check_chat``
raises, naming the missing tokens). ``difference`` names how two tokenizers disagree (a special token or id, the
vocabulary, the template), for the checks that a model is never paired with another tokenizer.

Deliberate simplifications:
    * Special tokens are split out of text, as Hugging Face ``tokenizers`` (and ``transformers``) do: plain
      text that contains ``<|end|>`` encodes to the ``<|end|>`` id. Keeping this makes ``encode`` agree with
      ``transformers`` and makes a rendered chat equal the encoding of its rendered string. Data that must not
      contain control markers has to be cleaned before tokenization.
    * The default template is rendered segment by segment (role header / content / separator are encoded
      separately) so the mask is exact. This equals encoding the whole rendered string except when a message's
      content starts with whitespace: the pre-tokenizer may then merge the header's ``\\n`` with that whitespace
      in the whole-string encoding. Both encodings decode to the same text.
    * Custom (Jinja) templates find the assistant's characters by rendering growing prefixes of the
      conversation (prefix + generation prompt .. prefix + assistant message, trailing whitespace excluded) and
      map them to tokens through the encoding's offsets; a token belongs to the span its first character is
      in. Templates whose rendering of a prefix is not a prefix of the full rendering are rejected.
    * Decoding is lossless for the byte-level tokenizers; for sentencepiece-style tokenizers it is as lossless
      as their decoder (e.g. a literal ``▁`` decodes to a space).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence, Sized
from datetime import datetime
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = {
    "bos": "<|begin_of_text|>",
    "eos": "<|end_of_text|>",
    "pad": "<|pad|>",
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "end_of_turn": "<|end|>",
    "mask": "<|mask|>",
}

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# For a base model whose tokenizer has neither a chat template nor our chat tokens (a sentencepiece Llama-2, say):
# Alpaca's plain-text turns, each answer closed by the tokenizer's own eos (the token generation stops at).
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)
CHAT_TEMPLATE_CHOICES = ("auto", "own", "default", "plain")

CHAT_ROLES = ("system", "user", "assistant")

# Roles whose ids the class exposes; the state dict stores their token strings under f"{role}_token".
_ID_ROLES = ("bos", "eos", "pad", "end_of_turn", "mask")
_CONFIG_KEYS = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "mask": "mask_token"}
_COMMON_NAMES = {
    "bos": ("<s>", "<|startoftext|>", "<bos>", "[CLS]"),
    "eos": ("</s>", "<|endoftext|>", "<eos>", "[SEP]"),
    "pad": ("<pad>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>"),
    "end_of_turn": ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|eot|>"),
    "mask": ("<mask>", "[MASK]"),
}


# ----------------------------------------------------------------------------------------------- backends
def _byte_symbols() -> list[str]:
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


def _byte_level_backend(model: models.Model) -> tokenizers.Tokenizer:
    """Wrap a BPE model with the lossless byte-level pipeline (no normalizer, no prefix space).

    Args:
        model: the BPE model (empty for training, or with an explicit vocabulary).
    """
    backend = tokenizers.Tokenizer(model)
    # add_prefix_space=False: a prefix space would be added on encode and kept on decode, changing the text.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend


def _special_added_tokens() -> list[AddedToken]:
    """``SPECIAL_TOKENS`` as special, un-normalized added tokens (in ``SPECIAL_TOKENS`` order)."""
    return [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS.values()]


# ----------------------------------------------------------------------------------- checkpoint metadata
def _token_content(value: Any) -> str | None:
    """A special-token entry of ``tokenizer_config.json``: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_chat_template(directory: Path, config: dict) -> str | None:
    """The checkpoint's chat template: ``chat_template.jinja`` (newer transformers) or the config entry.

    Args:
        directory: folder holding the tokenizer files.
        config: parsed ``tokenizer_config.json`` (empty when absent).
    """
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) else None


def _resolve_special_tokens(backend: tokenizers.Tokenizer, config: dict) -> dict[str, str | None]:
    """Find each role's special token by name: config entry, then our name, then common names.

    Args:
        backend: the loaded tokenizer; a candidate counts only when it is in its vocabulary.
        config: parsed ``tokenizer_config.json`` (empty when absent).
    """
    resolved = {}
    for role in _ID_ROLES:
        candidates = [_token_content(config.get(_CONFIG_KEYS.get(role, "")))]
        candidates += [SPECIAL_TOKENS[role], *_COMMON_NAMES[role]]
        present = [token for token in candidates if token and backend.token_to_id(token) is not None]
        resolved[role] = present[0] if present else None
    return resolved


# --------------------------------------------------------------------------------------------- templates
def _raise_template_error(message: str) -> None:
    """``raise_exception`` for Jinja chat templates (HF templates call it on invalid conversations)."""
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    """``tojson`` filter without HTML escaping, as HF uses it in chat templates."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    """Compile a chat template in a sandbox configured like ``transformers`` (trim/lstrip blocks).

    Args:
        source: the Jinja template string.
    """
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _check_messages(messages: list[dict], roles: Sequence[str] | None) -> None:
    """Validate a conversation: dicts with a string ``content`` and, when ``roles`` is given, a known role.

    Args:
        messages: the conversation.
        roles: allowed roles, or None to accept any role (custom templates may know more).
    """
    for message in messages:
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message content must be a string: {message!r}")
        if roles is not None and message.get("role") not in roles:
            raise ValueError(f"unknown role {message.get('role')!r}; the default template knows {roles}")


def _pipeline(backend: tokenizers.Tokenizer) -> dict:
    """What decides a tokenizer's ids in `encode`: its JSON without the post-processor, which `encode` never runs."""
    state = json.loads(backend.to_str())
    state.pop("post_processor", None)
    return state


# ------------------------------------------------------------------------------------------------- class
class Tokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer`` with special-token ids and chat rendering.

    Args:
        backend: the wrapped Rust tokenizer (treated as immutable once wrapped).
        special_tokens: role -> token string (or None) for ``bos``, ``eos``, ``pad``, ``end_of_turn``, ``mask``.
            None resolves them by name (our ``SPECIAL_TOKENS`` names, then common names).
        chat_template: the checkpoint's Jinja chat template; None (or ``DEFAULT_CHAT_TEMPLATE``) means the
            default template.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        special_tokens: dict[str, str | None] | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        if special_tokens is None:
            special_tokens = _resolve_special_tokens(backend, {})
        self._special = {role: special_tokens.get(role) for role in _ID_ROLES}
        for role, token in self._special.items():
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{role} token {token!r} is not in the vocabulary")
        # Normalized so a save -> from_file round trip keeps chat_template None (and the exact segment path).
        self.chat_template = None if chat_template == DEFAULT_CHAT_TEMPLATE else chat_template

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
        backend = _byte_level_backend(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=show_progress,
            special_tokens=_special_added_tokens(),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte representable
        )
        length = len(texts) if isinstance(texts, Sized) else None
        backend.train_from_iterator(iter(texts), trainer=trainer, length=length)
        return cls(backend)

    @classmethod
    def byte_level(cls) -> Tokenizer:
        """The character-level tokenizer: 256 byte tokens (id = byte value), the special tokens, no merges."""
        vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
        backend = _byte_level_backend(models.BPE(vocab=vocab, merges=[]))
        backend.add_special_tokens(_special_added_tokens())  # ids 256.. in SPECIAL_TOKENS order
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | PathLike) -> Tokenizer:
        """Load a ``tokenizer.json`` (or a folder holding one), with ``tokenizer_config.json`` beside it if any.

        Args:
            path: the ``tokenizer.json`` file or its folder. The config supplies special-token names and the
                chat template (``chat_template.jinja`` in the same folder is read too).
        """
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        backend = tokenizers.Tokenizer.from_file(str(file))
        config_file = file.parent / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        for key in _CONFIG_KEYS.values():  # silently resolving another token would change what eos etc. mean
            token = _token_content(config.get(key))
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{config_file}: {key} {token!r} is not a token of {file}")
        return cls(backend, _resolve_special_tokens(backend, config), _read_chat_template(file.parent, config))

    @classmethod
    def from_json(cls, state: dict) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_json`'s state.

        Args:
            state: ``{"tokenizer": <tokenizer.json string>, "chat_template": ..., "<role>_token": ...}``.
        """
        backend = tokenizers.Tokenizer.from_str(state["tokenizer"])
        special = {role: state.get(f"{role}_token") for role in _ID_ROLES}
        return cls(backend, special, state.get("chat_template"))

    # ------------------------------------------------------------------------------------ persistence
    def to_json(self) -> dict:
        """Checkpoint-safe state (only ``str``/``None`` values, fine for ``torch.load(weights_only=True)``)."""
        state: dict[str, str | None] = {"tokenizer": self.backend.to_str(), "chat_template": self.chat_template}
        state.update({f"{role}_token": token for role, token in self._special.items()})
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
            "add_bos_token": self.bos_id is not None,  # documents and prompts start with bos here (`encode(bos=...)`)
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
        if self.bos_id is None or self.backend.post_processor is not None:
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

    def chat_stop_ids(self) -> list[int]:
        """Ids that end an assistant turn: end_of_turn then eos (deduplicated, absent ones left out)."""
        ids = [self.end_of_turn_id, self.eos_id]
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
        """Render a conversation to ids and an assistant mask (see the module docstring for the template).

        Args:
            messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
            add_generation_prompt: end with the assistant header so a model continues with the answer.

        Returns:
            ``(ids, mask)`` of equal length; mask is True on the assistant's content tokens and the token(s)
            closing its turn, False on bos, role headers, separators and other turns.
        """
        if self.chat_template is None:
            self.check_chat()
            return self._render_default(messages, add_generation_prompt)
        return self._render_jinja(messages, add_generation_prompt)

    def render_prompt(self, text: str, system_prompt: str | None = None) -> list[int]:
        """[system], user = `text`, then the assistant header: the tokens a model continues with its answer (PPO and
        rejection-sampling prompts, the gold evaluation and `generate --chat` ask this way, as SFT trains)."""
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": text})
        return self.render_chat(messages, add_generation_prompt=True)[0]

    def check_chat(self) -> None:
        """Raise unless chats can be rendered: the tokenizer has its own template, or the default template's
        role and end-of-turn markers as tokens. (Rendered as plain text instead, the markers would be several
        ordinary tokens each, and generation would not stop at the end of a turn.)"""
        markers = [SPECIAL_TOKENS[role] for role in (*CHAT_ROLES, "end_of_turn")]
        missing = [m for m in markers if self.backend.token_to_id(m) is None]
        if self.chat_template is None and missing:
            raise ValueError(f"no chat template, and the default template's special tokens {', '.join(missing)} "
                             "are not in the vocabulary; use a tokenizer that has them (Tokenizer.train and "
                             "Tokenizer.byte_level add them) or one whose tokenizer_config.json has a chat_template")

    def pick_chat_template(self, choice: str | None = None) -> tuple[str | None, str]:
        """The chat template a chat data module renders with, and how it was chosen (for the run's params).

        Args:
            choice: "auto" (None): the tokenizer's own template, else the default one when the tokenizer has its
                tokens, else the plain-text one (`PLAIN_CHAT_TEMPLATE`, "### Instruction:" / "### Response:" + its
                eos); "own", "default", "plain" for one of them; or a Jinja template, or the path of a file holding
                one (e.g. a model's `chat_template.jinja`).

        Returns:
            (template for `Tokenizer.chat_template`, None meaning the default one; a one-line description).
        """
        choice = choice or "auto"
        markers = [SPECIAL_TOKENS[role] for role in (*CHAT_ROLES, "end_of_turn")]
        missing = [m for m in markers if self.backend.token_to_id(m) is None]
        if choice == "auto":
            if self.chat_template is not None:
                return self.chat_template, "own (the tokenizer's chat_template)"
            if not missing:
                return None, "default (<|user|> ... <|end|> tokens)"
            return PLAIN_CHAT_TEMPLATE, (f"plain (fallback: the tokenizer has no chat_template and no "
                                         f"{', '.join(missing)} tokens; '### Instruction:' / '### Response:' + eos)")
        if choice == "own":
            if self.chat_template is None:
                raise ValueError("chat_template='own': this tokenizer has no chat template of its own")
            return self.chat_template, "own (the tokenizer's chat_template)"
        if choice == "default":
            if missing:
                raise ValueError(f"chat_template='default' needs the tokens {', '.join(missing)}, which this "
                                 f"tokenizer lacks; use 'plain' or a template of its own")
            return None, "default (<|user|> ... <|end|> tokens)"
        if choice == "plain":
            return PLAIN_CHAT_TEMPLATE, "plain ('### Instruction:' / '### Response:' + eos)"
        if "{{" in choice or "{%" in choice:
            return choice, "given (a Jinja template)"
        path = Path(choice)
        if not path.is_file():
            raise ValueError(f"chat_template={choice!r}: expected one of {CHAT_TEMPLATE_CHOICES}, a Jinja template "
                             f"or the path of a file holding one (no such file)")
        return path.read_text(encoding="utf-8"), f"from {path}"

    def difference(self, other: Tokenizer) -> str | None:
        """How `other` would give token ids another meaning, or None when both tokenize alike: the first
        mismatching special token or id, the vocabulary size, the first id naming another token, the chat
        template, or the rest of the pipeline (merges, normalizer, pre-tokenizer).

        Args:
            other: The tokenizer to compare with (e.g. the one a checkpoint carries).
        """
        for role in _ID_ROLES:
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
        if _pipeline(self.backend) != _pipeline(other.backend):
            return "same vocabulary, but the merges, normalizer or pre-tokenizer differ"
        return None

    def _render_default(self, messages: list[dict], add_generation_prompt: bool) -> tuple[list[int], list[bool]]:
        """Default template, segment by segment so every token's mask value is exact."""
        _check_messages(messages, CHAT_ROLES)
        ids: list[int] = []
        mask: list[bool] = []

        def append(segment: list[int], is_assistant: bool) -> None:
            ids.extend(segment)
            mask.extend([is_assistant] * len(segment))

        newline = self.encode("\n")
        end_id = self.backend.token_to_id(SPECIAL_TOKENS["end_of_turn"])
        if self.bos_id is not None:  # the Jinja form renders {{ bos_token }}, empty when there is none
            append([self.bos_id], False)
        for message in messages:
            header = [self.backend.token_to_id(SPECIAL_TOKENS[message["role"]])] + newline
            append(header, False)
            append(self.encode(message["content"]) + [end_id], message["role"] == "assistant")
            append(newline, False)
        if add_generation_prompt:
            append([self.backend.token_to_id(SPECIAL_TOKENS["assistant"])] + newline, False)
        return ids, mask

    def _render_text(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """Render a conversation to text with the checkpoint's template (or the default one) via Jinja."""
        template = _compile_template(self.chat_template or DEFAULT_CHAT_TEMPLATE)
        tokens = {f"{role}_token": token for role, token in self._special.items() if token is not None}
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens)

    def _render_jinja(self, messages: list[dict], add_generation_prompt: bool) -> tuple[list[int], list[bool]]:
        """Any Jinja template: encode the rendered text, mask tokens that start inside an assistant span."""
        _check_messages(messages, None)
        text = self._render_text(messages, add_generation_prompt)
        spans = self._assistant_spans(messages, text)
        encoding = self.backend.encode(text, add_special_tokens=False)
        mask = [any(start <= first < end for start, end in spans) for first, _ in encoding.offsets]
        return encoding.ids, mask

    def _assistant_spans(self, messages: list[dict], text: str) -> list[tuple[int, int]]:
        """Character spans of ``text`` that the assistant messages add (header excluded, trailing space too).

        Args:
            messages: the conversation.
            text: the full rendering, whose prefixes the partial renderings must be.
        """
        spans = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            after = self._render_text(messages[: i + 1], add_generation_prompt=False)
            before = self._render_text(messages[:i], add_generation_prompt=True)
            if not after.startswith(before):  # template ignores/changes the generation prompt
                before = self._render_text(messages[:i], add_generation_prompt=False)
            if not (text.startswith(after) and after.startswith(before)):
                raise ValueError("chat template renders prefixes inconsistently; cannot locate assistant tokens")
            spans.append((len(before), max(len(before), len(after.rstrip()))))
        return spans

    def __repr__(self) -> str:
        template = "default" if self.chat_template is None else "custom"
        return f"Tokenizer(vocab_size={self.vocab_size}, special_tokens={self._special}, chat_template={template})"
