"""Running a pipeline: each stage's command in this process, under the pipeline's own MLflow run, with the stage
table recorded as it goes; a report and a check against the recipe's reported values at the end."""

import hashlib
import json
import os
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lit_llm import commands, report
from lit_llm.checkpointing import StopRequested
from lit_llm.pipeline.recipe import PipelineError, Recipe, Stage
from lit_llm.pipeline.state import (done_marker, marker_path, outputs, plan, print_plan, resumable_checkpoint,
                                    stage_key, stage_run_id, started_path, write_json_atomic)
from lit_llm.tracking import (Tag, existing_run, flatten, hardware, log_batched, open_run, resolve_tracking_uri,
                              run_tags)

STOP_CODES = (130, 143)  # a stage stopped on Ctrl-C or SIGTERM after writing its last.ckpt (StopRequested)


class PipelineStopped(SystemExit):
    """A stage stopped on SIGTERM or Ctrl-C; running the pipeline again resumes it. A SystemExit with the stage's
    exit status (143, 130), so that the pipeline's run ends KILLED and `lit-llm pipeline` exits the same way."""

    def __init__(self, code: int, stage: str) -> None:
        super().__init__(code)
        self.message = (f"stopped during stage '{stage}'; run the same command again to go on (a training stage "
                        f"resumes from its last.ckpt)")


def stage_tags(recipe: Recipe, stage: Stage, pipeline_run_id: str | None, runs: dict[str, str | None]) -> dict:
    """The tags that place a stage run in its pipeline: nesting, stage name, and the data runs it read."""
    tags = {Tag.PIPELINE: recipe.name, Tag.PIPELINE_STAGE: stage.name, **stage.tags}
    if pipeline_run_id:
        tags[Tag.MLFLOW_PARENT] = pipeline_run_id
    kinds = {s.name: s.kind for s in recipe.stages}
    data = [runs[n] for n in stage.inputs if runs.get(n) and kinds[n] != "fit"]
    if data:
        tags[Tag.DATA_RUN] = ",".join(data)
    return tags


def execute(stage: Stage, tags: dict[str, str], resume_from: Path | None = None) -> None:
    """Run one stage's command in this process (from `resume_from` when given); a failure names the stage and its
    command, a stop on a signal is `PipelineStopped`."""
    argv = list(stage.argv) + ([f"--ckpt_path={resume_from}"] if resume_from else [])
    if stage.kind == "fit":  # tags at creation, so a running or failed stage already shows under the pipeline
        argv.append(f"--trainer.logger.init_args.tags={json.dumps(tags)}")
    print(f"\n=== stage {stage.name}: {shlex.join(['lit-llm', *argv[:len(stage.argv) + bool(resume_from)]])}",
          flush=True)
    try:
        commands.main(argv)
    except SystemExit as exc:
        if exc.code in STOP_CODES:
            raise PipelineStopped(exc.code, stage.name) from exc
        if exc.code not in (0, None):
            raise PipelineError(f"stage '{stage.name}' failed ({exc.code}); its command: {stage.command}") from exc
    missing = [str(p) for p in outputs(stage) if not p.exists()]
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


