"""`lit-llm prepare`'s configuration: sources, cleaning, mixing, tokenizer and tracking options, their checks, the
fingerprint that decides whether an output folder can be reused, and the command-line parser.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from lit_llm.data.cleaning import STEPS, CleaningConfig
from lit_llm.data.sources import source_fingerprint
from lit_llm.hints import exit_with_error
from lit_llm.world import TASKS_SOURCE

FORMAT_VERSION = 1  # bump when the output of an unchanged config changes


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class SourceConfig:
    """One input of the mix.

    Args:
        path: "tasks" (the built-in task world's pretraining corpus, with its injected duplicates and junk), a
            local file or folder (txt, jsonl, json, parquet), an http(s) URL of such a file, or a hub dataset name.
        name: Label in the stats (letters, digits, "_", "-", "."); default: derived from `path`.
        weight: Mixing weight; weights are normalised into each source's share of the training tokens.
        text_field: Field holding the text (json/jsonl/parquet/hub sources).
        hub_config: Config name of a hub dataset.
        split: Split of a hub dataset (slices such as "train[:10%]" work).
        split_docs: Cut each text into documents: "paragraph" at blank lines, "line" at line breaks.
        max_docs: Read at most this many documents (after `split_docs`); for "tasks": how many to generate
            (default 2000).
        max_epochs: How often the source's documents may be repeated to reach its share (1: no repetition).
        skip: Cleaning steps not applied to this source (e.g. [quality, language] for code).
        max_digits: Difficulty of the task world's arithmetic ("tasks" only).
    """

    path: str
    name: str | None = None
    weight: float = 1.0
    text_field: str = "text"
    hub_config: str | None = None
    split: str = "train"
    split_docs: Literal["none", "paragraph", "line"] = "none"
    max_docs: int | None = None
    max_epochs: float = 1.0
    skip: list[str] = field(default_factory=list)
    max_digits: int = 2


@dataclass
class MixConfig:
    """Train/val split and mixing.

    Args:
        val_fraction: Share of each source's cleaned documents held out for validation (validation is mixed to
            the same shares, without repetition).
        total_tokens: Training tokens wanted; None: the largest mix that no source's `max_epochs` limits further.
    """

    val_fraction: float = 0.05
    total_tokens: int | None = None


@dataclass
class TokenizerConfig:
    """Tokenizer to train or reuse.

    Args:
        kind: "bpe" trains a byte-level BPE tokenizer on the cleaned training mix, "byte" is the 256-byte
            tokenizer, anything else is a path to a tokenizer.json (or its folder) to reuse.
        vocab_size: Vocabulary size of a trained BPE tokenizer.
        min_frequency: Minimum pair count for a BPE merge.
        max_train_docs: Train BPE on at most this many documents of the mix (None: all of it).
    """

    kind: str = "bpe"
    vocab_size: int = 4096
    min_frequency: int = 2
    max_train_docs: int | None = None


@dataclass
class TrackingConfig:
    """MLflow logging of the prepare run.

    Args:
        enabled: Log the run to MLflow.
        experiment_name: MLflow experiment.
        run_name: Display name of the run.
        tracking_uri: Tracking server or store; default `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`.
    """

    enabled: bool = True
    experiment_name: str = "prepare"
    run_name: str | None = "prepare"
    tracking_uri: str | None = None


@dataclass
class PrepareConfig:
    """Data preparation: clean, deduplicate, filter, mix, train the tokenizer, write token shards.

    Args:
        sources: The inputs, each with its mixing weight.
        out_dir: Output folder (tokenizer.json, train.bin, val.bin, stats.json, config.yaml, meta.json).
        seed: Seed of the task world, the splits, the mixing and the shuffles.
        cleaning: Cleaning steps.
        mix: Split and mixing.
        tokenizer: Tokenizer.
        tracking: MLflow logging.
        num_proc: Processes for the per-document steps (`datasets.map`); 1 runs in this process.
        overwrite: Replace an existing out_dir that holds something else.
        progress: Show progress bars.
    """

    sources: list[SourceConfig]
    out_dir: str = "data/prepared"
    seed: int = 0
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    num_proc: int = 1
    overwrite: bool = False
    progress: bool = True


def source_name(src: SourceConfig) -> str:
    if src.name:
        return src.name
    base = TASKS_SOURCE if src.path == TASKS_SOURCE else Path(src.path.rstrip("/").split("?")[0]).stem
    return re.sub(r"[^\w.-]", "_", base.split("/")[-1]) or "source"


def check_config(cfg: PrepareConfig) -> list[str]:
    """Validate what the types cannot express; returns the source names."""
    if not cfg.sources:
        raise ValueError("at least one source is needed")
    names = [source_name(s) for s in cfg.sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}; set `name` on the sources")
    for src, name in zip(cfg.sources, names):
        if not re.fullmatch(r"[\w.-]+", name):
            raise ValueError(f"source name {name!r}: use letters, digits, '_', '-' and '.'")
        if src.weight <= 0 or src.max_epochs <= 0:
            raise ValueError(f"source {name!r}: weight and max_epochs must be positive")
        if unknown := set(src.skip) - set(STEPS):
            raise ValueError(f"source {name!r}: unknown steps in skip: {sorted(unknown)}; steps: {list(STEPS)}")
    if not 0 < cfg.mix.val_fraction < 1:
        raise ValueError(f"mix.val_fraction must be in (0, 1), got {cfg.mix.val_fraction}")
    return names


def fingerprint_of(cfg: PrepareConfig) -> str:
    """16-hex hash of everything that decides the output: the config (minus where/how it runs) and the inputs."""
    what = asdict(cfg)
    for key in ("out_dir", "overwrite", "tracking", "num_proc", "progress"):
        what.pop(key)
    h = hashlib.sha256(json.dumps({"config": what, "format": FORMAT_VERSION}, sort_keys=True).encode())
    for src in cfg.sources:
        if src.path != TASKS_SOURCE:
            h.update(source_fingerprint(src.path, {}).encode())  # content of local files, name of the rest
    for extra in (cfg.cleaning.blocklist.path, cfg.tokenizer.kind):
        if extra and Path(extra).exists():
            h.update(source_fingerprint(extra, {}).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------- CLI
class PrepareParser(ArgumentParser):
    """jsonargparse's parser without prefix abbreviations, whose errors are one line naming the closest valid key
    (`lit_llm.hints`), as the `lit-llm fit` parser's are."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:
            return super().error(message, ex)
        keys = [a.dest for a in self._actions if isinstance(getattr(a, "dest", None), str)]
        keys += [k.split(".", i)[-1] for k in keys for i in range(1, k.count(".") + 1)]  # also without groups
        exit_with_error(self.prog, message, lambda key: keys)


def build_parser() -> ArgumentParser:
    """The `lit-llm prepare` parser: `PrepareConfig`'s fields as options, loadable from a YAML `--config`."""
    parser = PrepareParser(prog="lit-llm prepare", description=PrepareConfig.__doc__.split("\n")[0],
                           parser_mode="yaml")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (e.g. configs/prepare/tiny.yaml)")
    parser.add_class_arguments(PrepareConfig, as_group=False)
    return parser


def parse_config(args: list[str] | dict) -> tuple[PrepareConfig, str]:
    """A `PrepareConfig` from command-line arguments (or a config dict), and the resolved config as YAML."""
    parser = build_parser()
    ns = parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)
    text = parser.dump(ns, skip_none=False)
    init = parser.instantiate(ns)
    return PrepareConfig(**{f.name: init[f.name] for f in fields(PrepareConfig)}), text
