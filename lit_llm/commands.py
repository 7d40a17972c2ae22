"""The `lit-llm` command: a table of commands, each a function of the module that does the work, imported only when
its command runs, so `lit-llm --help` (and a mistyped command) imports neither torch nor Lightning nor MLflow.

    lit-llm COMMAND [options]      COMMAND --help for its options
"""

import difflib
import sys
from importlib import import_module
from typing import NamedTuple

from lit_llm import lean_imports, store_warmup


class Command(NamedTuple):
    """A `lit-llm` command: `module.function(argv)` runs it (`prefix` put in front of its arguments)."""

    module: str
    function: str
    help: str
    prefix: tuple[str, ...] = ()


COMMANDS = {
    **{name: Command("lit_llm.cli", "run_trainer_command", f"Lightning's {name} of a stage", (name,))
       for name in ("fit", "validate", "test", "predict")},
    "generate": Command("lit_llm.model_commands", "generate_command",
                        "complete a prompt with a checkpoint or HF directory"),
    "export": Command("lit_llm.model_commands", "export_command", "checkpoint -> Hugging Face directory"),
    "perplexity": Command("lit_llm.perplexity", "perplexity_command",
                          "loss and perplexity of a checkpoint or HF model on a text file"),
    "prepare": Command("lit_llm.data.prepare", "prepare_command", "clean, dedup, filter, mix, tokenize"),
    "rejection-sample": Command("lit_llm.rejection", "main", "best-of-n samples -> SFT data and preference pairs"),
    "pipeline": Command("lit_llm.pipeline", "main", "run a recipe's stages in order (configs/pipeline/)"),
    "report": Command("lit_llm.report", "main", "MLflow runs -> REPORT.md + plots; --check reported values"),
    "bench": Command("lit_llm.bench", "main", "matmul peak, train tokens/s + MFU, generation, DPO/PPO step time"),
}


def print_overview() -> None:
    print("usage: lit-llm COMMAND [options]   (lit-llm COMMAND --help for a command's options)\n")
    print("commands:")
    for name, command in COMMANDS.items():
        print(f"  {name:<16} {command.help}")
    print("\nexample: lit-llm fit --config configs/pretrain/tiny.yaml")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lit-llm` console script (and `python -m lit_llm`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print_overview()
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        sys.exit(f"lit-llm: unknown command '{name}'.{hint} Commands: {', '.join(COMMANDS)}")
    command, args = COMMANDS[name], [*COMMANDS[name].prefix, *rest]
    if command.module == "lit_llm.cli":
        store_warmup.start(args)  # a new MLflow store, created while torch is imported
    lean_imports.hide_from_torchmetrics()  # Lightning's torchmetrics import, without packages lit_llm never uses
    with lean_imports.rare_collections():  # the imports' objects live as long as the process: no need to re-scan them
        module = import_module(command.module)
    getattr(module, command.function)(args)


if __name__ == "__main__":
    main()
