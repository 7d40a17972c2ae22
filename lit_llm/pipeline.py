"""`lit-llm pipeline`: the stages of a recipe in order, each a normal `lit-llm` run, wired by paths.

    lit-llm pipeline --config configs/pipeline/tiny.yaml [--dry_run]

A recipe (`configs/pipeline/<recipe>.yaml`) lists stages. Each stage is one `lit-llm` command with its own config
file and overrides — `prepare`, `fit` (any stage module) or `rejection-sample` — or a `rounds` entry that expands
into R Llama-3-style rounds (rejection-sample → SFT → DPO, each round starting from the last round's DPO model).
A stage names earlier stages instead of paths (`init_from: sft`, `data: "{pairs}/pairs.jsonl"`); the pipeline turns
the names into the earlier stage's output (`<dir>/checkpoints/last.ckpt` of a fit stage, the folder of a prepare or
rejection-sample stage), so every stage's command can be printed and re-run by hand (`--dry_run` prints them).

Resume: when a stage ends, the pipeline writes its marker `<root>/.pipeline/<stage>.json` (the stage's key and
run id). The key hashes the stage's command, its config files' bytes and the run ids of the stages it reads. A
stage whose marker has the same key and whose outputs exist is skipped; otherwise it runs, and so does every stage
that reads it. A checkpoint alone proves nothing: Lightning writes last.ckpt during training too. A training stage
stopped half-way (SIGTERM or Ctrl-C, which write last.ckpt first; a crash) left `<stage>.started.json` with its key:
run with the same key, it resumes from its last.ckpt (`--ckpt_path`), exactly where it stopped. SIGTERM during
any other stage stops it as Ctrl-C does; the pipeline exits 143 (130 for Ctrl-C) with its MLflow run KILLED.

MLflow: all stages log to the recipe's experiment. The pipeline is a run of its own (tag lit_llm.stage=pipeline,
kept across resumes in `<root>/.pipeline/pipeline.json`; changed stage commands start a new one); each stage run is
nested under it (MLflow's `mlflow.parentRunId`), beside the weights' lineage (`lit_llm.parent_run_id`) that stages
record themselves and the data's (`lit_llm.data_run_id`). The pipeline run holds the recipe (`recipe.yaml`), the
stage table (`stages.json`: name, kind, command, run id, seconds, load, ran or reused) and the hardware;
`lit-llm report` reads them.

Deliberate simplifications: stages run one after another in this process (no parallel branches); an interrupted
data stage (prepare, rejection-sample) restarts from its beginning; files outside the pipeline (e.g. an
`init_from` path that is not a stage) are not part of a stage's key.
"""

import argparse
import difflib
import hashlib
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("prepare", "fit", "rejection-sample", "rounds")
COMMON_KEYS = {"name", "kind", "dir", "tags"}
KEYS = {
    "prepare": COMMON_KEYS | {"config", "overrides"},
    "fit": COMMON_KEYS | {"config", "overrides", "init_from", "ref_from", "reward_from", "data"},
    "rejection-sample": COMMON_KEYS | {"policy", "reward", "args"},
    "rounds": COMMON_KEYS | {"rounds", "policy", "reward", "rejection", "sft", "dpo"},
}
RECIPE_KEYS = {"name", "description", "experiment_name", "root", "overrides", "stages", "report_dir", "expected"}
# fit-stage keys that name a checkpoint or data, and the stage-module option each sets
WIRING = {"init_from": "--model.init_args.init_from", "ref_from": "--model.init_args.ref_from",
          "reward_from": "--model.init_args.reward_from", "data": "--data.init_args.source"}
