"""What every stage module shares: the backbone under `self.model`, its tokenizer, the optimizer, and the
checkpoint metadata that lets later stages, `generate` and `export` load any checkpoint safely.

One thin base class, not a hierarchy: each stage adds only its step.
"""

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import MLFlowLogger

from lit_llm.checkpoint import META_KEY, checkpoint_meta
from lit_llm.model import Transformer
from lit_llm.optim import OptimConfig, configure_adamw
from lit_llm.tokenizer import Tokenizer


class StageModule(pl.LightningModule):
    """Base of the stage modules.

    Subclasses set `stage`, build `self.model` (a `Transformer`) and `self.tokenizer`, and may set
    `parent_run_id` (the MLflow run that produced their starting weights) and `samples` (rows of sample
    generations that `SampleGenerations` logs as a table).
    """

    stage: str = "base"

    def __init__(self, optim: OptimConfig | None = None) -> None:
        super().__init__()
        self.optim = optim or OptimConfig()
        self.model: Transformer | None = None
        self.tokenizer: Tokenizer | None = None
        self.parent_run_id: str | None = None
        self.samples: list[dict] = []

    @property
    def flops_per_token(self) -> float | None:
        """Training FLOPs per token of the backbone (for MFU), None before the model exists."""
        return self.model.flops_per_token() if self.model is not None else None

    def mlflow_run_id(self) -> str | None:
        for logger in self.loggers:
            if isinstance(logger, MLFlowLogger):
                return logger.run_id
        return None

    def configure_optimizers(self) -> dict:
        return configure_adamw(self, self.optim, int(self.trainer.estimated_stepping_batches))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = checkpoint_meta(self.stage, self.model.config, self.tokenizer, self.mlflow_run_id())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(META_KEY, {})
        if meta.get("stage") not in (None, self.stage):
            raise ValueError(
                f"this checkpoint was written by the {meta['stage']!r} stage; {type(self).__name__} resumes only "
                f"{self.stage!r} checkpoints (use init_from to start a new stage from it)"
            )
