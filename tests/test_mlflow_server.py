"""Training against a real `mlflow server` on loopback, read back with MlflowClient."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.cli import main
from tests.conftest import micro_pretrain_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not come up in {timeout} s")


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


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
