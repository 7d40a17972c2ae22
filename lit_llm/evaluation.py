"""Greedy generation to text, and the gold evaluation on the built-in task world (`GoldEval`, on by default).

Every stage that generates is scored the same way: held-out task-world questions answered greedily (KV cache),
each answer checked against its gold answer (`lit_llm.world.is_correct`). The stage says only how a question
becomes tokens (`render_question`: the chat template for an instruction model, a "Q: ... A:" document for a base
model) and which tokens end an answer (`answer_stop_ids`); the task world stays out of the stages.
"""

from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import torch

from lit_llm.callbacks import log_table
from lit_llm.generation import generate, left_pad
from lit_llm.model import Transformer
from lit_llm.tokenizer import Tokenizer
from lit_llm.world import Example, is_correct, make_examples


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
    stop = list(stop_ids) if stop_ids is not None else tokenizer.eos_ids()
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


class GoldEval(pl.Callback):
    """`val/gold_accuracy` after each validation (`test/gold_accuracy` in `lit-llm test`): greedy answers to
    held-out task-world questions (the val or test split), each rank answering its share; the first answers go to
    MLflow as the run's sample table (`samples/step_<N>.json`). On by default; configure it with `--gold.examples`,
    `--gold.max_new_tokens`, ... (or a `gold:` section in YAML).

    Stages that do not generate (the reward model) are skipped; a base model (PretrainLM) only on the task world's
    own data, whose "Q: ... A:" documents it is asked in.

    Args:
        examples: Questions answered at each validation; 0 disables the evaluation.
        max_new_tokens: Tokens generated per answer at most.
        max_digits: Difficulty of the questions (the task world's `max_digits`).
        batch_size: Questions generated per batch.
        num_samples: Answers logged to MLflow as a table at each validation.
    """

    def __init__(self, examples: int = 64, max_new_tokens: int = 16, max_digits: int = 2, batch_size: int = 32,
                 num_samples: int = 4) -> None:
        self.examples, self.max_new_tokens, self.max_digits = examples, max_new_tokens, max_digits
        self.batch_size, self.num_samples = batch_size, num_samples

    def applies(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> bool:
        if not self.examples or not getattr(pl_module, "generates", False) or trainer.sanity_checking:
            return False
        return getattr(pl_module, "chat", True) or getattr(trainer.datamodule, "is_task_world", False)

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.applies(trainer, pl_module):
            self.evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.applies(trainer, pl_module):
            self.evaluate(trainer, pl_module, "test")

    def evaluate(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", split: str) -> None:
        """Answer this rank's share of the split's questions, log the accuracy over all ranks and the table."""
        examples = make_examples(self.examples, split=split, seed=0, max_digits=self.max_digits)
        system = getattr(trainer.datamodule, "system_prompt", None)
        rows = gold_eval(pl_module.model, pl_module.tokenizer, examples[trainer.global_rank::trainer.world_size],
                         lambda ex: pl_module.render_question(ex.prompt, system), self.max_new_tokens,
                         stop_ids=pl_module.answer_stop_ids(), batch_size=self.batch_size)
        # (correct, answered) summed over ranks; a float32 mean, as a torchmetrics MeanMetric gives it
        counts = torch.tensor([sum(row["correct"] for row in rows), len(rows)], dtype=torch.float32,
                              device=pl_module.device)
        correct, total = trainer.strategy.reduce(counts, reduce_op="sum")
        pl_module.log(f"{split}/gold_accuracy", correct / total.clamp(min=1.0), rank_zero_only=True)
        log_table(trainer, rows[: self.num_samples], f"samples/step_{trainer.global_step:07d}.json")
