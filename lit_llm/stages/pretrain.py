"""PretrainLM: causal (next-token) or masked-LM pretraining of the shared backbone.

The causal objective is GPT's; the masked objective is BERT's (15% of positions selected; of those 80% become
<|mask|>, 10% a random token, 10% stay) with bidirectional attention. Both use `losses.causal_lm_loss`, which is
a cross-entropy over non-ignored targets; for masked LM the targets are the original tokens at selected positions.

The backbone is built in `configure_model`, once the data module has produced the tokenizer, so the model's
vocabulary always equals the tokenizer's (`backbone.vocab_size` is taken from it).
"""

from dataclasses import replace
from typing import Literal

import torch
import torchmetrics

from lit_llm.checkpoint import load_backbone
from lit_llm.evaluation import generate_texts
from lit_llm.losses import IGNORE_INDEX, causal_lm_loss
from lit_llm.model import ModelConfig, Transformer
from lit_llm.optim import OptimConfig
from lit_llm.stages.base import TRAIN_DTYPE, StageModule


class PretrainLM(StageModule):
    """Pretraining stage.

    Args:
        backbone: Model size and shape; `vocab_size` is replaced by the tokenizer's.
        optim: Optimizer and schedule.
        objective: "causal" (next-token prediction) or "masked" (BERT-style masked LM, bidirectional).
        mask_prob: Share of positions selected for prediction under the masked objective.
        init_from: Continue pretraining from a lit_llm checkpoint or a Hugging Face directory or hub id
            (its config and tokenizer win over `backbone` and the data module's tokenizer).
        activation_checkpointing: Recompute each block in the backward pass to save activation memory.
        max_new_tokens: Tokens `lit-llm predict` generates per prompt.
    """

    stage = "pretrain"
    chat = False  # a base model: asked as its corpus shows questions, and only on the task world's own data

    def __init__(
        self,
        backbone: ModelConfig | None = None,
        optim: OptimConfig | None = None,
        objective: Literal["causal", "masked"] = "causal",
        mask_prob: float = 0.15,
        init_from: str | None = None,
        activation_checkpointing: bool = False,
        max_new_tokens: int = 12,
    ) -> None:
        super().__init__(optim)
        self.backbone_config = backbone or ModelConfig()
        self.objective, self.mask_prob, self.init_from = objective, mask_prob, init_from
        self.activation_checkpointing, self.max_new_tokens = activation_checkpointing, max_new_tokens
        self.eval_ppl = torchmetrics.text.Perplexity(ignore_index=IGNORE_INDEX)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.init_from:
            loaded = load_backbone(self.init_from, dtype=TRAIN_DTYPE)
            self.model, self.tokenizer, self.parent_run_id = loaded.model, loaded.tokenizer, loaded.run_id
            data_tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
            if data_tokenizer is not None and (difference := self.tokenizer.difference(data_tokenizer)):
                raise ValueError(f"the data module tokenized with another tokenizer than init_from {self.init_from}"
                                 f": {difference} (here = the checkpoint's). Point the data module's `tokenizer` at "
                                 f"the checkpoint's (`lit-llm export` writes its tokenizer.json)")
        else:
            self.tokenizer = self.trainer.datamodule.tokenizer
            self.model = Transformer(replace(self.backbone_config, vocab_size=self.tokenizer.vocab_size))
        self.model.activation_checkpointing = self.activation_checkpointing

    def mask_tokens(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT's 80/10/10 corruption of a `mask_prob` share of positions; returns (inputs, targets), (B, T) each."""
        if self.tokenizer.mask_id is None:
            raise ValueError("the masked objective needs a tokenizer with a <|mask|> token")
        selected = torch.rand(input_ids.shape, device=input_ids.device) < self.mask_prob
        targets = input_ids.masked_fill(~selected, IGNORE_INDEX)
        roll = torch.rand(input_ids.shape, device=input_ids.device)
        inputs = input_ids.masked_fill(selected & (roll < 0.8), self.tokenizer.mask_id)
        random_tokens = torch.randint_like(input_ids, self.model.config.vocab_size)
        inputs = torch.where(selected & (roll >= 0.8) & (roll < 0.9), random_tokens, inputs)
        return inputs, targets

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits (B, T, V) and targets (B, T) of a batch under the configured objective."""
        if self.objective == "masked":
            inputs, targets = self.mask_tokens(batch["input_ids"])
            logits = self.model(inputs, causal=False)
        else:
            targets = batch["labels"]
            logits = self.model(batch["input_ids"])
        return causal_lm_loss(logits, targets), logits, targets

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self.forward_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def eval_step(self, batch: dict[str, torch.Tensor], prefix: str) -> None:
        loss, logits, targets = self.forward_loss(batch)
        self.eval_ppl.update(logits.float(), targets)
        self.log(f"{prefix}/loss", loss, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self.eval_epoch_end("test")

    def eval_epoch_end(self, prefix: str) -> None:
        self.log(f"{prefix}/ppl", self.eval_ppl.compute())
        self.eval_ppl.reset()

    def predict_step(self, batch: list[str], batch_idx: int) -> list[dict]:
        """Greedy completions of a batch of prompt strings (see `TextDataModule.predict_prompts`)."""
        prompts = [self.tokenizer.encode(p, bos=self.tokenizer.add_bos) for p in batch]
        completions = generate_texts(self.model, self.tokenizer, prompts, self.max_new_tokens)
        return [{"prompt": p, "completion": c} for p, c in zip(batch, completions)]

    def render_question(self, prompt: str, system_prompt: str | None = None) -> list[int]:
        """A base model sees questions as the corpus shows them: a new document "Q: ...\\nA:"."""
        return self.tokenizer.encode(f"Q: {prompt}\nA:", bos=self.tokenizer.add_bos)

    def answer_stop_ids(self) -> list[int]:
        return self.tokenizer.eos_ids()
