"""MLflow as the default logger, and the run metadata every stage records.

The default store is the embedded `sqlite:///mlflow.db` in the working directory (MLflow 3 refuses the old
`file:./mlruns` store); `MLFLOW_TRACKING_URI` or `tracking_uri` points it at a server instead.

A tracking server is a dependency that can fail; training must not. At the start an unreachable server is a clear
error within seconds (or, with `fallback_tracking_uri`, a warning and a local store). Mid-run, `ResilientClient`
keeps training going: it buffers what the server missed, re-probes it, and sends the buffer when it is back; what
never got through is written to `<run dir>/mlflow_unsent_metrics.jsonl` (`send_unsent_metrics` sends it later).
"""

import functools
import inspect
import json
import logging
import os
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlparse

import mlflow
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow's own tag: the UI nests a run under this run (display only; weights' lineage is lit_llm.parent_run_id)
PARENT_RUN_TAG = "mlflow.parentRunId"
TRACKED_PACKAGES = ("lit-llm", "torch", "lightning", "mlflow", "tokenizers", "datasets", "transformers")
# MLflow retries a failed HTTP call 7 times with exponential backoff and a 120 s timeout: minutes per call, during
# which training stands still. ResilientClient buffers and retries on its own, so a failing call may fail fast:
# these apply (for http(s) servers) only where the user has not set them.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_TIMEOUTS_S = (3.0, 10.0, 30.0)  # each probe's timeout, tried in turn while the server does not answer
UNSENT_METRICS_FILE = "mlflow_unsent_metrics.jsonl"
UNSENT_TABLES_DIR = "mlflow_unsent_tables"  # beside it: the data of each table the server missed
CHANGED_PARAMS_TAG = "lit_llm.resumed.changed_params"  # params a resumed run changed (MLflow keeps the first)
# Calls that change the run are buffered while the server is away (in order); reads answer None meanwhile.
BUFFERED_CALLS = ("log_", "set_", "update_run", "delete_tag")
METRIC_CALLS = ("log_batch", "log_metric")

log = logging.getLogger(__name__)


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The explicit URI, else `MLFLOW_TRACKING_URI`, else the embedded sqlite store."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class MLflowUnreachableError(SystemExit):
    """The tracking server does not answer when a run starts (and no fallback store is configured).

    A SystemExit with the message, like the CLI's other configuration errors: `lit-llm` prints it without a
    traceback and exits with status 1 (raised as an Exception, jsonargparse would bury it in a Union error).
    """


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def server_down_reason(uri: str, timeouts: tuple[float, ...] = PROBE_TIMEOUTS_S) -> str | None:
    """None when the tracking server answers `GET <uri>/health`, else why not (refused, timed out, HTTP 5xx).

    Any answer below 500 counts as up: a server behind authentication may answer 401, and that is a live server.
    A refused connection is final at once; a probe that times out is tried again with the next, longer timeout, so a
    live server on a loaded machine is not taken for a dead one.
    """
    reason = "no probe"
    for timeout in timeouts:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return None
        except urllib.error.HTTPError as err:
            return None if err.code < 500 else f"HTTP {err.code}"
        except (OSError, ValueError) as err:  # URLError (refused, unknown host), socket timeouts
            reason = str(getattr(err, "reason", err))
            if "timed out" not in reason.lower():
                return reason
    return reason


def unreachable_message(uri: str, reason: str, from_env: bool) -> str:
    where = urlparse(uri)
    source = " (from MLFLOW_TRACKING_URI)" if from_env else ""
    return (f"MLflow tracking server {uri}{source} is unreachable: {reason}. Start it (e.g. `mlflow server --host "
            f"{where.hostname} --port {where.port or 5000} --backend-store-uri sqlite:///mlflow.db`), point "
            f"MLFLOW_TRACKING_URI or --trainer.logger.init_args.tracking_uri at a running server, or log locally "
            f"when it is down with --trainer.logger.init_args.fallback_tracking_uri=sqlite:///mlflow.db")


