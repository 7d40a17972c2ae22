"""A folder's first `lit-llm fit` waits ~2 s for MLflow to create its sqlite store (its tables and some fifty schema
migrations, with the sqlalchemy and alembic imports). `start` has a child process create it on another core while
this one imports torch and Lightning; `wait` (called by `resilient.resolve_tracking_uri`, the door every MLflow
client of ours goes through) lets the child finish first, so the store is never created by two processes at once.

Only when it is sure to be the store the run would create: the default or `MLFLOW_TRACKING_URI` sqlite file, not
there yet, for a config that logs with MLflowLogger and sets no `tracking_uri` and no other logger. Imports nothing
heavy: it runs before the CLI imports torch.
"""

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The child goes through MLflow's own door (MlflowClient's store), so the store is the one the run would create.
CREATE_STORE = ("import sys; from mlflow import MlflowClient; "
                "MlflowClient(sys.argv[1]).search_experiments(max_results=1)")

_child: subprocess.Popen | None = None


def env_tracking_uri(environ: Mapping[str, str]) -> str:
    """Where runs go without an explicit URI: `MLFLOW_TRACKING_URI`, else the embedded sqlite store."""
    return environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def new_sqlite_store(uri: str) -> Path | None:
    """The file of a sqlite store URI that does not exist yet, in a folder that does; else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):])
    return path if not path.exists() and path.parent.is_dir() else None


def config_texts(argv: list[str]) -> list[str]:
    """The text of every `--config` file on the command line (unreadable ones as empty: the CLI reports them)."""
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    texts = []
    for path in paths:
        try:
            texts.append(Path(path).read_text())
        except (OSError, UnicodeDecodeError):
            texts.append("")
    return texts


def rules_out_the_store(arg: str) -> bool:
    """A command-line argument that sets the tracking URI or replaces the logger, or asks for no run at all."""
    return ("tracking_uri" in arg or re.match(r"--trainer\.logger(\+?=|$)", arg) is not None
            or arg in ("-h", "--help") or arg.startswith("--print_config"))


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def store_to_warm(argv: list[str], environ: Mapping[str, str]) -> str | None:
    """The sqlite URI a `fit` with these arguments would create, when a child may safely create it first."""
    if usable_cores() < 2 or not argv or argv[0] != "fit" or any(map(rules_out_the_store, argv[1:])):
        return None
    if "mlflow" in sys.modules or "lightning" in sys.modules:  # nothing left to overlap (in-process callers)
        return None
    texts = config_texts(argv)
    if not any("MLflowLogger" in t for t in texts) or any(re.search(r"tracking_uri\s*:", t) for t in texts):
        return None
    uri = env_tracking_uri(environ)
    return uri if new_sqlite_store(uri) else None


def start(argv: list[str]) -> None:
    """Create the run's new sqlite store in a child process, when `store_to_warm` finds one."""
    global _child
    uri = store_to_warm(argv, os.environ)
    if uri:
        _child = subprocess.Popen([sys.executable, "-c", CREATE_STORE, uri], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait() -> None:
    """Let the child finish before this process opens a store (if it failed, MLflow creates the store here)."""
    global _child
    if _child is not None:
        _child.wait()
        _child = None
