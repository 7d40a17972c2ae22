"""A model's own tokenizer files, as users bring them: the chat template rendered as `transformers` renders it, the
assistant-only loss mask on ChatML, Llama-3 and Llama-2-style templates (exactly the assistant turns and their end
token), bos as the model expects, and every eos id of generation_config.json."""

from pathlib import Path

import pytest

from lit_llm.data.sft import encode_example
from lit_llm.losses import IGNORE_INDEX
from lit_llm.tokenizer import Tokenizer
from tests.hf_fixtures import STYLES, write_chat_tokenizer

transformers = pytest.importorskip("transformers")

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 12 plus 30?"},
    {"role": "assistant", "content": "The answer is 42."},
    {"role": "user", "content": "And 2 times 3?"},
    {"role": "assistant", "content": "6"},
]
# What each assistant turn contributes to the mask: its content and the token that closes it.
ASSISTANT_TEXT = {
    "chatml": ["The answer is 42.<|im_end|>", "6<|im_end|>"],
    "llama3": ["The answer is 42.<|eot_id|>", "6<|eot_id|>"],
    "llama2": [" The answer is 42. </s>", " 6 </s>"],
}


@pytest.fixture(scope="module", params=list(STYLES))
def style_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    directory = tmp_path_factory.mktemp(request.param)
    write_chat_tokenizer(request.param, directory)
    return request.param, directory


def masked_runs(tok: Tokenizer, ids: list[int], mask: list[bool]) -> list[str]:
    """The text of each maximal run of masked tokens."""
    runs, current = [], []
    for token, keep in zip(ids + [None], mask + [False]):
        if keep:
            current.append(token)
        elif current:
            runs.append(tok.decode(current, skip_special=False))
            current = []
    return runs


def test_rendering_equals_transformers_apply_chat_template(style_dir: tuple[str, Path]) -> None:
    style, directory = style_dir
    ours = Tokenizer.from_file(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    for messages, prompt in ((CONVERSATION, False), (CONVERSATION[:4], True)):
        ids, _ = ours.render_chat(messages, add_generation_prompt=prompt)
        expected = theirs.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True)
        assert ids == list(getattr(expected, "input_ids", expected))


def test_the_mask_covers_exactly_the_assistant_turns_and_their_end_token(style_dir: tuple[str, Path]) -> None:
    style, directory = style_dir
    tok = Tokenizer.from_file(directory)
    ids, mask = tok.render_chat(CONVERSATION)
    assert masked_runs(tok, ids, mask) == ASSISTANT_TEXT[style]
    example = encode_example(tok, CONVERSATION)  # SFT's targets are exactly the masked tokens
    targets = [t for t in example.labels if t != IGNORE_INDEX]
    assert targets == [t for t, keep in zip(ids, mask) if keep]
    prompt_ids, prompt_mask = tok.render_chat(CONVERSATION[:4], add_generation_prompt=True)
    assert ids[: len(prompt_ids)] == prompt_ids and prompt_mask == mask[: len(prompt_ids)]
    assert masked_runs(tok, prompt_ids, prompt_mask) == ASSISTANT_TEXT[style][:1]  # the earlier turn only


def test_bos_and_stop_tokens_as_the_model_expects(style_dir: tuple[str, Path]) -> None:
    style, directory = style_dir
    tok = Tokenizer.from_file(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    assert tok.encode("Hello world", bos=tok.add_bos) == theirs("Hello world")["input_ids"]
    assert tok.add_bos == (style != "chatml") and (tok.bos_id is None) == (style == "chatml")
    stops = {tok.backend.token_to_id(t) for t in STYLES[style]["stops"]}
    assert stops <= set(tok.chat_stop_ids()) and stops <= set(tok.eos_ids())
    again = Tokenizer.from_json(tok.to_json())  # what a checkpoint carries keeps them
    assert (again.add_bos, again.chat_stop_ids(), again.eos_ids()) == (tok.add_bos, tok.chat_stop_ids(), tok.eos_ids())


def test_a_saved_tokenizer_keeps_bos_behaviour(style_dir: tuple[str, Path], tmp_path: Path) -> None:
    style, directory = style_dir
    tok = Tokenizer.from_file(directory)
    tok.save(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    assert again.add_bos == tok.add_bos
    assert transformers.AutoTokenizer.from_pretrained(tmp_path)("Hi")["input_ids"] == tok.encode("Hi", bos=tok.add_bos)
