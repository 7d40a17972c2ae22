"""An MLflow tracking server is a dependency that can fail; training must not.

At the start an unreachable server is a clear error within seconds (`start_tracking_uri`; or, with a fallback store,
a warning and the local store). Mid-run, `ResilientClient` keeps training going: it buffers what the server missed,
re-probes it, and sends the buffer when it is back; what never got through is written to
`<run dir>/mlflow_unsent_metrics.jsonl` (metric values; tables as files under `mlflow_unsent_tables/` beside it), and
`send_unsent_metrics` sends it later.
"""

import functools
import inspect
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric

from lit_llm import store_warmup

# MLflow retries a failed HTTP call 7 times with exponential backoff and a 120 s timeout: minutes per call, during
# which training stands still. ResilientClient buffers and retries on its own, so a failing call may fail fast:
# these apply (for http(s) servers) only where the user has not set them.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_TIMEOUTS_S = (3.0, 10.0, 30.0)  # each probe's timeout, tried in turn while the server does not answer
UNSENT_METRICS_FILE = "mlflow_unsent_metrics.jsonl"
UNSENT_TABLES_DIR = "mlflow_unsent_tables"  # beside it: the data of each table the server missed
# Calls that change the run are buffered while the server is away (in order); reads answer None meanwhile.
BUFFERED_CALLS = ("log_", "set_", "update_run", "delete_tag")
METRIC_CALLS = ("log_batch", "log_metric")

log = logging.getLogger(__name__)


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The explicit URI, else `MLFLOW_TRACKING_URI`, else the embedded sqlite store; once a store being created in
    the background (`store_warmup`) is there, so that no two processes create one at once."""
    store_warmup.wait()
    return tracking_uri or store_warmup.env_tracking_uri(os.environ)


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