def set_http_retry_defaults() -> None:
    """MLflow's HTTP retry settings, capped (see HTTP_RETRY_DEFAULTS) unless the environment sets them."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def start_tracking_uri(uri: str, fallback: str | None, from_env: bool = False) -> str:
    """`uri` when it is a store or a server that answers; else `fallback` with a warning; else a clear error."""
    if not is_server(uri) or (reason := server_down_reason(uri)) is None:
        return uri
    if not fallback:
        raise MLflowUnreachableError(unreachable_message(uri, reason, from_env))
    log.warning(f"MLflow tracking server {uri} is unreachable ({reason}); this run logs to the fallback store "
                f"{fallback} instead")
    return fallback


@contextmanager
def tracking_uri_restored():
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


class ResilientClient:
    """The MlflowClient of one run, made to outlive its tracking server.

    A call that fails while the server does not answer `GET <uri>/health` warns once and is buffered (reads answer
    None); later calls do not reach for the server until a probe, at most every `reconnect_interval` seconds, finds
    it back; then the buffer is sent in order. A call that fails while the server answers is a real error and raises.
    """

    def __init__(self, client: MlflowClient, uri: str, reconnect_interval: float) -> None:
        self.client, self.uri, self.reconnect_interval = client, uri, reconnect_interval
        self.pending: deque[tuple[str, tuple, dict]] = deque()
        self.down_since: float | None = None
        self._next_probe = 0.0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "client":
            raise AttributeError(name)
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, args, kwargs)

        return call

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        if not self.reconnect():
            return self._defer(name, args, kwargs)
        try:
            return getattr(self.client, name)(*args, **kwargs)
        except Exception:
            reason = server_down_reason(self.uri)
            if reason is None:
                raise
            self.down_since, self._next_probe = time.monotonic(), time.monotonic() + self.reconnect_interval
            log.warning(f"MLflow tracking server {self.uri} stopped answering ({reason}); training goes on, metrics "
                        f"are kept and sent when it is back (probed every {self.reconnect_interval:g} s)")
            return self._defer(name, args, kwargs)

    def _defer(self, name: str, args: tuple, kwargs: dict) -> None:
        if name.startswith(BUFFERED_CALLS):
            self.pending.append((name, args, kwargs))

    def reconnect(self, force: bool = False) -> bool:
        """Whether the server is up (after sending the buffer); while it is down, probes only when due or forced."""
        if self.down_since is None:
            return True
        if not force and time.monotonic() < self._next_probe:
            return False
        self._next_probe = time.monotonic() + self.reconnect_interval
        # one short probe: while the server is away, training should not wait on it every interval
        return server_down_reason(self.uri, PROBE_TIMEOUTS_S[:1]) is None and self._flush()

    def _flush(self) -> bool:
        sent = 0
        while self.pending:
            name, args, kwargs = self.pending[0]
            try:
                getattr(self.client, name)(*args, **kwargs)
                sent += 1
            except Exception as err:
                if server_down_reason(self.uri, PROBE_TIMEOUTS_S[:1]) is not None:
                    return False  # gone again: keep the rest for the next probe
                log.warning(f"MLflow: the server refused a buffered {name} call, dropped: {err}")
            self.pending.popleft()
        log.warning(f"MLflow tracking server {self.uri} is back after {time.monotonic() - self.down_since:.0f} s; "
                    f"sent the {sent} calls it missed")
        self.down_since = None
        return True

    def write_unsent(self, path: str) -> tuple[int, list[str]]:
        """Append the buffered metric values and tables to the JSONL file `path` (each table's data in a JSON file
        beside it, under `mlflow_unsent_tables/`) and empty the buffer.

        Returns how many values and tables were written and the names of the other calls that were never sent."""
        folder = os.path.join(os.path.dirname(os.path.abspath(path)), UNSENT_TABLES_DIR)
        rows = []
        for name, args, kwargs in self.pending:
            rows += metric_rows(name, args, kwargs) or table_rows(name, args, kwargs, folder)
        others = sorted({name for name, _, _ in self.pending if name not in (*METRIC_CALLS, "log_table")})
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        self.pending.clear()
        return len(rows), others


def metric_rows(name: str, args: tuple, kwargs: dict) -> list[dict]:
    """Rows {run_id, key, value, step, timestamp} of an MlflowClient log_batch or log_metric call, else none."""
    if name not in METRIC_CALLS:
        return []
    call = inspect.signature(getattr(MlflowClient, name)).bind(None, *args, **kwargs).arguments
    if name == "log_metric":
        return [{"run_id": call["run_id"], "key": call["key"], "value": call["value"], "step": call.get("step") or 0,
                 "timestamp": call.get("timestamp")}]
    return [{"run_id": call["run_id"], "key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp}
            for m in call.get("metrics") or []]


def table_rows(name: str, args: tuple, kwargs: dict, folder: str) -> list[dict]:
    """The row {run_id, table, artifact_file} of an MlflowClient log_table call, its data written to a JSON file in
    `folder` (what `send_unsent_metrics` logs again); none for other calls."""
    if name != "log_table":
        return []
    call = inspect.signature(MlflowClient.log_table).bind(None, *args, **kwargs).arguments
    data = call["data"]
    if not isinstance(data, dict):  # a pandas DataFrame
        data = {column: list(values) for column, values in data.to_dict(orient="list").items()}
    os.makedirs(folder, exist_ok=True)
    file = os.path.join(folder, call["artifact_file"].replace("/", "__"))
    with open(file, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return [{"run_id": call["run_id"], "table": file, "artifact_file": call["artifact_file"]}]


def send_unsent_metrics(path: str, tracking_uri: str | None = None) -> int:
    """Send the metrics and tables of a `mlflow_unsent_metrics.jsonl` file to their runs; returns how many values
    and tables were sent.

    Args:
        path: The file a run wrote because its tracking server was down at the end.
        tracking_uri: Where the runs live; default `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`.
    """
    from mlflow.entities import Metric

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for run_id in dict.fromkeys(row["run_id"] for row in rows):
        metrics = [Metric(r["key"], r["value"], r["timestamp"] or int(time.time() * 1000), r["step"])
                   for r in rows if r["run_id"] == run_id and "key" in r]
        for i in range(0, len(metrics), 1000):  # MLflow's limit per log_batch
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
    for row in rows:
        if "table" in row:
            with open(row["table"], encoding="utf-8") as f:
                client.log_table(row["run_id"], data=json.load(f), artifact_file=row["artifact_file"])
    return len(rows)


class MLflowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with lit_llm's defaults, robust to a tracking server that is down.

    With an http(s) tracking server, MLflow's HTTP retries are capped (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=2`,
    `MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1`, `MLFLOW_HTTP_REQUEST_TIMEOUT=20`, each only when not set already) and
    the server is probed (`GET <uri>/health`) before the run starts: an unreachable server is an error within
    seconds, or, with `fallback_tracking_uri`, a warning and a run in that store. If the server goes away mid-run,
    training goes on: metrics are buffered and sent when it is back; those it never got are written to
    `<trainer.default_root_dir>/mlflow_unsent_metrics.jsonl` at the end (`lit_llm.tracking.send_unsent_metrics`
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
    def experiment(self):
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
        try:
            with tracking_uri_restored():
                MlflowClient(self._tracking_uri).get_run(run_id)
        except Exception:  # another store, or deleted: a new run
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
            previous = self.experiment.get_run(self.run_id).data.tags.get(CHANGED_PARAMS_TAG)
            text = "; ".join(([previous] if previous else []) + changed)
            self.experiment.set_tag(self.run_id, CHANGED_PARAMS_TAG, text[:5000])

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
                    f"with lit_llm.tracking.send_unsent_metrics){lost}")


@lru_cache(maxsize=1)
def git_sha() -> str:
    """Commit of the lit_llm checkout (or of the working directory), 'unknown' outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    for cwd in (here, os.getcwd()):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return "unknown"


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


def _cpu_model() -> str:
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
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": _cpu_model(), "cpu_cores": str(cores), "torch_threads": str(torch.get_num_threads()),
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
