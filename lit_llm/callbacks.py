"""Callbacks shared by every stage: run metadata, throughput/MFU, sample generations, predictions, compilation.
(Checkpoints: `lit_llm.checkpointing`; NaN/inf: `lit_llm.nonfinite`; progress: `lit_llm.progress`; the gold
evaluation: `lit_llm.evaluation`.)

Stages never talk to MLflow directly; these callbacks read what a stage exposes (`stage`, `parent_run_id`,
`samples`) and write it to the run.
"""

import json
import os
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_llm.model import Block
from lit_llm.tracking import MLflowLogger, flatten, run_tags


def mlflow_logger(trainer: "pl.Trainer") -> MLFlowLogger | None:
    """The trainer's MLflow logger, if it has one."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            return logger
    return None


@rank_zero_only
def log_table(trainer: "pl.Trainer", rows: list[dict], artifact_file: str) -> None:
    """Log rows of dicts (same keys) as an MLflow table artifact of the run (shown by the UI's Evaluation tab),
    with the global step as an extra column; a no-op without an MLflow logger."""
    logger = mlflow_logger(trainer)
    if not rows or logger is None:
        return
    columns = {key: [str(row.get(key, "")) for row in rows] for key in rows[0]}
    columns["step"] = [trainer.global_step] * len(rows)
    logger.experiment.log_table(logger.run_id, data=columns, artifact_file=artifact_file)


class RunMetadata(pl.Callback):
    """Records what makes a run reproducible: tags, flattened config as params, the config file as an artifact.

    Tags: `lit_llm.stage`, `lit_llm.parent_run_id`, `lit_llm.git_sha`, `lit_llm.seed`, `lit_llm.data_fingerprint`,
    and `lit_llm.version.<package>`. The resolved config is logged as `config.yaml` of this run (Lightning's
    SaveConfigCallback writes one file per experiment and collides on the second run).

    Args:
        config: The resolved config as a nested dict.
        config_text: The same config as YAML text.
        seed: The seed the run used.
    """

    def __init__(self, config: dict[str, Any], config_text: str, seed: int | None) -> None:
        self.config = config
        self.config_text = config_text
        self.seed = seed
        self._logged = False

    @rank_zero_only
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        logger = mlflow_logger(trainer)
        if isinstance(logger, MLflowLogger):
            logger.run_dir = trainer.default_root_dir  # where metrics the server never got are written
        if logger is None or self._logged:
            return
        client, run_id = logger.experiment, logger.run_id
        for key, value in self.tags(trainer, pl_module).items():
            client.set_tag(run_id, key, value)
        logger.log_hyperparams({k: v for k, v in flatten(self.config).items() if v is not None})
        # a resumed run continues its run (`MLflowLogger.continue_run`): its config goes beside the first one
        name = f"resumes/{time.strftime('%Y%m%dT%H%M%S')}/config.yaml" if getattr(logger, "continued", False) \
            else "config.yaml"
        client.log_text(run_id, self.config_text, name)
        self._logged = True

    def tags(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> dict[str, str]:
        datamodule = getattr(trainer, "datamodule", None)
        return run_tags(getattr(pl_module, "stage", type(pl_module).__name__), seed=self.seed,
                        fingerprint=str(getattr(datamodule, "fingerprint", "unknown")),
                        parent_run_id=getattr(pl_module, "parent_run_id", None))


class Throughput(pl.Callback):
    """Logs training tokens/s and, when a peak is known, model FLOPs utilisation (MFU).

    MFU = flops_per_token × tokens/s ÷ peak FLOP/s, with flops_per_token from the backbone config (attention
    included). Tokens are counted from `batch["input_ids"]` (all positions, padding included).

    Args:
        peak_flops: Peak FLOP/s of one device at the training precision: a number (e.g. 989e12), or the path of
            the JSON file that `lit-llm bench --out bench.json` wrote on the training machine (its measured
            `peak_flops` is read; run the bench with the training dtype, e.g. `--dtype bfloat16` for
            bf16-mixed). None: tokens/s only, no MFU.
        log_every_n_steps: Averaging window in batches (default: the trainer's `log_every_n_steps`).
    """

    def __init__(self, peak_flops: float | str | None = None, log_every_n_steps: int | None = None) -> None:
        if isinstance(peak_flops, (str, os.PathLike)):
            peak_flops = self.read_peak_flops(peak_flops)  # read once, at construction: a bad path fails early
        self.peak_flops = peak_flops
        self.log_every_n_steps = log_every_n_steps
        self._tokens = 0
        self._start: float | None = None

    @staticmethod
    def read_peak_flops(path: "str | os.PathLike[str]") -> float:
        """The `peak_flops` of a `lit-llm bench` JSON file, with errors that name the file."""
        try:
            with open(path, encoding="utf-8") as f:
                results = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"Throughput(peak_flops={str(path)!r}): no such file; give a number or the "
                                    f"JSON written by `lit-llm bench --out`") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"Throughput(peak_flops={str(path)!r}): not a JSON file ({err})") from err
        peak = results.get("peak_flops") if isinstance(results, dict) else None
        if not isinstance(peak, (int, float)) or isinstance(peak, bool) or not 0 < peak < float("inf"):
            raise ValueError(f"{path} has no positive 'peak_flops' (got {peak!r}); it is written by `lit-llm "
                             f"bench` unless the matmul section was skipped")
        return float(peak)

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if isinstance(batch, dict) and "input_ids" in batch:
            self._tokens += batch["input_ids"].numel() * trainer.world_size
        every = self.log_every_n_steps or trainer.log_every_n_steps
        if (batch_idx + 1) % every or self._start is None:
            return
        elapsed = time.perf_counter() - self._start
        tokens_per_s = self._tokens / max(elapsed, 1e-9)
        metrics = {"train/tokens_per_s": tokens_per_s}
        flops = getattr(pl_module, "flops_per_token", None)
        if self.peak_flops and flops:
            metrics["train/mfu"] = flops * tokens_per_s / (self.peak_flops * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._tokens, self._start = 0, time.perf_counter()


class SampleGenerations(pl.Callback):
    """Logs the stage's sample generations (prompt, completion, ...) to MLflow as a table after each validation.

    The stage fills `pl_module.samples` (a list of dicts with the same keys) during validation; each validation
    writes `samples/step_<global_step>.json`, which the MLflow UI shows as a table (Artifacts / Evaluation).
    """

    @rank_zero_only
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the module's, which
        # is where the stage fills `samples`.
        if not trainer.sanity_checking:
            log_table(trainer, getattr(pl_module, "samples", None) or [],
                      f"samples/step_{trainer.global_step:07d}.json")


class PredictionWriter(BasePredictionWriter):
    """Writes what `lit-llm predict` returns (rows of dicts) to `<default_root_dir>/predictions.jsonl`.

    Each rank writes its own rows (`predictions.rank<N>.jsonl` when there are several ranks).
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", predictions: Any,
                           batch_indices: Any) -> None:
        name = "predictions.jsonl" if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.jsonl"
        path = os.path.join(trainer.default_root_dir, name)
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for batch in predictions:
                for row in batch:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {sum(len(b) for b in predictions)} predictions to {path}")


class Compile(pl.Callback):
    """Compiles every decoder block of the trained model(s) with `torch.compile` when fitting starts.

    Per-block compilation (as torchtune does it) keeps graphs small and compile time short, and works under DDP and
    FSDP (one FSDP unit per block). `nn.Module.compile` compiles in place, so parameter names and checkpoints are the
    same as without it. Generation runs the blocks eagerly (see `generation.generate`); frozen reference and
    reward models are not compiled. Add it with `--trainer.callbacks+=lit_llm.callbacks.Compile`.

    Args:
        backend: torch.compile backend: "inductor" (generates kernels; needs a C++ compiler on CPU) or "aot_eager"
            (traces without code generation; for checking that the model compiles).
        mode: Inductor mode: None (default), "reduce-overhead" (CUDA graphs) or "max-autotune".
        dynamic: Compile for dynamic shapes from the start; None does so after the first shape change.
    """

    def __init__(self, backend: str = "inductor", mode: str | None = None, dynamic: bool | None = None) -> None:
        self.backend, self.mode, self.dynamic = backend, mode, dynamic

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        for module in pl_module.modules():
            if isinstance(module, Block):
                module.compile(backend=self.backend, mode=self.mode, dynamic=self.dynamic)
