"""A pipeline's state on disk: per stage, a marker when it is done (`<root>/.pipeline/<stage>.json`) and one while
it runs (`<stage>.started.json`), each with the stage's key; what each kind of stage leaves behind and which MLflow
run made it (from the command that runs it); and the plan that follows from them."""

import hashlib
import json
import sys
from pathlib import Path

from lit_llm import cli, rejection
from lit_llm.data import prepare
from lit_llm.pipeline.recipe import PipelineError, Recipe, Stage

# per kind of stage: the files a finished run leaves in its folder, and the MLflow run that made them
OUTPUTS = {"fit": cli.fit_outputs, "prepare": prepare.outputs, "rejection-sample": rejection.outputs}
RUN_IDS = {"fit": cli.fit_run_id, "prepare": prepare.run_id, "rejection-sample": rejection.run_id}


def outputs(stage: Stage) -> list[Path]:
    """Files that exist once the stage has finished."""
    return OUTPUTS[stage.kind](stage.dir)


def stage_run_id(stage: Stage) -> str | None:
    """The MLflow run of a finished stage, read from what it wrote."""
    return RUN_IDS[stage.kind](stage.dir)


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
    return marker if all(p.exists() for p in outputs(stage)) else None


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
        elif missing := [str(p) for p in outputs(stage) if not p.exists()]:
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


def write_json_atomic(path: Path, obj: dict) -> None:
    """A marker is whole or absent, whatever kills the pipeline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
