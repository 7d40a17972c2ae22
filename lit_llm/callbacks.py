"""Callbacks shared by every stage: run metadata, checkpoints, throughput/MFU, and sample generations.

Stages never talk to MLflow directly; these callbacks read what a stage exposes (`stage`, `parent_run_id`,
`samples`) and write it to the run.
"""

import json
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lit_llm.tracking import MLflowLogger, flatten, git_sha, package_versions


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
        tags = {
            "lit_llm.stage": getattr(pl_module, "stage", type(pl_module).__name__),
            "lit_llm.git_sha": git_sha(),
            "lit_llm.seed": str(self.seed),
            "lit_llm.data_fingerprint": str(getattr(datamodule, "fingerprint", "unknown")),
        }
        parent = getattr(pl_module, "parent_run_id", None)
        if parent:
            tags["lit_llm.parent_run_id"] = parent
        tags.update({f"lit_llm.version.{k}": v for k, v in package_versions().items()})
        return tags


class StopRequested(SystemExit):
    """Training stopped on SIGTERM or Ctrl-C after writing `last.ckpt`; the exit status is 128 + the signal's
    number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process stopped by it."""


class StageCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose default directory is `<trainer.default_root_dir>/checkpoints`, with `last.ckpt`.

    A fixed, predictable place per run directory lets a later stage's config name `init_from` ahead of time.
    `last.ckpt` is always the newest state: it is written at every validation and epoch end, on the triggers below,
    and overwritten in place by a resumed run (no `last-v1.ckpt`).

    Args:
        dirpath: Checkpoint folder (default `<trainer.default_root_dir>/checkpoints`).
        save_last: Write `last.ckpt`.
        every_n_train_steps: Also write it every N optimizer steps.
        train_time_interval: Also write it when this much time ("h:m:s") has passed since the last write; None =
            off. Unlike ModelCheckpoint's option of the same name, it adds to the other triggers instead of
            replacing the saves at validation and epoch ends.
        save_on_signal: On SIGTERM (a scheduler's preemption, `kill`) or a first Ctrl-C, finish the current step,
            write `last.ckpt` and stop with exit status 128 + signal (143, 130); the MLflow run ends KILLED. A
            second Ctrl-C stops at once. Resume with `--ckpt_path=last`.
        enable_version_counter: Write `last-v1.ckpt` instead of overwriting an existing `last.ckpt`.
        **kwargs: Other `ModelCheckpoint` options (`monitor`, `mode`, `filename`, ...).
    """

    def __init__(self, dirpath: str | None = None, save_last: bool = True, every_n_train_steps: int | None = None,
                 train_time_interval: timedelta | None = timedelta(minutes=30), save_on_signal: bool = True,
                 enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, save_last=save_last, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=enable_version_counter, **kwargs)
        self.time_interval, self.save_on_signal = train_time_interval, save_on_signal
        self._stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._last_write = time.monotonic()

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)

    # ------------------------------------------------------------------------------ stop on a signal
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Take SIGTERM and SIGINT over from here on (Lightning's own SIGTERM handler is installed just before and
        would stop without a checkpoint); the trainer's teardown restores the handlers from before `fit`."""
        self._last_write = time.monotonic()
        if self.save_on_signal and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._stop_signal = signum
        rank_zero_warn(f"received {signal.Signals(signum).name}: stopping after this step, writing last.ckpt "
                       f"first (Ctrl-C again to stop at once)")

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Write the final state when the last step was not a save point (max_steps between validations)."""
        if self._last_global_step_saved != trainer.global_step and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    # ------------------------------------------------------------------------------ extra triggers
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._last_global_step_saved == trainer.global_step:
            self._last_write = time.monotonic()
        stop, due = self._agreed_triggers(trainer, pl_module)
        if (stop or due) and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_write = time.monotonic()
        if stop:
            self._stop(trainer)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_validation_end(trainer, pl_module)
        if self._last_global_step_saved == trainer.global_step:
            self._last_write = time.monotonic()

    def _agreed_triggers(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> tuple[bool, bool]:
        """(stop requested on any rank, write due on rank 0's clock): every rank must save, or stop, together."""
        due = self.time_interval is not None and time.monotonic() - self._last_write >= \
            self.time_interval.total_seconds()
        flags = [float(self._stop_signal is not None), float(due)]
        if trainer.world_size > 1:
            flags = torch.tensor([flags[0], flags[1] * trainer.is_global_zero], device=pl_module.device)
            flags = trainer.strategy.reduce(flags, reduce_op="sum").tolist()
        return flags[0] > 0, flags[1] > 0

    def _stop(self, trainer: "pl.Trainer") -> None:
        signum = self._stop_signal or signal.SIGTERM
        name = signal.Signals(signum).name
        if trainer.is_global_zero:
            print(f"stopped on {name} at step {trainer.global_step}: wrote {self.last_model_path}; resume with "
                  f"--ckpt_path={self.last_model_path} (or run the same pipeline again)", file=sys.stderr, flush=True)
        raise StopRequested(128 + int(signum))


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
        from lit_llm.model import Block

        for module in pl_module.modules():
            if isinstance(module, Block):
                module.compile(backend=self.backend, mode=self.mode, dynamic=self.dynamic)


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite."""


class NonFiniteGuard(pl.Callback):
    """Stops the run, or skips the update, when a loss or a gradient is NaN or infinite.

    The loss is checked before each backward pass and every gradient before each optimizer step (all ranks agree
    on the verdict). "stop" raises `NonFiniteError` before the update, so the weights and the last checkpoint stay
    the last good state. "skip" drops the update: every gradient is set to None, so the optimizer leaves each
    parameter and its moments alone (the step counter and learning-rate schedule still advance). Each event is
    recorded in MLflow: the tag `lit_llm.nonfinite` holds the last message, the metric `train/nonfinite_skipped`
    counts skipped updates. On by default (action "stop"); configure it with
    `--trainer.callbacks+=lit_llm.callbacks.NonFiniteGuard --trainer.callbacks.action=skip`.

    Args:
        action: "stop" or "skip".
        max_skips: In "skip" mode, stop anyway after this many skipped updates (a run that keeps diverging
            should not go on silently).
    """

    def __init__(self, action: str = "stop", max_skips: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard action must be 'stop' or 'skip', got {action!r}")
        self.action, self.max_skips = action, max_skips
        self.skipped = 0
        self._bad_loss: str | None = None

    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: Any) -> None:
        if not torch.isfinite(loss.detach()).all():
            self._bad_loss = f"loss {loss.detach().float().mean().item()}"
            if self.action == "stop" and trainer.world_size == 1:  # with several ranks, decide together below
                self.fail(trainer, self._bad_loss)

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: Any) -> None:
        bad = self.nonfinite_gradients(pl_module, optimizer)
        flagged = torch.tensor(float(bool(bad) or self._bad_loss is not None), device=pl_module.device)
        if float(trainer.strategy.reduce(flagged, reduce_op="sum")) == 0:
            return
        what = self._bad_loss or (f"gradients of {', '.join(bad[:3])}" + (" ..." if len(bad) > 3 else "")
                                  if bad else "gradients on another rank")
        self._bad_loss = None
        if self.action == "stop" or self.skipped >= self.max_skips:
            self.fail(trainer, what)
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self.skipped += 1
        self.record(trainer, f"non-finite {what} at step {trainer.global_step}: update skipped "
                             f"({self.skipped} so far)")

    @staticmethod
    def nonfinite_gradients(pl_module: "pl.LightningModule", optimizer: Any) -> list[str]:
        """Names of the parameters whose gradient holds a NaN or inf (one sync for all of them)."""
        names = {id(p): n for n, p in pl_module.named_parameters()}
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return []
        norms = torch.stack(torch._foreach_norm([p.grad for p in params]))
        bad = (~torch.isfinite(norms)).nonzero().flatten().tolist()
        return [names.get(id(params[i]), "?") for i in bad]

    def fail(self, trainer: "pl.Trainer", what: str) -> None:
        last = next((c.last_model_path for c in trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")),
                    None)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        message = (f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}); stopped before "
                   f"the update, so {where}. Lower the learning rate, clip gradients, or skip such batches with "
                   f"NonFiniteGuard(action='skip')")
        self.record(trainer, message)
        raise NonFiniteError(message)

    def record(self, trainer: "pl.Trainer", message: str) -> None:
        rank_zero_warn(message)
        logger = mlflow_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            logger.experiment.set_tag(logger.run_id, "lit_llm.nonfinite", message[:5000])
            logger.log_metrics({"train/nonfinite_skipped": float(self.skipped)}, step=trainer.global_step)
