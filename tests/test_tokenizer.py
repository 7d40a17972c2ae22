"""Tests for lit_llm.tokenizer: lossless round trips, special tokens, chat rendering, persistence, HF parity."""

from __future__ import annotations

import json
import random
import string

import pytest
import tokenizers
import torch
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

from lit_llm import chat
from lit_llm.chat import DEFAULT_CHAT_TEMPLATE, SPECIAL_TOKENS
from lit_llm.tokenizer import Tokenizer
from lit_llm.tokenizer_backend import byte_symbols

FIXED_TEXTS = [
    "",
    "Hello, world!",
    "今天天气真好",
    "emoji 😀👍🏽 and flags 🇫🇷 and ZWJ 👩‍👩‍👧",
    "def f(x):\n\treturn x ** 2  # comment\n",
    "   leading and trailing spaces   ",
    "runs    of\n\n\n newlines\t\t\ttabs \r\n windows",
    " ",
    "\n",
    "mixed: Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト, 한국어",
    "null\x00byte and \x7f del",
]

CONVERSATION = [
    {"role": "system", "content": "You are a terse geography bot."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris. 巴黎!"},
    {"role": "user", "content": "And Italy?"},
    {"role": "assistant", "content": "Rome,\nof course."},
]

LLAMA3_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _corpus(n: int = 400):
    """Deterministic mixed-script training corpus (a generator, as a real stream would be)."""
    rng = random.Random(0)
    words = ["the", "model", "token", "data", "train", "loss", "hello", "world", "今天", "天气", "真好", "def", "return"]
    for i in range(n):
        line = " ".join(rng.choice(words) for _ in range(12))
        yield f"{line} {i}\n\tx = {i} * 2  # 😀\n"


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train(_corpus(), vocab_size=400, min_frequency=2)


@pytest.fixture(scope="module")
def byte_tok() -> Tokenizer:
    return Tokenizer.byte_level()


def _random_texts(count: int, seed: int = 1234) -> list[str]:
    """Random strings over all Unicode scalar values, biased towards whitespace, ASCII, CJK and emoji."""
    rng = random.Random(seed)
    ranges = [(0x0, 0x7F), (0x80, 0x7FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x0, 0x10FFFF)]
    texts = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.15:
                chars.append(rng.choice([" ", "  ", "\n", "\t", "\r\n", "   \n"]))
                continue
            low, high = rng.choice(ranges)
            code = rng.randint(low, high)
            chars.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "x")  # surrogates are not UTF-8
        texts.append("".join(chars))
    return texts


def _masked_text(tok: Tokenizer, ids: list[int], mask: list[bool]) -> str:
    return tok.decode([i for i, keep in zip(ids, mask) if keep], skip_special=False)


# ------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("which", ["trained", "byte_tok"])
def test_fixed_round_trip(which, request):
    tok = request.getfixturevalue(which)
    for text in FIXED_TEXTS:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("which", ["trained", "byte_tok"])
def test_random_unicode_round_trip(which, request):
    tok = request.getfixturevalue(which)
    texts = _random_texts(300)
    batch = tok.encode_batch(texts)
    for text, ids in zip(texts, batch):
        assert ids == tok.encode(text)
        assert tok.decode(ids) == text


def test_byte_level_vocab(byte_tok):
    assert byte_tok.vocab_size == 256 + len(SPECIAL_TOKENS)
    assert set(byte_symbols()) == set(pre_tokenizers.ByteLevel.alphabet())
    text = "aé今😀"
    assert byte_tok.encode(text) == list(text.encode("utf-8"))  # id == byte value
    assert [byte_tok.bos_id, byte_tok.eos_id, byte_tok.pad_id] == [256, 257, 258]


def test_training_vocab_size_and_merges(trained):
    assert 380 <= trained.vocab_size <= 400
    assert len(trained.encode("hello world")) < len("hello world")  # merges learned
    assert Tokenizer.train(list(_corpus(50)), vocab_size=300).vocab_size <= 300  # sized iterable path
    with pytest.raises(ValueError):
        Tokenizer.train(["abc"], vocab_size=100)