class PipelineRun:
    """The pipeline's own MLflow run (a `tracking.open_run`): created once per root and plan, reopened when the
    pipeline resumes (its id in `<root>/.pipeline/pipeline.json`). Holds the recipe, the stage table and the
    hardware; its stage runs are nested under it.
    """

    def __init__(self, recipe: Recipe, client: Any, run_id: str) -> None:
        self.recipe, self.client, self.run_id = recipe, client, run_id
        self.rows: list[dict] = []

    @staticmethod
    def plan_sha(recipe: Recipe) -> str:
        """The stages' commands: a changed recipe or override is a new pipeline run (its params would differ)."""
        return hashlib.sha256(json.dumps([s.argv for s in recipe.stages]).encode()).hexdigest()[:16]

    @staticmethod
    def recorded(recipe: Recipe) -> str | None:
        """The run recorded for this root, when it is still in this store, active, in the recipe's experiment and
        of the same stages (None: a new run)."""
        state = recipe.state_dir / "pipeline.json"
        if not state.is_file():
            return None
        recorded = json.loads(state.read_text())
        if (recorded.get("tracking_uri"), recorded.get("plan_sha")) != (resolve_tracking_uri(),
                                                                        PipelineRun.plan_sha(recipe)):
            return None
        found = existing_run(recorded["run_id"])
        return recorded["run_id"] if found and found[1] == recipe.experiment_name else None

    @classmethod
    @contextmanager
    def opened(cls, recipe: Recipe) -> Iterator["PipelineRun"]:
        """The pipeline's run, open while the stages run; it ends FINISHED, FAILED or KILLED with them."""
        recorded = cls.recorded(recipe)
        tags = run_tags("pipeline", **{Tag.PIPELINE: recipe.name, Tag.RECIPE: recipe.source,
                                       Tag.ROOT: str(recipe.root)})
        with open_run(recipe.experiment_name, tags, f"pipeline-{recipe.name}", run_id=recorded) as (client, run_id):
            tracker = cls(recipe, client, run_id)
            tracker.start(new=recorded is None)
            yield tracker

    def start(self, new: bool) -> None:
        """Record the recipe (params, once), this invocation's recipe file and machine (a resumed pipeline may run
        on another machine or load), and the run's id for the next invocation."""
        if new:
            log_batched(self.client, self.run_id, flatten(yaml.safe_load(self.recipe.text) or {}))
            write_json_atomic(self.recipe.state_dir / "pipeline.json", {
                "run_id": self.run_id, "tracking_uri": resolve_tracking_uri(),
                "plan_sha": self.plan_sha(self.recipe)})
        self.client.update_run(self.run_id, status="RUNNING")
        self.client.log_text(self.run_id, self.recipe.text, "recipe.yaml")
        self.tag_run(self.run_id, {f"{Tag.HARDWARE}{k}": v for k, v in hardware().items()})

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def record(self, row: dict) -> None:
        """Add a stage's row; the table and the commands are rewritten, so a stopped pipeline keeps its record."""
        self.rows.append(row)
        self.client.log_text(self.run_id, json.dumps(self.rows, indent=2), "stages.json")
        commands_text = "\n".join(f"# {r['name']} ({r['status']})\n{r['command']}" for r in self.rows)
        self.client.log_text(self.run_id, commands_text + "\n", "commands.sh")
        if row["status"] == "ran":
            self.client.log_metric(self.run_id, f"seconds/{row['name']}", row["seconds"])


def run_pipeline(recipe: Recipe, dry_run: bool = False, report_at_end: bool = True) -> list[dict]:
    """Run (or with `dry_run`, only print) the plan; returns the stage table."""
    steps = plan(recipe)
    print_plan(recipe, steps)
    if dry_run:
        return []
    start = time.perf_counter()
    with PipelineRun.opened(recipe) as tracker:
        runs: dict[str, str | None] = {}
        for stage, _, _ in steps:
            marker = done_marker(recipe, stage, runs)  # again now: an input may just have re-run
            if marker is None:
                row = run_stage(recipe, stage, tracker, runs)
            else:
                row = {**marker, "status": "reused"}
                print(f"\n=== stage {stage.name}: done, reusing run {str(marker.get('run_id'))[:8]}", flush=True)
            runs[stage.name] = row["run_id"]
            tracker.record(row)
        tracker.client.log_metric(tracker.run_id, "seconds/invocation", round(time.perf_counter() - start, 1))
    print(f"\npipeline {recipe.name} finished: MLflow run {tracker.run_id} (experiment {recipe.experiment_name})")
    if report_at_end:
        finish_report(recipe, tracker.run_id)
    return tracker.rows


def finish_report(recipe: Recipe, pipeline_run_id: str) -> None:
    """Write the pipeline's report and, when the recipe names reported values, compare with them."""
    path = report.write_report(recipe.experiment_name, recipe.report_dir, pipeline_run=pipeline_run_id)
    print(f"report: {path}")
    if recipe.expected and Path(recipe.expected).is_file():
        ok, text = report.check(recipe.expected, experiment=recipe.experiment_name, pipeline_run=pipeline_run_id)
        print(text)
        verdict = "reproduce" if ok else "do NOT all reproduce"
        print(f"the reported values in {recipe.expected} {verdict} (lit-llm report --check {recipe.expected})")


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM outside a training loop (which saves first, `StageCheckpoint`) stops the stage under way as Ctrl-C
    would, so the pipeline's MLflow run ends KILLED instead of being cut off."""
    def stop(signum: int, frame: Any) -> None:
        raise StopRequested(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
