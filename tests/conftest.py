"""Shared fixtures: one MLflow database per test session, a shared token cache, one tiny pretraining run
that the CLI, generate and export tests reuse, and a real `mlflow server` that tests can stop and restart."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from lit_llm.checkpoint import checkpoint_meta, load_backbone
from lit_llm.commands import main

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = str(REPO / "configs" / "pretrain" / "tiny.yaml")


@pytest.fixture(scope="session", autouse=True)
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every run of the session logs into one sqlite store (its artifacts beside it)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


def micro_pretrain_args(root: Path, cache: Path, steps: int = 8) -> list[str]:
    """The tiny pretraining recipe shrunk to seconds: a smaller model, corpus and gold eval."""
    return [
        "--config", TINY_PRETRAIN,
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps // 2}",
        "--trainer.log_every_n_steps=2", f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.logger.init_args.experiment_name=tests",
        "--model.init_args.backbone.n_layer=2", "--model.init_args.backbone.d_model=64",
        "--gold.examples=8", "--gold.max_new_tokens=4",
        "--data.init_args.num_docs=300", "--data.init_args.vocab_size=300", "--data.init_args.block_size=32",
        "--data.init_args.batch_size=8", "--data.init_args.val_samples=8", f"--data.init_args.cache_dir={cache}",
    ]


@pytest.fixture(scope="session")
def tiny_pretrain(tmp_path_factory: pytest.TempPathFactory, token_cache: Path) -> Path:
    """Run directory of one micro pretraining run (checkpoint at checkpoints/last.ckpt)."""
    root = tmp_path_factory.mktemp("pretrain")
    main(["fit", *micro_pretrain_args(root, token_cache)])
    return root


@pytest.fixture(scope="session")
def reward_ckpt(tiny_pretrain: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A reward-stage checkpoint: the micro pretrained backbone with a random head and known statistics."""
    loaded = load_backbone(tiny_pretrain / "checkpoints" / "last.ckpt")
    torch.manual_seed(1)
    d = loaded.model.config.d_model
    state = {f"model.{k}": v for k, v in loaded.model.state_dict().items()}
    state.update({"head.weight": torch.randn(1, d) * 0.5, "head.bias": torch.zeros(1),
                  "reward_mean": torch.tensor(0.25), "reward_std": torch.tensor(2.0)})
    meta = checkpoint_meta("reward", loaded.model.config, loaded.tokenizer, "reward-run")
    meta["reward_stats"] = {"mean": 0.25, "std": 2.0}
    path = tmp_path_factory.mktemp("reward") / "reward.ckpt"
    torch.save({"state_dict": state, "lit_llm": meta}, path)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Polling limits are for hangs, not speed: a server that starts or stops slowly on a loaded machine is fine.
HANG = 900.0


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not come up in {timeout} s")


def wait_until_down(port: int, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.2)
        except OSError:
            return
    raise TimeoutError(f"port {port} still accepts connections {timeout} s after the server was stopped")


class MlflowServer:
    """A real `mlflow server` on a free loopback port with its sqlite store and artifacts under `root`; it can be
    stopped and started again on the same port and store."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{root / 'server.db'}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        if self.process is not None:
            return
        self.starts += 1
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--backend-store-uri", self.store,
                   "--artifacts-destination", str(self.root / "artifacts")]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # one process less to start
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            wait_until_up(self.url, self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(timeout=HANG)
        self.process = None
        wait_until_down(self.port)
