"""Batched greedy generation to text, and gold-answer evaluation on the built-in task world.

Shared by every stage's validation: the stage says how an example becomes a prompt (a "Q: ... A:" document for a
base model, the chat template for an instruction model); generation, decoding and scoring are the same.
"""

from collections.abc import Callable, Sequence

import torch

from lit_llm.data.tasks import Example, is_correct
from lit_llm.generation import generate, left_pad
from lit_llm.model import Transformer
from lit_llm.tokenizer import Tokenizer


def generate_texts(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: int = 32,
    stop_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> list[str]:
    """Generate a completion for each tokenized prompt (greedy by default) and decode it to text."""
    device = next(model.parameters()).device
    stop = list(stop_ids) if stop_ids is not None else [tokenizer.eos_id]
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(list(prompts[start : start + batch_size]), tokenizer.pad_id)
        out = generate(model, ids.to(device), mask.to(device), max_new_tokens, temperature=temperature,
                       eos_id=stop, pad_id=tokenizer.pad_id, generator=generator, top_k=top_k,
                       top_p=top_p)
        for row, row_mask in zip(out.response.tolist(), out.response_mask.tolist()):
            texts.append(tokenizer.decode([t for t, keep in zip(row, row_mask) if keep]))
    return texts


def gold_eval(
    model: Transformer,
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    render: Callable[[Example], list[int]],
    max_new_tokens: int = 16,
    stop_ids: Sequence[int] | None = None,
    batch_size: int = 32,
) -> list[dict]:
    """Greedy answers to `examples`, scored against their gold answers.

    Returns:
        One row per example: prompt, completion, gold answer and whether the completion is correct.
    """
    prompts = [render(ex) for ex in examples]
    completions = generate_texts(model, tokenizer, prompts, max_new_tokens, stop_ids, batch_size)
    return [
        {"prompt": ex.prompt, "completion": text, "gold": ex.answer, "correct": is_correct(ex, text)}
        for ex, text in zip(examples, completions)
    ]