def test_special_ids_distinct_and_stable(trained, byte_tok):
    for tok, offset in [(trained, 0), (byte_tok, 256)]:
        ids = [tok.backend.token_to_id(token) for token in SPECIAL_TOKENS.values()]
        assert ids == list(range(offset, offset + len(SPECIAL_TOKENS)))
        assert [tok.bos_id, tok.eos_id, tok.pad_id, tok.end_of_turn_id, tok.mask_id] == [
            offset, offset + 1, offset + 2, offset + 6, offset + 7
        ]
        assert tok.chat_stop_ids() == [tok.end_of_turn_id, tok.eos_id]
    retrained = Tokenizer.train(_corpus(), vocab_size=400)
    assert retrained.to_json() == trained.to_json()  # deterministic training


def test_encode_decode_special_tokens(trained):
    ids = trained.encode("hi there", bos=True, eos=True)
    assert ids[0] == trained.bos_id and ids[-1] == trained.eos_id
    assert trained.decode(ids) == "hi there"
    assert trained.decode(ids, skip_special=False) == "<|begin_of_text|>hi there<|end_of_text|>"
    assert trained.encode_batch(["a", "b c"], bos=True, eos=True) == [
        trained.encode("a", True, True), trained.encode("b c", True, True)
    ]
    assert trained.decode(torch.tensor(ids)) == "hi there"
    # Documented choice: special-token strings in plain text are split out as special tokens (HF behaviour).
    assert trained.encode("<|end|>") == [trained.end_of_turn_id]


# ------------------------------------------------------------------------------------------- chat
@pytest.mark.parametrize("which", ["trained", "byte_tok"])
def test_chat_mask_multi_turn(which, request):
    tok = request.getfixturevalue(which)
    ids, mask = tok.render_chat(CONVERSATION)
    assert len(ids) == len(mask)
    assert _masked_text(tok, ids, mask) == "Paris. 巴黎!<|end|>Rome,\nof course.<|end|>"
    expected = "<|begin_of_text|>" + "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in CONVERSATION)
    assert tok.decode(ids, skip_special=False) == expected
    assert ids == tok.encode(expected)  # segment-wise rendering equals whole-string encoding
    assert not mask[0] and ids[0] == tok.bos_id
    headers = {tok.backend.token_to_id(SPECIAL_TOKENS[role]) for role in ("system", "user", "assistant")}
    assert not any(keep for i, keep in zip(ids, mask) if i in headers)


def test_chat_generation_prompt(trained):
    prompt = CONVERSATION[:2]
    ids, mask = trained.render_chat(prompt, add_generation_prompt=True)
    assert not any(mask)
    assert trained.decode(ids, skip_special=False).endswith("<|end|>\n<|assistant|>\n")
    full_ids, _ = trained.render_chat(CONVERSATION[:3])
    assert full_ids[: len(ids)] == ids  # the answer continues the prompt
    with pytest.raises(ValueError):
        trained.render_chat([{"role": "robot", "content": "x"}])


def test_jinja_path_matches_default_segments(trained):
    # Rendering the default template through Jinja + offsets must give the same ids and the same mask.
    for add_prompt in (False, True):
        assert chat.render_jinja(trained, CONVERSATION, add_prompt) == trained.render_chat(CONVERSATION, add_prompt)


def test_chat_content_with_leading_whitespace():
    # Documented caveat: with a merge of "\n" + spaces, the whole-string encoding joins the header's newline with
    # the content's indentation; segment-wise rendering keeps the mask exact and decodes to the same text.
    tok = Tokenizer.train((f"def f{i}():\n    return {i}\n" for i in range(300)), vocab_size=300)
    messages = [{"role": "user", "content": "code?"}, {"role": "assistant", "content": "    return 1"}]
    ids, mask = tok.render_chat(messages)
    assert _masked_text(tok, ids, mask) == "    return 1<|end|>"
    whole = tok.encode(tok.decode(ids, skip_special=False))
    assert whole != ids and tok.decode(whole, skip_special=False) == tok.decode(ids, skip_special=False)


def _llama3_like(trained: Tokenizer, directory) -> Tokenizer:
    """Our trained vocabulary plus Llama-3 markers, saved with a Llama-3-like Jinja chat template."""
    directory.mkdir(parents=True, exist_ok=True)
    backend = tokenizers.Tokenizer.from_str(trained.backend.to_str())
    markers = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    backend.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in markers])
    backend.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_LIKE_TEMPLATE}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_file(directory)


