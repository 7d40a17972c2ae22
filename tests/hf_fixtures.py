"""Offline stand-ins for models users bring: a byte-level BPE trained here, saved with the special tokens, chat
template and generation config of a model family (ChatML as Qwen2.5-Instruct, Llama-3-Instruct, Llama-2-chat),
and a random tiny `transformers` model of that family with the same vocabulary.

The templates are written here in each family's published format (the text they render), not copied."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from lit_llm.world import alpaca_prompt, sft_records

CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (  # system folded into the first user turn; bos before and eos after every exchange
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
STYLES = {  # special tokens, tokenizer_config entries, generation_config eos tokens, bos post-processor
    "chatml": dict(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], template=CHATML_TEMPLATE,
                   config={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                   stops=["<|im_end|>", "<|endoftext|>"], bos_processor=False),
    "llama3": dict(special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>"], template=LLAMA3_TEMPLATE,
                   config={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                   stops=["<|end_of_text|>", "<|eot_id|>"], bos_processor=True),
    "llama2": dict(special=["<unk>", "<s>", "</s>"], template=LLAMA2_TEMPLATE,
                   config={"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True},
                   stops=["</s>"], bos_processor=True),
}
FAMILY_CLASSES = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "llama": ("LlamaConfig", "LlamaForCausalLM")}


def training_texts(n: int = 400) -> list[str]:
    """Task-world questions and answers: what the chain tests train on, so the merges fit it."""
    return [f"{alpaca_prompt(r['instruction'], r['input'])}\n{r['output']}" for r in sft_records(n, seed=3)]


def write_chat_tokenizer(style: str, directory: Path, vocab_size: int = 400, texts: list[str] | None = None) -> int:
    """Train a byte-level BPE with `style`'s special tokens first (on `texts`, by default `training_texts()`) and
    save it as a Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, generation_config.json).
    Returns the vocabulary size."""
    spec = STYLES[style]
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["special"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts or training_texts(), trainer)
    if spec["bos_processor"]:
        bos = spec["config"]["bos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, backend.token_to_id(bos))])
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": spec["template"], **spec["config"]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    stops = [backend.token_to_id(t) for t in spec["stops"]]
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": stops}))
    return backend.get_vocab_size()


def write_tiny_model(family: str, directory: Path, vocab_size: int, **changes) -> torch.nn.Module:
    """A random tiny `transformers` model of `family` saved into `directory` (beside a tokenizer)."""
    import transformers

    config_class, model_class = FAMILY_CLASSES[family]
    sizes = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    config = getattr(transformers, config_class)(**{**sizes, **changes})
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    model.save_pretrained(directory)
    return model


def hf_chat_model(style: str, family: str, directory: Path, **changes) -> Path:
    """A tokenizer of `style` and a random tiny model of `family` in one Hugging Face folder."""
    vocab = write_chat_tokenizer(style, directory)
    write_tiny_model(family, directory, vocab, **changes)
    return directory
