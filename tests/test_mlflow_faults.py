"""A tracking server that is down, with a real `mlflow server` that the tests stop and restart.

At the start: a clear error within seconds, or the fallback store. Mid-run: training finishes with its checkpoint,
the metrics the server missed are sent when it is back, or written to `mlflow_unsent_metrics.jsonl` at the end.
One server serves the whole module (each start takes seconds); the tests run in file order, each bringing the
server to the state it needs.
"""

import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from mlflow import MlflowClient

from lit_llm.commands import main
from lit_llm.resilient import UNSENT_METRICS_FILE, MLflowUnreachableError, send_unsent_metrics
from tests.conftest import MlflowServer, micro_pretrain_args


class ServerSwitch(pl.Callback):
    """Stops the test's MLflow server after training step `stop_at` and starts it again after `start_at`.

    `seconds[k]` is the time from the end of step k to the start of the next (its logging and validation)."""

    server: MlflowServer | None = None  # the test's server (the CLI builds the callback from its class path)
    last: "ServerSwitch | None" = None

    def __init__(self, stop_at: int, start_at: int | None = None) -> None:
        self.stop_at, self.start_at = stop_at, start_at
        self.seconds: dict[int, float] = {}
        self._end: float | None = None
        ServerSwitch.last = self

    def on_train_batch_start(self, trainer: "pl.Trainer", *args) -> None:
        if self._end is not None:
            self.seconds[trainer.global_step] = time.perf_counter() - self._end

    def on_train_batch_end(self, trainer: "pl.Trainer", *args) -> None:
        if trainer.global_step == self.stop_at:
            self.server.stop()
        if trainer.global_step == self.start_at:
            self.server.start()
        self._end = time.perf_counter()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield server
    server.stop()


@pytest.fixture
def live_server(server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    server.start()
    monkeypatch.setattr(ServerSwitch, "server", server)
    return server


@pytest.fixture
def stopped_server(server: MlflowServer) -> MlflowServer:
    """A server that was started and then stopped."""
    if server.starts == 0:
        server.start()
    server.stop()
    return server


def fit_with_switch(root: Path, cache: Path, url: str, *switch: str) -> None:
    main(["fit", *micro_pretrain_args(root, cache), f"--trainer.logger.init_args.tracking_uri={url}",
          "--trainer.logger.init_args.experiment_name=faults",
          "--trainer.callbacks+=tests.test_mlflow_faults.ServerSwitch", *switch])


def checkpoint(root: Path) -> dict:
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_server_back_mid_run_gets_what_it_missed(live_server: MlflowServer, tmp_path: Path, token_cache: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    fit_with_switch(tmp_path, token_cache, live_server.url, "--trainer.callbacks.stop_at=2",
                    "--trainer.callbacks.start_at=6", "--trainer.logger.init_args.reconnect_interval=0")
    ckpt = checkpoint(tmp_path)
    assert ckpt["global_step"] == 8
    client = MlflowClient(live_server.url)
    run = client.get_run(ckpt["lit_llm"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert steps(client, run.info.run_id, "train/loss") == [1, 3, 5, 7]  # logged every 2 steps, outage included
    assert len(steps(client, run.info.run_id, "val/loss")) == 2
    assert len(client.list_artifacts(run.info.run_id, "samples")) == 2  # the table of step 4 came late
    assert not (tmp_path / UNSENT_METRICS_FILE).exists()
    assert f"{live_server.url} stopped answering" in caplog.text and "is back" in caplog.text


def test_server_gone_for_good_mid_run(live_server: MlflowServer, tmp_path: Path, token_cache: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    fit_with_switch(tmp_path, token_cache, live_server.url, "--trainer.callbacks.stop_at=3")
    ckpt = checkpoint(tmp_path)
    assert ckpt["global_step"] == 8
    run_id = ckpt["lit_llm"]["mlflow_run_id"]
    seconds = ServerSwitch.last.seconds
    print("seconds after each step:", {k: round(v, 2) for k, v in seconds.items()})
    stall = max(seconds[step] for step in range(3, 8))
    # MLflow's own retries would take minutes; ours about 3 s once. The bound scales with the machine's speed now
    # (the slowest step before the outage), so a loaded machine does not fail it.
    assert stall < 20 + 20 * max(seconds[step] for step in (1, 2))

    rows = [json.loads(line) for line in (tmp_path / UNSENT_METRICS_FILE).read_text().splitlines()]
    assert {row["run_id"] for row in rows} == {run_id}
    assert sorted(r["step"] for r in rows if r.get("key") == "train/loss") == [3, 5, 7]  # all logged after the kill
    assert sum(r.get("key") == "val/loss" for r in rows) == 2
    tables = [r for r in rows if "table" in r]  # the sample tables of both validations, kept as files
    assert [r["artifact_file"] for r in tables] == ["samples/step_0000004.json", "samples/step_0000008.json"]
    assert all(Path(r["table"]).is_file() for r in tables)
    assert f"{live_server.url} is still unreachable" in caplog.text
    assert str(tmp_path / UNSENT_METRICS_FILE) in caplog.text and "also not sent: log_table" not in caplog.text

    store = MlflowClient(live_server.store)  # the server's own store, read while it is down
    assert store.get_run(run_id).info.status == "RUNNING"
    assert steps(store, run_id, "train/loss") == [1]
    live_server.start()  # back: send what it missed (its artifacts go through the server)
    client = MlflowClient(live_server.url)
    assert not client.list_artifacts(run_id, "samples")
    assert send_unsent_metrics(str(tmp_path / UNSENT_METRICS_FILE), live_server.url) == len(rows)
    assert steps(client, run_id, "train/loss") == [1, 3, 5, 7]
    assert len(client.list_artifacts(run_id, "samples")) == 2


def test_server_down_at_start_fails_fast_naming_it(stopped_server: MlflowServer, tmp_path: Path, token_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    with pytest.raises(SystemExit):  # the same command parsed, no logger made: the machine's speed right now
        main(["fit", *micro_pretrain_args(tmp_path, token_cache), "--print_config"])
    baseline = time.perf_counter() - start
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stopped_server.url)
    start = time.perf_counter()
    with pytest.raises(MLflowUnreachableError) as error:
        main(["fit", *micro_pretrain_args(tmp_path, token_cache)])
    seconds = time.perf_counter() - start
    print(f"failed after {seconds:.1f} s (parsing alone: {baseline:.1f} s)")
    assert seconds < 2 * baseline + 30  # one probe (3 s timeout), not MLflow's minutes of retries
    message = str(error.value)
    assert f"{stopped_server.url} (from MLFLOW_TRACKING_URI) is unreachable" in message
    assert "mlflow server --host 127.0.0.1" in message and "fallback_tracking_uri" in message
    assert not (tmp_path / "checkpoints").exists()


def test_server_down_at_start_with_fallback_logs_locally(stopped_server: MlflowServer, tmp_path: Path,
                                                         token_cache: Path, mlflow_db: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    fallback = mlflow_db  # the session's local store (a new sqlite store would take seconds to create)
    main(["fit", *micro_pretrain_args(tmp_path, token_cache, steps=4),
          f"--trainer.logger.init_args.tracking_uri={stopped_server.url}",
          f"--trainer.logger.init_args.fallback_tracking_uri={fallback}"])
    run_id = checkpoint(tmp_path)["lit_llm"]["mlflow_run_id"]
    run = MlflowClient(fallback).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["lit_llm.stage"] == "pretrain"
    assert "train/loss" in run.data.metrics
    assert f"{stopped_server.url} is unreachable" in caplog.text and fallback in caplog.text
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_db
