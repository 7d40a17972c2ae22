"""MLflow: the default logger, the names of lit_llm's tags, and the runs every command records.

The default store is the embedded `sqlite:///mlflow.db` in the working directory (MLflow 3 refuses the old
`file:./mlruns` store); `MLFLOW_TRACKING_URI` or `tracking_uri` points it at a server instead, which may fail
without costing the training (`lit_llm.resilient`).

Every run a command makes carries the same tags (`run_tags`, names in `Tag`): its stage, git SHA and package
versions, and where known its seed, data fingerprint and the run its weights came from. A stage's run is made by
`MLflowLogger`; the runs of `prepare`, `rejection-sample` and `pipeline` by `open_run`; `report` reads them back by
the same names.
"""

import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mlflow
import torch
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from lit_llm.lean_imports import no_ipython_shell
from lit_llm.resilient import (UNSENT_METRICS_FILE, MLflowUnreachableError, ResilientClient, is_server,
                               resolve_tracking_uri, server_down_reason, set_http_retry_defaults, start_tracking_uri,
                               unreachable_message)
from lit_llm.store_warmup import usable_cores

TRACKED_PACKAGES = ("lit-llm", "torch", "lightning", "mlflow", "tokenizers", "datasets", "transformers")
MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call

log = logging.getLogger(__name__)


class Tag:
    """The tags lit_llm writes and reads (one name per fact, used by every command and by `report`)."""

    STAGE = "lit_llm.stage"  # pretrain, sft, reward, ppo, dpo, prepare, rejection_sampling, pipeline
    PARENT_RUN = "lit_llm.parent_run_id"  # the run that produced the starting weights (lineage)
    DATA_RUN = "lit_llm.data_run_id"  # the data stages' runs a stage read (comma-separated)
    GIT_SHA = "lit_llm.git_sha"
    SEED = "lit_llm.seed"
    FINGERPRINT = "lit_llm.data_fingerprint"
    VERSION = "lit_llm.version."  # prefix: one tag per package
    HARDWARE = "lit_llm.hardware."  # prefix: the pipeline's machine
    PIPELINE = "lit_llm.pipeline"  # the recipe's name, on the pipeline's run and its stages'
    PIPELINE_STAGE = "lit_llm.pipeline_stage"
    RECIPE = "lit_llm.recipe"
    ROOT = "lit_llm.root"
    ROUND = "lit_llm.round"  # a Llama-3-style round
    NONFINITE = "lit_llm.nonfinite"  # the last NaN/inf event
    CHANGED_PARAMS = "lit_llm.resumed.changed_params"  # params a resumed run changed (MLflow keeps the first)
    MLFLOW_PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one (display only)


PARENT_RUN_TAG = Tag.MLFLOW_PARENT


def run_tags(stage: str, seed: int | None = None, fingerprint: str | None = None, parent_run_id: str | None = None,
             **extra: str) -> dict[str, str]:
    """The tags of a run of `stage`: stage, git SHA, package versions, and the seed, data fingerprint and parent
    run when given; `extra` adds more (by tag name)."""
    tags = {Tag.STAGE: stage, Tag.GIT_SHA: git_sha()}
    if seed is not None:
        tags[Tag.SEED] = str(seed)
    if fingerprint is not None:
        tags[Tag.FINGERPRINT] = str(fingerprint)
    if parent_run_id:
        tags[Tag.PARENT_RUN] = parent_run_id
    tags.update({f"{Tag.VERSION}{k}": v for k, v in package_versions().items()})
    return {**tags, **extra}


