"""A folder's first `lit-llm fit` has its new MLflow store created by a child process while it imports torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lit_llm.store_warmup import usable_cores
from tests.conftest import TINY_PRETRAIN, micro_pretrain_args

pytestmark = pytest.mark.skipif(usable_cores() < 2, reason="the store is warmed only with a second core")
MLFLOW_CONFIG = "trainer:\n  logger:\n    class_path: lit_llm.tracking.MLflowLogger\n"


def fresh_process(code: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run `code` in a new Python process (nothing imported yet, as in `lit-llm`), in `cwd`; its stdout."""
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          check=True).stdout


def store_to_warm(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str | None:
    code = "import json, os, sys; from lit_llm.store_warmup import store_to_warm; " \
           "print(json.dumps(store_to_warm(sys.argv[1:], dict(os.environ))))"
    return json.loads(fresh_process(code, argv, cwd, env))


def test_only_a_new_default_store_of_an_mlflow_fit_is_warmed(tmp_path: Path) -> None:
    (tmp_path / "mlflow.yaml").write_text(MLFLOW_CONFIG)
    (tmp_path / "elsewhere.yaml").write_text(MLFLOW_CONFIG + "    init_args:\n      tracking_uri: http://x:5000\n")
    fit = ["fit", "--config", "mlflow.yaml"]
    assert store_to_warm(fit, tmp_path) == "sqlite:///mlflow.db"
    assert store_to_warm(["fit", "--config=mlflow.yaml", "--trainer.logger.init_args.run_name=a"], tmp_path)
    assert store_to_warm(fit, tmp_path, {"MLFLOW_TRACKING_URI": "sqlite:///runs.db"}) == "sqlite:///runs.db"
    for argv, env in [(["validate", "--config", "mlflow.yaml"], None),  # not fit
                      (["fit", "--config", "elsewhere.yaml"], None),  # the config names its store
                      (fit + ["--trainer.logger=false"], None),  # another logger
                      (fit + ["--help"], None), (fit + ["--print_config"], None),  # no run
                      (fit + ["--trainer.logger.init_args.tracking_uri=sqlite:///b.db"], None),
                      (fit, {"MLFLOW_TRACKING_URI": "http://localhost:5000"}),  # a server
                      (fit, {"MLFLOW_TRACKING_URI": "sqlite:///no/such/folder/m.db"}),
                      (["fit", "--config", "missing.yaml"], None)]:
        assert store_to_warm(argv, tmp_path, env) is None, argv
    (tmp_path / "mlflow.db").touch()
    assert store_to_warm(fit, tmp_path) is None  # the store exists


def test_the_child_creates_the_store_mlflow_then_opens(tmp_path: Path) -> None:
    (tmp_path / "mlflow.yaml").write_text(MLFLOW_CONFIG)
    code = "import sys; from lit_llm import store_warmup as w; w.start(sys.argv[1:]); assert w._child; " \
           "from lit_llm.resilient import resolve_tracking_uri; print(resolve_tracking_uri()); assert not w._child"
    assert fresh_process(code, ["fit", "--config", "mlflow.yaml"], tmp_path).strip() == "sqlite:///mlflow.db"
    experiments = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    assert [e.name for e in experiments] == ["Default"]


def test_a_first_fit_in_a_new_folder_logs_into_the_warmed_store(tmp_path: Path, token_cache: Path) -> None:
    args = micro_pretrain_args(tmp_path / "run", token_cache, steps=4)
    assert args[:2] == ["--config", TINY_PRETRAIN]
    fresh_process("from lit_llm.commands import main; main()", ["fit", *args], tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] > 0