REFERENCE = re.compile(r"\{([A-Za-z0-9_.-]+)\}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
STATE_DIR = ".pipeline"


class PipelineError(Exception):
    """A recipe that cannot run, or a stage that failed; the message names the file, stage and key."""


STOP_CODES = (130, 143)  # a stage stopped on Ctrl-C or SIGTERM after writing its last.ckpt (StopRequested)


class PipelineStopped(PipelineError):
    """A stage stopped on SIGTERM or Ctrl-C; running the pipeline again resumes it."""

    def __init__(self, code: int, stage: str) -> None:
        super().__init__(f"stopped during stage '{stage}'; run the same command again to go on (a training stage "
                         f"resumes from its last.ckpt)")
        self.code = code


# ------------------------------------------------------------------------------------------------- the recipe
@dataclass
class Stage:
    """One `lit-llm` run of the pipeline.

    Args:
        name: Unique name: the stage's MLflow run name and how later stages refer to it.
        kind: "prepare", "fit" or "rejection-sample" (the `lit-llm` command).
        argv: The `lit-llm` command line, without the pipeline's MLflow nesting tags.
        dir: Output folder (fit: `trainer.default_root_dir`; prepare: `out_dir`; rejection-sample: `--out`).
        inputs: Earlier stages whose outputs it reads.
        configs: Its config files (their bytes are part of the stage's key).
        tags: Extra MLflow tags of its run.
    """

    name: str
    kind: str
    argv: list[str]
    dir: Path
    inputs: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        """What later stages get for `{name}`: the checkpoint of a fit stage, the folder of a data stage."""
        return self.dir / "checkpoints" / "last.ckpt" if self.kind == "fit" else self.dir

    @property
    def outputs(self) -> list[Path]:
        """Files that exist once the stage has finished."""
        if self.kind == "fit":
            return [self.output]
        if self.kind == "prepare":
            return [self.dir / name for name in ("meta.json", "train.bin", "val.bin", "tokenizer.json")]
        return [self.dir / name for name in ("stats.json", "sft.jsonl", "pairs.jsonl")]

    @property
    def command(self) -> str:
        return shlex.join(["lit-llm", *self.argv])


@dataclass
class Recipe:
    """A parsed pipeline recipe: where it writes, what it logs to, and its stages in order."""

    name: str
    source: str
    text: str
    experiment_name: str
    root: Path
    stages: list[Stage]
    report_dir: Path
    expected: str | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR


def _check_keys(entry: dict, allowed: set[str], where: str) -> None:
    for key in entry:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
            raise PipelineError(f"{where}: unknown key '{key}'{hint}")


def _as_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise PipelineError(f"{where}: expected a string or a list of strings, got {value!r:.80}")


def expand_rounds(entry: dict, where: str) -> list[dict]:
    """A `rounds` entry as plain stages: per round r, `<name>-r<r>-samples` (rejection-sample from the policy,
    prompt seed = `rejection.seed` + r, so each round sees new prompts), `<name>-r<r>-sft` (SFT on the kept
    samples, from the policy) and `<name>-r<r>-dpo` (DPO on the round's pairs, from and against that SFT model);
    round r+1 starts from round r's DPO model. Folders: `<dir>/round<r>/{samples,sft,dpo}`."""
    _check_keys(entry, KEYS["rounds"], where)
    for key in ("policy", "reward", "sft", "dpo"):
        if key not in entry:
            raise PipelineError(f"{where}: a rounds stage needs '{key}'")
    name, base = entry["name"], entry.get("dir", "{root}/" + entry["name"])
    policy, stages = entry["policy"], []
    for r in range(1, int(entry.get("rounds", 1)) + 1):
        rejection = dict(entry.get("rejection") or {})
        rejection["seed"] = int(rejection.get("seed", 0)) + r
        samples, sft, dpo = (f"{name}-r{r}-{part}" for part in ("samples", "sft", "dpo"))
        tags = {"lit_llm.round": str(r), **(entry.get("tags") or {})}
        stages.append({"name": samples, "kind": "rejection-sample", "dir": f"{base}/round{r}/samples",
                       "policy": policy, "reward": entry["reward"], "args": rejection, "tags": tags})
        for stage, init, data, part in ((sft, policy, "sft.jsonl", "sft"), (dpo, sft, "pairs.jsonl", "dpo")):
            spec = entry[part]
            if not isinstance(spec, dict) or "config" not in spec:
                raise PipelineError(f"{where}: '{part}' must be a mapping with 'config' (and optional 'overrides')")
            _check_keys(spec, {"config", "overrides"}, f"{where}, {part}")
            stages.append({"name": stage, "kind": "fit", "dir": f"{base}/round{r}/{part}", "config": spec["config"],
                           "overrides": spec.get("overrides", []), "init_from": init,
                           "data": "{" + samples + "}/" + data, "tags": tags})
        policy = dpo
    return stages


class Resolver:
    """Turns `{root}` and `{<stage>}` in recipe values into paths, remembering which stages a value reads."""

    def __init__(self, root: Path) -> None:
        self.values: dict[str, str] = {"root": str(root)}
        self.stages: dict[str, Stage] = {}

    def add(self, stage: Stage) -> None:
        self.stages[stage.name] = stage
        self.values[stage.name] = str(stage.output)

    def text(self, value: Any, where: str, inputs: list[str]) -> str:
        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in self.values:
                known = ", ".join(self.values)
                raise PipelineError(f"{where}: '{{{name}}}' is not 'root' or an earlier stage (known: {known})")
            if name in self.stages and name not in inputs:
                inputs.append(name)
            return self.values[name]

        return REFERENCE.sub(substitute, str(value))

    def checkpoint(self, value: Any, where: str, inputs: list[str]) -> str:
        """A stage name (→ its checkpoint; it must be a fit stage), "gold", or a path with references."""
        if isinstance(value, str) and value in self.stages:
            if self.stages[value].kind != "fit":
                raise PipelineError(f"{where}: '{value}' is a {self.stages[value].kind} stage, not a checkpoint; "
                                    f"use '{{{value}}}/<file>' for its files")
            inputs.append(value)
            return self.values[value]
        return self.text(value, where, inputs)


def _configs(entry: dict, where: str) -> list[str]:
    configs = _as_list(entry.get("config"), f"{where}, config")
    if not configs:
        raise PipelineError(f"{where}: a {entry.get('kind', 'fit')} stage needs 'config'")
    return configs


def _fit_argv(entry: dict, name: str, folder: str, experiment: str, global_overrides: list[str],
              resolver: Resolver, where: str, inputs: list[str]) -> list[str]:
    argv = ["fit"]
    for config in _configs(entry, where):
        argv += ["--config", config]
    argv += [f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.experiment_name={experiment}",
             f"--trainer.logger.init_args.run_name={name}"]
    for key, option in WIRING.items():
        if key in entry:
            resolve = resolver.text if key == "data" else resolver.checkpoint
            argv.append(f"{option}={resolve(entry[key], f'{where}, {key}', inputs)}")
    for override in global_overrides + _as_list(entry.get("overrides"), f"{where}, overrides"):
        argv.append(resolver.text(override, f"{where}, overrides", inputs))
    return argv


def _prepare_argv(entry: dict, name: str, folder: str, experiment: str, resolver: Resolver, where: str,
                  inputs: list[str]) -> list[str]:
    argv = ["prepare"]
    for config in _configs(entry, where):
        argv += ["--config", config]
    # overwrite: the pipeline owns this folder and runs the stage only when its marker is missing or stale
    argv += [f"--out_dir={folder}", "--overwrite=true", "--progress=false",
             f"--tracking.experiment_name={experiment}", f"--tracking.run_name={name}"]
    return argv + [resolver.text(o, f"{where}, overrides", inputs)
                   for o in _as_list(entry.get("overrides"), f"{where}, overrides")]


def _rejection_argv(entry: dict, name: str, folder: str, experiment: str, resolver: Resolver, where: str,
                    inputs: list[str]) -> list[str]:
    for key in ("policy", "reward"):
        if key not in entry:
            raise PipelineError(f"{where}: a rejection-sample stage needs '{key}'")
    reward = entry["reward"]
    reward = "gold" if reward == "gold" else resolver.checkpoint(reward, f"{where}, reward", inputs)
    argv = ["rejection-sample", f"--policy={resolver.checkpoint(entry['policy'], f'{where}, policy', inputs)}",
            f"--reward={reward}", f"--out={folder}", f"--experiment_name={experiment}", f"--run_name={name}"]
    args = entry.get("args") or {}
    if not isinstance(args, dict):
        raise PipelineError(f"{where}, args: expected a mapping of `lit-llm rejection-sample` options")
    for key, value in args.items():
        if key in ("policy", "reward", "out", "experiment_name", "run_name"):
            raise PipelineError(f"{where}, args: '{key}' is set by the pipeline; use the stage's own keys")
        if value is not None:
            argv.append(f"--{key}={resolver.text(value, f'{where}, args.{key}', inputs)}")
    return argv


def build_stage(entry: dict, experiment: str, global_overrides: list[str], resolver: Resolver,
                where: str) -> Stage:
    """One recipe entry (not `rounds`) as a `Stage` with its resolved command line."""
    kind = entry.get("kind", "fit")
    _check_keys(entry, KEYS[kind], where)
    name, inputs = entry["name"], []
    folder = resolver.text(entry.get("dir", "{root}/" + name), f"{where}, dir", inputs)
    if kind == "fit":
        argv = _fit_argv(entry, name, folder, experiment, global_overrides, resolver, where, inputs)
    elif kind == "prepare":
        argv = _prepare_argv(entry, name, folder, experiment, resolver, where, inputs)
    else:
        argv = _rejection_argv(entry, name, folder, experiment, resolver, where, inputs)
    tags = {str(k): str(v) for k, v in (entry.get("tags") or {}).items()}
    configs = _as_list(entry.get("config"), where) if kind in ("fit", "prepare") else []
    return Stage(name, kind, argv, Path(folder), inputs, configs, tags)


def _entries(raw: dict, source: str) -> list[tuple[dict, str]]:
    """The recipe's stage entries with `rounds` expanded, each with a description of where it came from."""
    if not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise PipelineError(f"{source}: 'stages' must be a non-empty list")
    out = []
    for i, entry in enumerate(raw["stages"]):
        where = f"{source}: stages[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not NAME.fullmatch(entry["name"]):
            raise PipelineError(f"{where}: every stage needs a 'name' (letters, digits, '_', '.', '-')")
        where = f"{source}: stage '{entry['name']}'"
        kind = entry.get("kind", "fit")
        if kind not in KINDS:
            raise PipelineError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "rounds":
            out += [(sub, f"{where} (round stage '{sub['name']}')") for sub in expand_rounds(entry, where)]
        else:
            out.append((entry, where))
    return out


def recipe_from_dict(raw: dict, source: str, text: str | None = None, root: str | None = None,
                     experiment_name: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Parse a recipe mapping; `root`, `experiment_name` and `overrides` (added to every fit stage) override it."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: a recipe is a mapping with 'stages'")
    _check_keys(raw, RECIPE_KEYS, source)
    name = str(raw.get("name") or Path(source).stem)
    experiment = experiment_name or raw.get("experiment_name") or f"pipeline-{name}"
    root_path = Path(root or raw.get("root") or f"runs/pipeline-{name}")
    resolver = Resolver(root_path)
    global_overrides = _as_list(raw.get("overrides"), f"{source}: overrides") + list(overrides or [])
    stages = []
    for entry, where in _entries(raw, source):
        if entry["name"] in resolver.values:
            raise PipelineError(f"{where}: the name '{entry['name']}' is used twice (or is 'root')")
        stage = build_stage(entry, experiment, global_overrides, resolver, where)
        resolver.add(stage)
        stages.append(stage)
    report_dir = Path(resolver.text(raw.get("report_dir", "{root}/report"), f"{source}: report_dir", []))
    return Recipe(name, source, text if text is not None else yaml.safe_dump(raw, sort_keys=False), experiment,
                  root_path, stages, report_dir, raw.get("expected"))


def load_recipe(path: str | Path, **kwargs: Any) -> Recipe:
    """Read and parse a recipe file (see `recipe_from_dict` for the keyword overrides)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"recipe not found: {path}")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: not valid YAML: {err}") from err
    return recipe_from_dict(raw, str(path), text, **kwargs)


# ----------------------------------------------------------------------------------------------- skip / resume
def marker_path(recipe: Recipe, stage: Stage) -> Path:
    return recipe.state_dir / f"{stage.name}.json"


def started_path(recipe: Recipe, stage: Stage) -> Path:
    """Written when a stage starts, removed when it ends: a stage stopped half-way keeps it."""
    return recipe.state_dir / f"{stage.name}.started.json"


def resumable_checkpoint(recipe: Recipe, stage: Stage, runs: dict[str, str | None]) -> Path | None:
    """The last.ckpt of a fit stage stopped half-way (SIGTERM, a crash) by the same command with the same inputs:
    the stage resumes from it (exactly: `tests/test_resume.py`) instead of starting again."""
    started = started_path(recipe, stage)
    if stage.kind != "fit" or not started.is_file() or not stage.output.is_file():
        return None
    try:
        key = json.loads(started.read_text()).get("key")
    except json.JSONDecodeError:
        return None
    return stage.output if key == stage_key(stage, runs) else None


def read_marker(recipe: Recipe, stage: Stage) -> dict | None:
    path = marker_path(recipe, stage)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None  # a marker cut short by a crash counts as absent


def stage_key(stage: Stage, input_runs: dict[str, str | None]) -> str:
    """What decides a stage's result: its command, its config files' bytes, and the runs it reads."""
    configs = {config: hashlib.sha256(Path(config).read_bytes()).hexdigest() for config in stage.configs}
    payload = {"argv": stage.argv, "configs": configs, "inputs": {n: input_runs.get(n) for n in stage.inputs}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def done_marker(recipe: Recipe, stage: Stage, runs: dict[str, str | None]) -> dict | None:
    """The stage's marker when the stage is done: same key (given the runs of its inputs) and outputs present."""
    marker = read_marker(recipe, stage)
    if marker is None or marker.get("key") != stage_key(stage, runs):
        return None
    return marker if all(p.exists() for p in stage.outputs) else None


def check_configs(recipe: Recipe) -> None:
    """Every stage's config file exists: a typo should fail before the first stage, not an hour in."""
    for stage in recipe.stages:
        for config in stage.configs:
            if not Path(config).is_file():
                raise PipelineError(f"{recipe.source}: stage '{stage.name}': config file not found: {config}")


def plan(recipe: Recipe) -> list[tuple[Stage, bool, str]]:
    """(stage, runs?, why) for every stage: a stage runs when it is not done or when one of its inputs runs."""
    check_configs(recipe)
    runs: dict[str, str | None] = {}
    rerun: set[str] = set()
    out = []
    for stage in recipe.stages:
        upstream = [n for n in stage.inputs if n in rerun]
        marker = None if upstream else done_marker(recipe, stage, runs)
        if marker is not None:
            runs[stage.name] = marker.get("run_id")
            out.append((stage, False, f"done (run {str(marker.get('run_id'))[:8]})"))
            continue
        if upstream:
            why = f"input {', '.join(upstream)} runs"
        elif resumable_checkpoint(recipe, stage, runs) is not None:
            why = f"resumes from {stage.output}, where it was stopped"
        elif read_marker(recipe, stage) is None:
            why = "not run yet"
        elif missing := [str(p) for p in stage.outputs if not p.exists()]:
            why = f"output missing: {missing[0]}"
        else:
            why = "command, config or inputs changed"
        rerun.add(stage.name)
        out.append((stage, True, why))
    return out


def print_plan(recipe: Recipe, steps: list[tuple[Stage, bool, str]]) -> None:
    count = f"{len(steps)} stage{'s' if len(steps) != 1 else ''}"
    print(f"pipeline {recipe.name} ({recipe.source}): {count}, root {recipe.root}, "
          f"MLflow experiment {recipe.experiment_name}")
    for i, (stage, runs, why) in enumerate(steps, 1):
        print(f"  {i:>2}. {stage.name:<20} {'run ' if runs else 'skip'}  ({why})")
        print(f"      {stage.command}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------- running
def stage_run_id(stage: Stage) -> str | None:
    """The MLflow run of a finished stage, read from what it wrote."""
    if stage.kind == "fit":
        from lit_llm.checkpoint import read_checkpoint

        return read_checkpoint(stage.output)["lit_llm"].get("mlflow_run_id")
    name = "meta.json" if stage.kind == "prepare" else "stats.json"
    key = "mlflow_run_id" if stage.kind == "prepare" else "run_id"
    return json.loads((stage.dir / name).read_text()).get(key)


def stage_tags(recipe: Recipe, stage: Stage, pipeline_run_id: str | None, runs: dict[str, str | None]) -> dict:
    """The tags that place a stage run in its pipeline: nesting, stage name, and the data runs it read."""
    from lit_llm.tracking import PARENT_RUN_TAG

    tags = {"lit_llm.pipeline": recipe.name, "lit_llm.pipeline_stage": stage.name, **stage.tags}
    if pipeline_run_id:
        tags[PARENT_RUN_TAG] = pipeline_run_id
    kinds = {s.name: s.kind for s in recipe.stages}
    data = [runs[n] for n in stage.inputs if runs.get(n) and kinds[n] != "fit"]
    if data:
        tags["lit_llm.data_run_id"] = ",".join(data)
    return tags


def execute(stage: Stage, tags: dict[str, str], resume_from: Path | None = None) -> None:
    """Run one stage's command in this process (from `resume_from` when given); a failure names the stage and its
    command, a stop on a signal is `PipelineStopped`."""
    from lit_llm.cli import main as cli_main

    argv = list(stage.argv) + ([f"--ckpt_path={resume_from}"] if resume_from else [])
    if stage.kind == "fit":  # tags at creation, so a running or failed stage already shows under the pipeline
        argv.append(f"--trainer.logger.init_args.tags={json.dumps(tags)}")
    print(f"\n=== stage {stage.name}: {shlex.join(['lit-llm', *argv[:len(stage.argv) + bool(resume_from)]])}",
          flush=True)
    try:
        cli_main(argv)
    except SystemExit as exc:
        if exc.code in STOP_CODES:
            raise PipelineStopped(exc.code, stage.name) from exc
        if exc.code not in (0, None):
            raise PipelineError(f"stage '{stage.name}' failed ({exc.code}); its command: {stage.command}") from exc
    missing = [str(p) for p in stage.outputs if not p.exists()]
    if missing:
        raise PipelineError(f"stage '{stage.name}' ended without writing {', '.join(missing)}")


def run_stage(recipe: Recipe, stage: Stage, tracker: "PipelineRun | None", runs: dict[str, str | None]) -> dict:
    """Run a stage, tag its MLflow run, write its marker; returns its row of the stage table."""
    tags = stage_tags(recipe, stage, tracker.run_id if tracker else None, runs)
    key = stage_key(stage, runs)
    marker = marker_path(recipe, stage)
    marker.unlink(missing_ok=True)  # a stage being re-run is not done until it ends
    resume_from = resumable_checkpoint(recipe, stage, runs)
    write_json_atomic(started_path(recipe, stage), {"key": key, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # was the machine shared? (wall times)
    start = time.perf_counter()
    execute(stage, tags, resume_from)
    seconds = time.perf_counter() - start
    run_id = stage_run_id(stage)
    if tracker and run_id and stage.kind != "fit":  # prepare and rejection-sample take no tags: add them now
        tracker.tag_run(run_id, tags)
    row = {"name": stage.name, "kind": stage.kind, "run_id": run_id, "seconds": round(seconds, 1),
           "load_avg_1m": load, "command": stage.command, "dir": str(stage.dir), "inputs": stage.inputs, "key": key,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if resume_from:
        row["resumed_from"] = str(resume_from)
    write_json_atomic(marker, row)
    started_path(recipe, stage).unlink(missing_ok=True)
    return {**row, "status": "ran"}


def write_json_atomic(path: Path, obj: dict) -> None:
    """A marker is whole or absent, whatever kills the pipeline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


class PipelineRun:
    """The pipeline's own MLflow run: created once per root and plan, reopened when the pipeline resumes.

    Holds the recipe, the stage table and the hardware; its stage runs are nested under it.
    """

    def __init__(self, recipe: Recipe) -> None:
        from mlflow import MlflowClient

        from lit_llm.tracking import get_or_create_experiment, resolve_tracking_uri

        self.recipe, self.uri = recipe, resolve_tracking_uri()
        self.client = MlflowClient(self.uri)
        self.experiment_id = get_or_create_experiment(self.client, recipe.experiment_name)
        self.state = recipe.state_dir / "pipeline.json"
        self.run_id = self._reopen() or self._create()
        self.rows: list[dict] = []

    @property
    def plan_sha(self) -> str:
        """The stages' commands: a changed recipe or override is a new pipeline run (its params would differ)."""
        return hashlib.sha256(json.dumps([s.argv for s in self.recipe.stages]).encode()).hexdigest()[:16]

    def _reopen(self) -> str | None:
        """The run recorded for this root, when it is in this store and experiment and has the same stages."""
        if not self.state.is_file():
            return None
        state = json.loads(self.state.read_text())
        same = (state.get("tracking_uri"), state.get("experiment_id"), state.get("plan_sha"))
        if same != (self.uri, self.experiment_id, self.plan_sha):
            return None
        try:
            run = self.client.get_run(state["run_id"])
        except Exception:  # deleted or never in this store
            return None
        if run.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id

    def _create(self) -> str:
        from mlflow.entities import Param

        from lit_llm.tracking import flatten, git_sha, package_versions

        tags = {"lit_llm.stage": "pipeline", "lit_llm.pipeline": self.recipe.name, "lit_llm.git_sha": git_sha(),
                "lit_llm.recipe": self.recipe.source, "lit_llm.root": str(self.recipe.root),
                **{f"lit_llm.version.{k}": v for k, v in package_versions().items()}}
        run_id = self.client.create_run(self.experiment_id, run_name=f"pipeline-{self.recipe.name}",
                                        tags=tags).info.run_id
        raw = yaml.safe_load(self.recipe.text) or {}
        params = [Param(k, str(v)[:6000]) for k, v in flatten(raw).items() if v is not None]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.state.write_text(json.dumps({"run_id": run_id, "experiment_id": self.experiment_id,
                                          "tracking_uri": self.uri, "plan_sha": self.plan_sha}, indent=2))
        return run_id

    def start(self) -> None:
        """Record this invocation's recipe and machine (a resumed pipeline may run on another machine or load)."""
        from lit_llm.tracking import hardware

        self.client.log_text(self.run_id, self.recipe.text, "recipe.yaml")
        self.tag_run(self.run_id, {f"lit_llm.hardware.{k}": v for k, v in hardware().items()})

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def record(self, row: dict) -> None:
        """Add a stage's row; the table and the commands are rewritten, so a stopped pipeline keeps its record."""
        self.rows.append(row)
        self.client.log_text(self.run_id, json.dumps(self.rows, indent=2), "stages.json")
        commands = "\n".join(f"# {r['name']} ({r['status']})\n{r['command']}" for r in self.rows)
        self.client.log_text(self.run_id, commands + "\n", "commands.sh")
        if row["status"] == "ran":
            self.client.log_metric(self.run_id, f"seconds/{row['name']}", row["seconds"])

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def run_pipeline(recipe: Recipe, dry_run: bool = False, report: bool = True) -> list[dict]:
    """Run (or with `dry_run`, only print) the plan; returns the stage table."""
    steps = plan(recipe)
    print_plan(recipe, steps)
    if dry_run:
        return []
    tracker = PipelineRun(recipe)
    tracker.start()
    runs: dict[str, str | None] = {}
    start = time.perf_counter()
    try:
        for stage, _, _ in steps:
            marker = done_marker(recipe, stage, runs)  # again now: an input may just have re-run
            if marker is None:
                row = run_stage(recipe, stage, tracker, runs)
            else:
                row = {**marker, "status": "reused"}
                print(f"\n=== stage {stage.name}: done, reusing run {str(marker.get('run_id'))[:8]}", flush=True)
            runs[stage.name] = row["run_id"]
            tracker.record(row)
    except (KeyboardInterrupt, PipelineStopped):
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.client.log_metric(tracker.run_id, "seconds/invocation", round(time.perf_counter() - start, 1))
    tracker.end("FINISHED")
    print(f"\npipeline {recipe.name} finished: MLflow run {tracker.run_id} (experiment {recipe.experiment_name})")
    if report:
        finish_report(recipe, tracker.run_id)
    return tracker.rows


def finish_report(recipe: Recipe, pipeline_run_id: str) -> None:
    """Write the pipeline's report and, when the recipe names reported values, compare with them."""
    from lit_llm import report

    path = report.write_report(recipe.experiment_name, recipe.report_dir, pipeline_run=pipeline_run_id)
    print(f"report: {path}")
    if recipe.expected and Path(recipe.expected).is_file():
        ok, text = report.check(recipe.expected, experiment=recipe.experiment_name, pipeline_run=pipeline_run_id)
        print(text)
        verdict = "reproduce" if ok else "do NOT all reproduce"
        print(f"the reported values in {recipe.expected} {verdict} (lit-llm report --check {recipe.expected})")


# -------------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> None:
    """Run a pipeline recipe: its stages in order, skipping those already done, under one MLflow pipeline run."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm pipeline", description=main.__doc__)
    parser.add_argument("--config", required=True, help="recipe, e.g. configs/pipeline/tiny.yaml")
    parser.add_argument("--dry_run", action="store_true", help="print the plan and each stage's command; run nothing")
    parser.add_argument("--root", default=None, help="output folder of the stages (default: the recipe's root)")
    parser.add_argument("--experiment_name", default=None, help="MLflow experiment (default: the recipe's)")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra argument for every fit stage, e.g. --override=--trainer.max_steps=10 "
                             "(repeatable; part of each stage's key, so changed values re-run the stages)")
    parser.add_argument("--no_report", action="store_true", help="do not write the report at the end")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.config, root=args.root, experiment_name=args.experiment_name,
                             overrides=args.override)
        with sigterm_stops():
            run_pipeline(recipe, dry_run=args.dry_run, report=not args.no_report)
    except PipelineStopped as err:
        print(f"lit-llm pipeline: {err}", file=sys.stderr)
        sys.exit(err.code)
    except PipelineError as err:
        sys.exit(f"lit-llm pipeline: {err}")


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM outside a training loop (which saves first, `StageCheckpoint`) stops the stage under way as Ctrl-C
    would, so the pipeline's MLflow run ends KILLED instead of being cut off."""
    def stop(signum: int, frame: Any) -> None:
        from lit_llm.callbacks import StopRequested

        raise StopRequested(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
