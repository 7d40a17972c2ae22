"""MLflow as the default logger, and the run metadata every stage records.

The default store is the embedded `sqlite:///mlflow.db` in the working directory (MLflow 3 refuses the old
`file:./mlruns` store); `MLFLOW_TRACKING_URI` or `tracking_uri` points it at a server instead.
"""

import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mlflow
from lightning.pytorch.loggers import MLFlowLogger

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow's own tag: the UI nests a run under this run (display only; weights' lineage is lit_llm.parent_run_id)
PARENT_RUN_TAG = "mlflow.parentRunId"
TRACKED_PACKAGES = ("lit-llm", "torch", "lightning", "mlflow", "tokenizers", "datasets", "transformers")


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The explicit URI, else `MLFLOW_TRACKING_URI`, else the embedded sqlite store."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class MLflowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with lit_llm's defaults.

    Args:
        experiment_name: MLflow experiment; runs of one pipeline share it.
        run_name: Display name of the run (MLflow picks one when omitted).
        tracking_uri: Tracking server or store; default `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`.
        tags: Extra tags for the run.
        artifact_location: Where a newly created experiment stores artifacts (the store's default when omitted).
        run_id: Continue logging into this existing run (used when resuming).
    """

    def __init__(
        self,
        experiment_name: str = "lit_llm",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=resolve_tracking_uri(tracking_uri),
            tags=tags,
            artifact_location=artifact_location,
            run_id=run_id,
        )

    @property
    def experiment(self):
        """The MlflowClient of this run, created without leaving mlflow's process-wide tracking URI changed.

        Lightning calls `mlflow.set_tracking_uri`, which also rewrites `MLFLOW_TRACKING_URI`; without the restore,
        the next run in the same process (a pipeline's next stage, a test) would silently log to this one's store.
        """
        if self._initialized:
            return MLFlowLogger.experiment.fget(self)
        env_before, uri_before = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
        try:
            return MLFlowLogger.experiment.fget(self)
        finally:
            mlflow.set_tracking_uri(uri_before)
            if env_before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env_before


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
