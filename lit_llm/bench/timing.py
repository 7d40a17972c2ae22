"""Timing one thing on CPU or CUDA: synchronised clocks, autocast, the per-step timer of a Lightning fit."""

import contextlib
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch

from lit_llm.bench.settings import DTYPES, PRECISIONS, Settings


# ------------------------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(settings: Settings) -> contextlib.AbstractContextManager:
    """The training precision's autocast for code that runs outside a Trainer (generation)."""
    if settings.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=settings.device, dtype=DTYPES[settings.dtype])


class StepTimer(pl.Callback):
    """Wall time of every training batch, plus the module's logged per-step timings (PPO's split).

    Args:
        device: "cpu" or "cuda" (synchronised before reading the clock).
    """

    KEYS = ("train/time_generate_s", "train/time_score_s", "train/time_update_s", "train/response_length")

    def __init__(self, device: str) -> None:
        self.device = device
        self.rows: list[dict[str, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        sync(self.device)
        row = {"step_s": time.perf_counter() - self._start}
        metrics = trainer.callback_metrics
        row.update({key.removeprefix("train/"): float(metrics[key]) for key in self.KEYS if key in metrics})
        if isinstance(batch, dict) and torch.is_tensor(batch.get("input_ids")):
            row["rows"], row["columns"] = batch["input_ids"].shape
        self.rows.append(row)


def fit_timed(module: pl.LightningModule, data: Any, settings: Settings, max_steps: int,
              batches_per_step: int = 1, callbacks: list[pl.Callback] = (),
              **trainer_kwargs: Any) -> list[dict[str, float]]:
    """Train `module` for `max_steps` optimizer steps without logging, validation or checkpoints; the timings
    of the batches after the warm-up (`settings.warmup` batches)."""
    timer = StepTimer(settings.device)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(accelerator=settings.device, devices=1, precision=PRECISIONS[settings.dtype],
                             max_steps=max_steps, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             num_sanity_val_steps=0, callbacks=[timer, *callbacks], default_root_dir=root,
                             **trainer_kwargs)
        if isinstance(data, pl.LightningDataModule):
            trainer.fit(module, datamodule=data)
        else:
            trainer.fit(module, train_dataloaders=data)
    return timer.rows[settings.warmup:]


def median_of(rows: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows))


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide the Trainer's banner lines and data-loader advice for the bench's many short fits."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in ("does not have many workers", "but have no `val_dataloader`", "LeafSpec"):
                warnings.filterwarnings("ignore", message=f".*{message}")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
