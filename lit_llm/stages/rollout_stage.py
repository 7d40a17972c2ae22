"""What the stages that learn from their own samples (PPO, GRPO) share besides `StageModule`: manual optimisation
with a schedule over all optimizer steps, how they sample (`RolloutConfig`, temperature > 0), one random generator
per rank for sampling and mini-batch order, kept in checkpoints so a resumed run draws the same rollouts, the table
of rollouts logged to MLflow, and the greedy validation."""

from typing import Any

import torch
from torch import Tensor

from lit_llm.callbacks import log_table
from lit_llm.lora import LoRAConfig
from lit_llm.optim import OptimConfig, configure_adamw
from lit_llm.rollout import RolloutConfig, sample
from lit_llm.stages.base import StageModule


class RolloutStage(StageModule):
    """Base of PPO and GRPO. Subclasses set `state_key` (their entry in the checkpoint), `updates_per_batch` and
    `reward_source`, and may add values to the checkpoint entry with `extra_state` / `restore_extra_state`."""

    state_key = "lit_llm_rollout"

    def __init__(self, optim: OptimConfig | None, lora: LoRAConfig | None, rollout: RolloutConfig | None,
                 rollout_table_every: int, rollout_table_rows: int) -> None:
        super().__init__(optim, lora)
        self.automatic_optimization = False
        self.rollout = rollout or RolloutConfig()
        if self.rollout.temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0 for {self.stage.upper()} rollouts (sampling), got "
                             f"{self.rollout.temperature}")
        self.rollout_table_every, self.rollout_table_rows = rollout_table_every, rollout_table_rows
        self.generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None  # restored from a checkpoint, applied on first use

    @property
    def updates_per_batch(self) -> int:
        """Optimizer steps made per batch of prompts (what `trainer.global_step` advances by)."""
        raise NotImplementedError

    def configure_optimizers(self) -> dict:
        """AdamW whose schedule spans every optimizer step: `max_steps`, or the batches times `updates_per_batch`."""
        total = self.trainer.max_steps
        if total is None or total < 0:
            total = int(self.trainer.estimated_stepping_batches) * self.updates_per_batch
        return configure_adamw(self, self.optim, total)

    def rollout_generator(self) -> torch.Generator:
        """This rank's generator for sampling and mini-batch order (seeded from the run's seed and the rank)."""
        if self.generator is None or self.generator.device != self.device:
            generator = torch.Generator(device=self.device)
            if self._generator_state is not None:
                generator.set_state(self._generator_state)
            else:
                seed = torch.initial_seed() if self.base_seed is None else self.base_seed  # None outside fit
                generator.manual_seed(seed + 1000003 * self.global_rank)
            self.generator = generator
        return self.generator

    def log_rollout_table(self, rows: list[dict]) -> None:
        """A table of this rank's rollouts under rollouts/ in MLflow, named by the rollout's index."""
        log_table(self.trainer, rows, f"rollouts/rollout_{self.trainer.fit_loop.epoch_loop.batch_idx:07d}.json")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Greedy answers to the validation prompts, scored like rollouts (val/reward, val/response_length)."""
        greedy = RolloutConfig(self.rollout.max_new_tokens, temperature=0.0)
        samples = sample(self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"], greedy,
                         self.answer_stop_ids())
        raw = self.reward_source.score(batch["records"], samples.texts, samples.generation)
        size = len(samples.texts)
        self.log("val/reward", raw.float().mean(), batch_size=size, sync_dist=True, prog_bar=True)
        self.log("val/response_length", samples.generation.response_mask.sum(1).float().mean(), batch_size=size,
                 sync_dist=True)

    # ------------------------------------------------------------------------------------- checkpoints
    def extra_state(self) -> dict[str, Any]:
        return {}

    def restore_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also store every rank's rollout generator state (gathered to rank 0) and the subclass's own values."""
        super().on_save_checkpoint(checkpoint)
        states = self.gathered(self.rollout_generator().get_state())
        checkpoint[self.state_key] = {**self.extra_state(), "generator_states": states}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(self.state_key)
        if state is None:
            return
        self.restore_extra_state(state)
        states, rank = state["generator_states"], self.global_rank
        self._generator_state = states[rank].cpu() if rank < len(states) else None
        self.generator = None