def test_jinja_template_from_config(trained, tmp_path):
    tok = _llama3_like(trained, tmp_path)
    assert tok.chat_template == LLAMA3_LIKE_TEMPLATE
    assert tok.eos_id == tok.backend.token_to_id("<|eot_id|>")
    assert tok.backend.token_to_id("<|eot_id|>") in tok.chat_stop_ids()
    ids, mask = tok.render_chat(CONVERSATION)
    text = tok.decode(ids, skip_special=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are")
    assert ids == tok.encode(text)
    assert _masked_text(tok, ids, mask) == "Paris. 巴黎!<|eot_id|>Rome,\nof course.<|eot_id|>"
    prompt_ids, prompt_mask = tok.render_chat(CONVERSATION[:2], add_generation_prompt=True)
    assert not any(prompt_mask)
    assert tok.decode(prompt_ids, skip_special=False).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def _llama_style_backend() -> tokenizers.Tokenizer:
    """A tiny sentencepiece-style BPE with byte fallback, laid out like Llama-2's tokenizer.json."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["▁"] + list(string.ascii_letters + string.digits + ".,!?:()=*#'")
    merges = [("▁", "w"), ("o", "r"), ("l", "d"), ("▁w", "or"), ("▁wor", "ld"), ("H", "e"), ("l", "l"), ("He", "ll")]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    backend = tokenizers.Tokenizer(model)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    return backend


def test_byte_fallback_llama_style(tmp_path):
    _llama_style_backend().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)  # no pad token: falls back to eos
    assert tok.end_of_turn_id is None and tok.mask_id is None
    assert tok.chat_stop_ids() == [2]
    assert tok.encode("Hello world") == [tok.backend.token_to_id(p) for p in ("▁", "Hell", "o", "▁world")]
    space = tok.backend.token_to_id("▁")
    assert tok.encode("今", bos=True) == [1, space, 3 + 0xE4, 3 + 0xBB, 3 + 0x8A]  # one bos, byte-fallback pieces
    for text in FIXED_TEXTS:
        assert tok.decode(tok.encode(text)) == text
    # Without a config, names are resolved from common spellings.
    (tmp_path / "tokenizer_config.json").unlink()
    assert (Tokenizer.from_file(tmp_path).bos_id, Tokenizer.from_file(tmp_path).eos_id) == (1, 2)


# ------------------------------------------------------------------------------------------- persistence
def test_to_json_from_json_round_trip(trained, tmp_path):
    custom = _llama3_like(trained, tmp_path)
    for tok in (trained, custom):
        state = tok.to_json()
        assert all(isinstance(v, (str, bool, list)) or v is None for v in state.values())
        torch.save({"tokenizer": state}, tmp_path / "ckpt.pt")
        loaded = Tokenizer.from_json(torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"])
        assert loaded.to_json() == state
        assert loaded.chat_template == tok.chat_template
        assert loaded.render_chat(CONVERSATION) == tok.render_chat(CONVERSATION)
        assert loaded.encode_batch(FIXED_TEXTS) == tok.encode_batch(FIXED_TEXTS)


def test_save_and_reload(trained, tmp_path):
    trained.save(tmp_path, model_max_length=256)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE and config["model_max_length"] == 256
    loaded = Tokenizer.from_file(tmp_path)  # the file adds a bos post-processor for transformers' tokenizer
    assert loaded.difference(trained) is None and loaded.special_tokens == trained.special_tokens
    assert {k: v for k, v in loaded.to_json().items() if k != "tokenizer"} == \
        {k: v for k, v in trained.to_json().items() if k != "tokenizer"}


def test_hf_auto_tokenizer_parity(trained, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trained.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (trained.bos_id, trained.eos_id, trained.pad_id)
    for text in FIXED_TEXTS + _random_texts(30, seed=7):
        assert hf.encode(text, add_special_tokens=False) == trained.encode(text)
    for messages, add_prompt in [(CONVERSATION, False), (CONVERSATION[:2], True)]:
        hf_text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_prompt)
        ids, _ = trained.render_chat(messages, add_generation_prompt=add_prompt)
        assert hf_text == trained.decode(ids, skip_special=False)
    custom = _llama3_like(trained, tmp_path / "llama3")
    hf_custom = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "llama3"))
    hf_text = hf_custom.apply_chat_template(CONVERSATION, tokenize=False)
    assert hf_text == custom.decode(custom.render_chat(CONVERSATION)[0], skip_special=False)
