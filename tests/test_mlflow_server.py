"""Training against a real `mlflow server` on loopback, read back with MlflowClient."""

import os
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.commands import main
from tests.conftest import MlflowServer, micro_pretrain_args


@pytest.fixture
def mlflow_server(tmp_path: Path):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_training_logs_to_a_real_server(mlflow_server: str, tmp_path: Path, token_cache: Path,
                                        mlflow_db: str) -> None:
    args = micro_pretrain_args(tmp_path / "run", token_cache, steps=4)
    main(["fit", *args, f"--trainer.logger.init_args.tracking_uri={mlflow_server}",
          "--trainer.logger.init_args.experiment_name=server-test"])
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_db  # the server's URI does not leak into later runs
    run_id = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["lit_llm"]["mlflow_run_id"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["lit_llm.stage"] == "pretrain"
    assert "val/loss" in run.data.metrics
    history = client.get_metric_history(run_id, "train/loss")
    assert len(history) >= 2
    assert "config.yaml" in [a.path for a in client.list_artifacts(run_id)]
    experiment = client.get_experiment_by_name("server-test")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