@contextmanager
def open_run(experiment_name: str, tags: dict[str, str], run_name: str | None = None,
             tracking_uri: str | None = None, run_id: str | None = None) -> Iterator[tuple[Any, str]]:
    """A run of a command that is no Lightning fit (prepare, rejection-sample, pipeline): yields (client, run_id),
    the client resilient to a server that stops answering; the run ends FINISHED, or FAILED when the work raises
    (KILLED when it is stopped). `run_id` reopens an existing run instead of creating one."""
    uri = resolve_tracking_uri(tracking_uri)
    if is_server(uri):
        set_http_retry_defaults()
    client = MlflowClient(start_tracking_uri(uri, None))
    if run_id is None:
        experiment_id = get_or_create_experiment(client, experiment_name)
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    if is_server(uri):
        client = ResilientClient(client, uri, reconnect_interval=30.0)
    try:
        yield client, run_id
    except (KeyboardInterrupt, SystemExit):
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def existing_run(run_id: str, tracking_uri: str | None = None) -> tuple[Any, str] | None:
    """(run, its experiment's name) when `run_id` is an active run of the store, else None (deleted, another store)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    try:
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id)
    except Exception:  # MLflow raises its own errors for unknown ids, and OSError for a missing file store
        return None
    return (run, experiment.name) if run.info.lifecycle_stage == "active" else None


def log_batched(client: Any, run_id: str, params: dict[str, Any] | None = None,
                metrics: dict[str, float] | None = None, step: int = 0) -> None:
    """Params (as strings, None left out) and metrics of a run, in batches MLflow accepts."""
    param_list = [Param(k, str(v)[:6000]) for k, v in (params or {}).items() if v is not None]
    for i in range(0, len(param_list), MLFLOW_BATCH):
        client.log_batch(run_id, params=param_list[i : i + MLFLOW_BATCH])
    now = int(time.time() * 1000)
    metric_list = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
    for i in range(0, len(metric_list), 1000):  # MLflow's limit of metrics per log_batch
        client.log_batch(run_id, metrics=metric_list[i : i + 1000])


@contextmanager
def tracking_uri_restored() -> Iterator[None]:
    """Leave mlflow's process-wide tracking URI (and `MLFLOW_TRACKING_URI`) as they were."""
    env_before, uri_before = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uri_before)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


class MLflowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with lit_llm's defaults, robust to a tracking server that is down.

    With an http(s) tracking server, MLflow's HTTP retries are capped (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=2`,
    `MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1`, `MLFLOW_HTTP_REQUEST_TIMEOUT=20`, each only when not set already) and
    the server is probed (`GET <uri>/health`) before the run starts: an unreachable server is an error within
    seconds, or, with `fallback_tracking_uri`, a warning and a run in that store. If the server goes away mid-run,
    training goes on: metrics are buffered and sent when it is back; those it never got are written to
    `<trainer.default_root_dir>/mlflow_unsent_metrics.jsonl` at the end (`lit_llm.resilient.send_unsent_metrics`
    sends them later).

    Args:
        experiment_name: MLflow experiment; runs of one pipeline share it.
        run_name: Display name of the run (MLflow picks one when omitted).
        tracking_uri: Tracking server or store; default `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`.
        tags: Extra tags for the run.
        artifact_location: Where a newly created experiment stores artifacts (the store's default when omitted).
        run_id: Continue logging into this existing run (used when resuming).
        fallback_tracking_uri: A local store (e.g. `sqlite:///mlflow.db`) to log to when the tracking server does
            not answer at the start, instead of failing (a `run_id` to continue is then dropped: a new run starts).
        reconnect_interval: Seconds between probes of a server that stopped answering mid-run.
    """

    def __init__(
        self,
        experiment_name: str = "lit_llm",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,
        run_id: str | None = None,
        fallback_tracking_uri: str | None = None,
        reconnect_interval: float = 30.0,
    ) -> None:
        uri = resolve_tracking_uri(tracking_uri)
        if is_server(uri):
            set_http_retry_defaults()
        start_uri = start_tracking_uri(uri, fallback_tracking_uri, from_env=tracking_uri is None)
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=start_uri,
            tags=tags,
            artifact_location=artifact_location,
            run_id=run_id if start_uri == uri else None,
        )
        self.reconnect_interval = reconnect_interval
        self.run_dir: str | None = None  # where unsent metrics go; RunMetadata sets trainer.default_root_dir
        self.continued = False  # logging into the run of a checkpoint this run resumes (`continue_run`)
        self._resilient: ResilientClient | None = None

    @property
    def experiment(self) -> MlflowClient:
        """The MlflowClient of this run (a ResilientClient for a server), created without leaving mlflow's
        process-wide tracking URI changed.

        Lightning calls `mlflow.set_tracking_uri`, which also rewrites `MLFLOW_TRACKING_URI`; without the restore,
        the next run in the same process (a pipeline's next stage, a test) would silently log to this one's store.
        """
        if self._initialized:
            client = MLFlowLogger.experiment.fget(self)
        else:
            with tracking_uri_restored():
                client = self._start_run()
        if self._resilient is None and isinstance(client, MlflowClient) and is_server(self._tracking_uri):
            self._resilient = ResilientClient(client, self._tracking_uri, self.reconnect_interval)
        return self._resilient or client

    def _start_run(self) -> MlflowClient:
        """Lightning's experiment: the run is created (or found) on first use; a server gone since the start
        probe is the same clear error."""
        try:
            with no_ipython_shell():  # MLflow's notebook probe, answered without importing IPython
                return MLFlowLogger.experiment.fget(self)
        except Exception as err:
            reason = server_down_reason(self._tracking_uri) if is_server(self._tracking_uri) else None
            if reason is None:
                raise
            raise MLflowUnreachableError(unreachable_message(self._tracking_uri, reason, from_env=False)) from err

    def continue_run(self, run_id: str) -> bool:
        """Log into `run_id` (a resumed run's own run, from its checkpoint) instead of a new run, when the run is in
        this logger's store and no run was chosen or started yet; returns whether it will."""
        if self._run_id is not None or self._initialized:
            return False
        with tracking_uri_restored():
            if existing_run(run_id, self._tracking_uri) is None:  # another store, or deleted: a new run
                return False
        self._run_id = run_id
        self.continued = True
        return True

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Lightning's, except in a continued run (`continue_run`), where MLflow refuses to change a param: only new
        params are logged, and the changed ones (e.g. a longer max_steps) go to the tag
        `lit_llm.resumed.changed_params` as `key: old -> new`."""
        if not self.continued:
            return super().log_hyperparams(params)
        params = dict(vars(params) if not isinstance(params, dict) else params)
        logged = self.experiment.get_run(self.run_id).data.params
        changed = [f"{k}: {logged[k]} -> {v}" for k, v in params.items() if k in logged and logged[k] != str(v)[:250]]
        super().log_hyperparams({k: v for k, v in params.items() if k not in logged})
        if changed:
            previous = self.experiment.get_run(self.run_id).data.tags.get(Tag.CHANGED_PARAMS)
            text = "; ".join(([previous] if previous else []) + changed)
            self.experiment.set_tag(self.run_id, Tag.CHANGED_PARAMS, text[:5000])

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Send what the server missed if it is back; else write the unsent metrics next to the checkpoints. A run
        stopped on a signal or Ctrl-C (Lightning calls this while handling the exception) ends KILLED."""
        if status == "failed" and isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit)):
            status = "KILLED"
        resilient = self._resilient
        if resilient is not None:
            resilient.reconnect(force=True)
        super().finalize(status)  # while the server is down its get_run answers None: the run stays RUNNING there
        if resilient is not None and resilient.pending:
            self._write_unsent(resilient)

    def _write_unsent(self, resilient: ResilientClient) -> None:
        path = os.path.join(self.run_dir or os.getcwd(), UNSENT_METRICS_FILE)
        count, others = resilient.write_unsent(path)
        lost = f"; also not sent: {', '.join(others)}" if others else ""
        log.warning(f"MLflow tracking server {self._tracking_uri} is still unreachable at the end of run "
                    f"{self._run_id}: the {count} metric values and tables it missed are in {path} (send them "
                    f"with lit_llm.resilient.send_unsent_metrics){lost}")


def _git(cwd: str, *args: str) -> str | None:
    """`git <args>`'s output in `cwd`, None outside git (or without git)."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def git_sha() -> str:
    """Commit of the lit_llm checkout (or of the working directory), 'unknown' outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    return _git(here, "rev-parse", "HEAD") or _git(os.getcwd(), "rev-parse", "HEAD") or "unknown"


def git_describe(path: str | os.PathLike) -> str:
    """The checkout holding `path` as `git describe --always --dirty` (a short commit, "-dirty" when files differ
    from it), 'unknown' outside git: what a benchmark's JSON records beside its numbers."""
    return _git(str(path), "describe", "--always", "--dirty") or "unknown"


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a result, for reproducibility tags."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists into dotted keys (MLflow params are flat)."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in config):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def get_or_create_experiment(client: Any, name: str) -> str:
    """Id of the MLflow experiment `name`, created when it does not exist yet."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, str]:
    """The machine a result was measured on: CPU model and cores, memory, accelerators, OS, load at the time.

    Wall times mean little without it, and the load average says whether the machine was shared.
    """
    info = {"cpu": cpu_model(), "cpu_cores": str(usable_cores()), "torch_threads": str(torch.get_num_threads()),
            "os": platform.platform()}
    try:
        info["memory_gb"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}"
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = f"{os.getloadavg()[0]:.2f}"
    return info
