"""What the stages that learn from their own samples (PPO, GRPO) share besides `StageModule`: manual optimisation,
one random generator per rank for sampling and mini-batch order, kept in checkpoints so a resumed run draws the
same rollouts, and the table of rollouts logged to MLflow."""

from typing import Any

import torch
from torch import Tensor

from lit_llm.callbacks import log_table
from lit_llm.lora import LoRAConfig
from lit_llm.optim import OptimConfig
from lit_llm.stages.base import StageModule


class RolloutStage(StageModule):
    """Base of PPO and GRPO. Subclasses set `state_key` (their entry in the checkpoint) and may add values to it
    with `extra_state` / `restore_extra_state`."""

    state_key = "lit_llm_rollout"

    def __init__(self, optim: OptimConfig | None = None, lora: LoRAConfig | None = None) -> None:
        super().__init__(optim, lora)
        self.automatic_optimization = False
        self.generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None  # restored from a checkpoint, applied on first use

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
