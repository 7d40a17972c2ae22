"""The `lit-llm` command: Lightning's fit/validate/test/predict plus lit_llm's own commands.

`lit-llm fit --config configs/pretrain/tiny.yaml` runs a stage through `LitLLMCLI`, a LightningCLI whose model
and data are chosen by class path in the config. Every run logs to MLflow (see `tracking.py`), records its
metadata (`callbacks.RunMetadata`) and checkpoints to `<trainer.default_root_dir>/checkpoints/last.ckpt`.
Other commands (`generate`, `export`, ...) are plain functions registered in `COMMANDS`.
"""

import difflib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any


import yaml
from jsonargparse import lazy_instance
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_llm.callbacks import (NonFiniteGuard, PredictionWriter, RunMetadata, SampleGenerations, StageCheckpoint,
                               Throughput)
from lit_llm.hints import exit_with_error
from lit_llm.progress import Progress, StepProgressBar
from lit_llm.checkpoint import SafeCheckpointIO, checkpoint_origin, guard_strategy_loads
from lit_llm.stages.base import StageModule
from lit_llm.tracking import MLflowLogger

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


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

    def error(self, message: str, ex: Exception | None = None):
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

    def before_instantiate_classes(self) -> None:
        """Give each stage its own run directory unless the config names one."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.get("default_root_dir") is None:
            stage = config.model.class_path.rsplit(".", 1)[-1].lower()
            config.trainer.default_root_dir = f"runs/{stage}"

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

    def instantiate_trainer(self, **kwargs):
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
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    # We always pass args explicitly (in-process calls from tests and pipelines included), so Lightning's warning
    # about args given beside sys.argv does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    LitLLMCLI(args=argv)


def command_table() -> dict[str, tuple[Callable[[list[str]], None], str]]:
    """Every `lit-llm` command: name -> (handler taking the remaining argv, one-line help)."""
    from lit_llm import commands

    table = {name: (lambda argv, n=name: run_trainer_command([n, *argv]), f"Lightning's {name} of a stage")
             for name in TRAINER_COMMANDS}
    table.update(commands.COMMANDS)
    return table


def print_overview(table: dict) -> None:
    print("usage: lit-llm COMMAND [options]   (lit-llm COMMAND --help for a command's options)\n")
    print("commands:")
    for name, (_, help_text) in table.items():
        print(f"  {name:<10} {help_text}")
    print("\nexample: lit-llm fit --config configs/pretrain/tiny.yaml")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lit-llm` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    table = command_table()
    if not argv or argv[0] in ("-h", "--help"):
        print_overview(table)
        return
    name, rest = argv[0], argv[1:]
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        sys.exit(f"lit-llm: unknown command '{name}'.{hint} Commands: {', '.join(table)}")
    table[name][0](rest)


if __name__ == "__main__":
    main()
