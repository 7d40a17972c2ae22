"""The MLflow runs a report is made of: a pipeline's stage runs (from its stage table) or an experiment's runs made
by hand, and their metric histories."""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from lit_llm.tracking import Tag, resolve_tracking_uri

QUIET_DOWNLOADS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
DATA_STAGES = ("prepare", "rejection_sampling")  # stages that make data, not models
# final-metric columns of the results table, in order; a column is shown when some stage logged it
RESULT_METRICS = ("val/loss", "val/ppl", "val/gold_accuracy", "val/pair_accuracy", "val/reward_margin",
                  "val/reward_accuracy", "train/reward", "train/kl", "val/reward")
# what data stages (prepare, rejection sampling) produced
DATA_METRICS = ("output.train_tokens", "output.val_tokens", "output.train_documents", "rejection/num_pairs",
                "rejection/num_sft", "rejection/usable_pair_share", "rejection/sample_gold_accuracy",
                "rejection/kept_gold_accuracy")


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class ReportError(Exception):
    """Missing experiment, run or file; the message says which."""


@dataclass
class StageRun:
    """One stage of a pipeline with its MLflow run.

    Args:
        name: The pipeline's stage name (else the run name).
        run: The MLflow run.
        command: The `lit-llm` command that made it, when the pipeline recorded it.
        seconds: Wall time of the stage (pipeline record, else the run's start to end).
        status: "ran" or "reused" in the pipeline invocation that recorded it; "" outside a pipeline.
        load: The machine's 1-minute load average when the stage started (pipeline record), for its wall time.
    """

    name: str
    run: Any
    command: str | None = None
    seconds: float | None = None
    status: str = ""
    load: float | None = None

    @property
    def wall_time(self) -> str:
        load = f" (load {self.load:.1f})" if self.load is not None else ""
        return fmt_seconds(self.seconds) + load

    @property
    def kind(self) -> str:
        return self.run.data.tags.get(Tag.STAGE, "?")

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def metric(self, key: str) -> float | None:
        return self.run.data.metrics.get(key)


@dataclass
class Runs:
    """The runs a report is made of: the pipeline run (None for runs made by hand) and its stages in order."""

    experiment: str
    pipeline: Any
    stages: list[StageRun]
    uri: str
    recipe: str | None = None  # the recipe that reproduces them: the pipeline's, or named by the caller

    def tag(self, key: str) -> str | None:
        """A tag of the pipeline run, else the stages' common value (None when absent or when they differ)."""
        if self.pipeline is not None and key in self.pipeline.data.tags:
            return self.pipeline.data.tags[key]
        values = {s.run.data.tags.get(key) for s in self.stages}
        return values.pop() if len(values) == 1 else None


def report_client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(uri), uri


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments()))
        raise ReportError(f"no MLflow experiment '{name}' in this store (experiments: {known or 'none'}); "
                          "set MLFLOW_TRACKING_URI or --tracking_uri to the store the runs logged to")
    return experiment.experiment_id


def artifact_text(client: Any, run_id: str, path: str) -> str | None:
    """An artifact of a run as text, None when the run has no such artifact."""
    quiet = os.environ.get(QUIET_DOWNLOADS)
    os.environ[QUIET_DOWNLOADS] = "false"  # no progress bar per small file
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text()
    except Exception:  # MLflow raises different types per store for a missing artifact
        return None
    finally:
        if quiet is None:
            os.environ.pop(QUIET_DOWNLOADS, None)
        else:
            os.environ[QUIET_DOWNLOADS] = quiet


def _pipeline_stages(client: Any, pipeline: Any) -> list[StageRun]:
    table = artifact_text(client, pipeline.info.run_id, "stages.json")
    if table is None:
        raise ReportError(f"pipeline run {pipeline.info.run_id} has no stages.json (did it run any stage?)")
    stages = []
    for row in json.loads(table):
        if not row.get("run_id"):
            continue
        stages.append(StageRun(row["name"], client.get_run(row["run_id"]), row.get("command"), row.get("seconds"),
                               row.get("status", ""), row.get("load_avg_1m")))
    return stages


def _runs_by_hand(client: Any, experiment_id: str) -> list[StageRun]:
    """Finished runs of an experiment without a pipeline run: the newest per run name, oldest first."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    newest: dict[str, Any] = {}
    for run in runs:
        newest.setdefault(run.info.run_name, run)
    ordered = sorted(newest.values(), key=lambda r: r.info.start_time)
    return [StageRun(r.info.run_name, r, seconds=_run_seconds(r)) for r in ordered]


def _run_seconds(run: Any) -> float | None:
    if run.info.end_time and run.info.start_time:
        return (run.info.end_time - run.info.start_time) / 1000
    return None


def load_runs(experiment: str, pipeline_run: str | None = None, tracking_uri: str | None = None) -> Runs:
    """The stage runs of the newest (or the given) pipeline run of an experiment, or its runs made by hand."""
    client, uri = report_client(tracking_uri)
    experiment_id = _experiment_id(client, experiment)
    if pipeline_run:
        pipeline = client.get_run(pipeline_run)
    else:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{Tag.STAGE}` = 'pipeline'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        pipeline = found[0] if found else None
    stages = _pipeline_stages(client, pipeline) if pipeline else _runs_by_hand(client, experiment_id)
    if not stages:
        raise ReportError(f"experiment '{experiment}' has no finished stage runs")
    recipe = pipeline.data.tags.get(Tag.RECIPE) if pipeline else None
    return Runs(experiment, pipeline, stages, uri, recipe)


def history(run_id: str, key: str, uri: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, by step; a step logged twice (by a run and by its resumption, which logs into
    the same run) counts with its last value."""
    client, _ = report_client(uri)
    logged = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return sorted({m.step: m.value for m in logged}.items())
