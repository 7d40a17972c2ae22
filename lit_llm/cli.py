"""`lit-llm fit|validate|test|predict`: a stage run through `LitLLMCLI`, a LightningCLI whose model and data are
chosen by class path in the config. Every run logs to MLflow (`tracking.py`), records its metadata
(`callbacks.RunMetadata`), is scored by the gold evaluation (`evaluation.GoldEval`) and checkpoints to
`<trainer.default_root_dir>/checkpoints/last.ckpt` (`checkpointing.StageCheckpoint`). The `lit-llm` command table
is `commands.py`.
"""

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any


import yaml
from jsonargparse import lazy_instance
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_llm.callbacks import PredictionWriter, RunMetadata, SampleGenerations, Throughput
from lit_llm.checkpointing import StageCheckpoint
from lit_llm.nonfinite import NonFiniteGuard
from lit_llm.evaluation import GoldEval
from lit_llm.hints import exit_with_error
from lit_llm.progress import Progress, StepProgressBar
from lit_llm.checkpoint import SafeCheckpointIO, checkpoint_origin, guard_strategy_loads
from lit_llm.stages.base import StageModule
from lit_llm.tracking import MLflowLogger



class LitLLMArgumentParser(LightningArgumentParser):
    """Lightning's parser without prefix abbreviations (`--trainer.max_step` is not `max_steps`), whose errors are
    one line naming the nearest valid key (`lit_llm.hints`), without the usage (`--help` shows it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def option_keys(self, message: str) -> list[str]:
        """Option names of the subcommand parser the message is about (or of this parser)."""
        parser = self
        m = re.search(r"Subcommand '(\w+)'", message)
        for action in self._actions:
            if m and isinstance(getattr(action, "choices", None), dict) and m.group(1) in action.choices:
                parser = action.choices[m.group(1)]
        return [a.dest for a in parser._actions if isinstance(getattr(a, "dest", None), str)]

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:  # an inner parser: jsonargparse collects its message into the outer one's
            return super().error(message, ex)
        subcommand = getattr(ex, "subcommand_parser", None)
        prog = (subcommand or self).prog.replace(" [options]", "")
        exit_with_error(prog, message, lambda key: self.option_keys(message))


class LitLLMCLI(LightningCLI):
    """LightningCLI with lit_llm's defaults: MLflow logging, run metadata, sample tables, checkpoints."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=StageModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,  # the config is an artifact of each MLflow run instead (RunMetadata)
            trainer_defaults={"logger": lazy_instance(MLflowLogger)},
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "yaml", "prog": "lit-llm"},
            parser_class=LitLLMArgumentParser,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The gold evaluation is a callback of every run, configured in its own section (`--gold.examples=512`,
        or `gold:` in YAML): it scores any stage that generates, so it is no stage's parameter."""
        parser.add_lightning_class_args(GoldEval, "gold")

    def before_instantiate_classes(self) -> None:
        """Give each stage its own run directory unless the config names one, and point a record data module at the
        model's starting checkpoint for its tokenizer: the tokenizer flows from the config to the data and from the
        data to the model (`StageModule.setup`), never from a model to its data."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.get("default_root_dir") is None:
            stage = config.model.class_path.rsplit(".", 1)[-1].lower()
            config.trainer.default_root_dir = f"runs/{stage}"
        data_args, model_args = config.data.get("init_args"), config.model.get("init_args")
        if data_args is not None and "tokenizer_from" in data_args and data_args.tokenizer_from is None:
            data_args.tokenizer_from = model_args.get("init_from") if model_args is not None else None

    def _parse_ckpt_path(self) -> None:
        """Lightning reads `--ckpt_path` here first (for saved hyperparameters); an unreadable file gets an error
        that names it instead of a bare zip-archive error."""
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, OSError, ValueError, TypeError) as err:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise ValueError(f"cannot read checkpoint {path} (truncated, not a checkpoint, or it holds objects that "
                             f"are not plain data, which are refused so that no checkpoint can run code): {err}"
                             ) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer plus lit_llm's callbacks, passed at construction so that our StageCheckpoint
        replaces Lightning's default ModelCheckpoint instead of running beside it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        text = self._parser(self.subcommand).dump(config, skip_none=False)
        callbacks = [RunMetadata(yaml.safe_load(text), text, config.get("seed_everything")), SampleGenerations(),
                     PredictionWriter()]
        configured = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        if not any(isinstance(c, Throughput) for c in configured):
            callbacks.append(Throughput())
        if not any(isinstance(c, ModelCheckpoint) for c in configured):
            callbacks.append(StageCheckpoint())
        if not any(isinstance(c, NonFiniteGuard) for c in configured):
            callbacks.append(NonFiniteGuard())
        if not any(isinstance(c, Progress) for c in configured):
            callbacks.append(Progress())
        if config.trainer.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in configured):
            callbacks.append(StepProgressBar())
        trainer = super().instantiate_trainer(**kwargs, callbacks=configured + callbacks)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own or a sharded one
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        guard_strategy_loads(trainer.strategy)
        for callback in trainer.checkpoint_callbacks:  # known now, so that --ckpt_path=last finds last.ckpt
            if isinstance(callback, StageCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        self.continue_resumed_run(trainer, config)
        return trainer

    def continue_resumed_run(self, trainer: Any, config: Any) -> None:
        """A run resumed from a checkpoint of its own stage logs into the MLflow run that wrote it (one run per
        stage, whole curves), when that run is in the logger's store; otherwise a new run starts."""
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            ckpt_path = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
        if not ckpt_path or not os.path.exists(ckpt_path):
            return
        run_id, stage = checkpoint_origin(ckpt_path)
        if not run_id or stage != getattr(self.model, "stage", None):  # another stage's: refused when loaded
            return
        for logger in trainer.loggers:
            if isinstance(logger, MLflowLogger) and logger.continue_run(run_id):
                print(f"resuming MLflow run {run_id} from {ckpt_path}", file=sys.stderr)


class _DropTips(logging.Filter):
    """Drop Lightning's advertising "Tip:" lines; they bury the lines users need."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def run_trainer_command(argv: list[str]) -> None:
    """`lit-llm fit|validate|test|predict ...`: a LitLLMCLI run (argv starts with the subcommand)."""
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    # We always pass args explicitly (in-process calls from tests and pipelines included), so Lightning's warning
    # about args given beside sys.argv does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    LitLLMCLI(args=argv)


def fit_outputs(root: str | Path) -> list[Path]:
    """What a finished `lit-llm fit` leaves in its `trainer.default_root_dir`: the newest state, `last.ckpt`."""
    return [Path(root) / "checkpoints" / "last.ckpt"]


def fit_run_id(root: str | Path) -> str | None:
    """The MLflow run of a finished fit, from its last.ckpt."""
    return checkpoint_origin(fit_outputs(root)[0])[0]
