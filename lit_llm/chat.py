"""Chat templates: a conversation rendered to token ids with the mask of the assistant's tokens.

Three kinds of template (`Tokenizer.chat_template`, chosen with `pick_chat_template`):
    * the default one (`chat_template` None): our special tokens as role markers, rendered segment by segment so
      the mask is exact (`render_default`; the same text as `DEFAULT_CHAT_TEMPLATE`, which exports carry for
      `transformers`);
    * a tokenizer's own Jinja template (Llama-3, ChatML, ...), rendered as `transformers` does
      (`compile_template`: a sandbox with trim/lstrip blocks, `raise_exception`, `tojson`, `strftime_now`);
    * the plain-text fallback for tokenizers with neither (`PLAIN_CHAT_TEMPLATE`).
A Jinja template's assistant tokens are found by rendering growing prefixes of the conversation
(`assistant_spans`): the characters each assistant message adds, trailing whitespace excluded, mapped to tokens
through the encoding's offsets (a token belongs to the span its first character is in). Templates whose rendering
of a prefix is not a prefix of the full rendering are rejected.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:  # tokenizer.py imports this module
    from lit_llm.tokenizer import Tokenizer

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


def read_chat_template(directory: Path, config: dict) -> str | None:
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


def raise_template_error(message: str) -> None:
    """``raise_exception`` for Jinja chat templates (HF templates call it on invalid conversations)."""
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    """``tojson`` filter without HTML escaping, as HF uses it in chat templates."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template in a sandbox configured like ``transformers`` (trim/lstrip blocks).

    Args:
        source: the Jinja template string.
    """
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def check_messages(messages: list[dict], roles: Sequence[str] | None) -> None:
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



def check_chat(tokenizer: Tokenizer) -> None:
    """Raise unless chats can be rendered: the tokenizer has its own template, or the default template's
    role and end-of-turn markers as tokens. (Rendered as plain text instead, the markers would be several
    ordinary tokens each, and generation would not stop at the end of a turn.)"""
    markers = [SPECIAL_TOKENS[role] for role in (*CHAT_ROLES, "end_of_turn")]
    missing = [m for m in markers if tokenizer.backend.token_to_id(m) is None]
    if tokenizer.chat_template is None and missing:
        raise ValueError(f"no chat template, and the default template's special tokens {', '.join(missing)} "
                         "are not in the vocabulary; use a tokenizer that has them (Tokenizer.train and "
                         "Tokenizer.byte_level add them) or one whose tokenizer_config.json has a chat_template")

def pick_chat_template(tokenizer: Tokenizer, choice: str | None = None) -> tuple[str | None, str]:
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
    missing = [m for m in markers if tokenizer.backend.token_to_id(m) is None]
    if choice == "auto":
        if tokenizer.chat_template is not None:
            return tokenizer.chat_template, "own (the tokenizer's chat_template)"
        if not missing:
            return None, "default (<|user|> ... <|end|> tokens)"
        return PLAIN_CHAT_TEMPLATE, (f"plain (fallback: the tokenizer has no chat_template and no "
                                     f"{', '.join(missing)} tokens; '### Instruction:' / '### Response:' + eos)")
    if choice == "own":
        if tokenizer.chat_template is None:
            raise ValueError("chat_template='own': this tokenizer has no chat template of its own")
        return tokenizer.chat_template, "own (the tokenizer's chat_template)"
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

def render_default(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool) -> tuple[list[int], list[bool]]:
    """Default template, segment by segment so every token's mask value is exact."""
    check_messages(messages, CHAT_ROLES)
    ids: list[int] = []
    mask: list[bool] = []

    def append(segment: list[int], is_assistant: bool) -> None:
        ids.extend(segment)
        mask.extend([is_assistant] * len(segment))

    newline = tokenizer.encode("\n")
    end_id = tokenizer.backend.token_to_id(SPECIAL_TOKENS["end_of_turn"])
    if tokenizer.bos_id is not None:  # the Jinja form renders {{ bos_token }}, empty when there is none
        append([tokenizer.bos_id], False)
    for message in messages:
        header = [tokenizer.backend.token_to_id(SPECIAL_TOKENS[message["role"]])] + newline
        append(header, False)
        append(tokenizer.encode(message["content"]) + [end_id], message["role"] == "assistant")
        append(newline, False)
    if add_generation_prompt:
        append([tokenizer.backend.token_to_id(SPECIAL_TOKENS["assistant"])] + newline, False)
    return ids, mask

def render_text(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """Render a conversation to text with the checkpoint's template (or the default one) via Jinja."""
    template = compile_template(tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE)
    tokens = {f"{role}_token": token for role, token in tokenizer._special.items() if token is not None}
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens)

def render_jinja(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool) -> tuple[list[int], list[bool]]:
    """Any Jinja template: encode the rendered text, mask tokens that start inside an assistant span."""
    check_messages(messages, None)
    text = render_text(tokenizer, messages, add_generation_prompt)
    spans = assistant_spans(tokenizer, messages, text)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    mask = [any(start <= first < end for start, end in spans) for first, _ in encoding.offsets]
    return encoding.ids, mask

def assistant_spans(tokenizer: Tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of ``text`` that the assistant messages add (header excluded, trailing space too).

    Args:
        messages: the conversation.
        text: the full rendering, whose prefixes the partial renderings must be.
    """
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        after = render_text(tokenizer, messages[: i + 1], add_generation_prompt=False)
        before = render_text(tokenizer, messages[:i], add_generation_prompt=True)
        if not after.startswith(before):  # template ignores/changes the generation prompt
            before = render_text(tokenizer, messages[:i], add_generation_prompt=False)
        if not (text.startswith(after) and after.startswith(before)):
            raise ValueError("chat template renders prefixes inconsistently; cannot locate assistant tokens")
        spans.append((len(before), max(len(before), len(after.rstrip()))))
    return spans
