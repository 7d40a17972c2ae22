"""`lit-llm bench`: a quick run through the CLI writes every section with positive, finite numbers, MFU is the
stated ratio, the report names the command; `--skip` leaves sections out; the Throughput callback takes its peak
from a bench JSON (and names the file when it cannot); the GPU checks' run summary lists an experiment's runs.

Cached = uncached greedy generation is tested in test_generation.py."""

import importlib.util
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest

from lit_llm.bench.sections import random_batches
from lit_llm.bench.settings import PRESETS
from lit_llm.callbacks import Throughput
from lit_llm.cli import LitLLMCLI
from lit_llm.commands import main
from lit_llm.model import ModelConfig, Transformer
from lit_llm.stages.pretrain import PretrainLM
from tests.conftest import REPO, TINY_PRETRAIN


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """JSON and report of one quick bench (one thread: the 2 test cores may be shared)."""
    root = tmp_path_factory.mktemp("bench")
    out, report = root / "bench.json", root / "performance.md"
    main(["bench", "--quick", "--threads", "1", "--out", str(out), "--report", str(report)])
    return out, report


def positive(value: float | int | None) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_bench_writes_every_section(bench_files: tuple[Path, Path]) -> None:
    result = json.loads(bench_files[0].read_text())
    assert positive(result["peak_flops"]) and result["peak_flops"] == max(r["flops"] for r in result["matmul"]["rows"])
    assert all(positive(r["flops"]) and positive(r["seconds"]) for r in result["matmul"]["rows"])
    (train,) = result["train"]
    for key in ("params", "batch", "seq_len", "step_s", "tokens_per_s", "flops_per_token", "mfu"):
        assert positive(train[key]), key
    for row in result["generate"]["rows"]:
        for key in ("cached_tok_s", "uncached_tok_s", "cached_s", "uncached_s", "speedup"):
            assert positive(row[key]), key
    for key in ("step_s", "pairs_per_s", "rows", "columns"):
        assert positive(result["dpo"][key]), key
    for key in ("step_s", "time_generate_s", "time_score_s", "time_update_s", "response_length"):
        assert positive(result["ppo"][key]), key
    assert len(result["load_avg_start"]) == len(result["load_avg_end"]) == 3
    machine = result["machine"]
    assert machine["device"] == "cpu" and machine["torch_threads"] == 1 and machine["torch"] and machine["cpu"]


def test_mfu_is_flops_per_token_times_tokens_per_s_over_peak(bench_files: tuple[Path, Path]) -> None:
    result = json.loads(bench_files[0].read_text())
    (train,) = result["train"]
    model = Transformer(ModelConfig(**PRESETS[train["size"]]))
    assert train["flops_per_token"] == model.flops_per_token(train["seq_len"])
    assert train["params"] == model.num_params()
    assert train["tokens_per_s"] == pytest.approx(train["batch"] * train["seq_len"] / train["step_s"])
    assert train["mfu"] == pytest.approx(train["flops_per_token"] * train["tokens_per_s"] / result["peak_flops"])


def test_report_has_the_command_the_load_and_every_table(bench_files: tuple[Path, Path]) -> None:
    report = bench_files[1].read_text()
    assert "lit-llm bench --quick --threads 1 --out" in report
    assert "load average" in report
    for heading in ("## Matmul peak", "## Training", "## Generation", "## DPO and PPO steps"):
        assert heading in report, heading


def test_skipped_sections_are_absent_compile_adds_a_compiled_row_and_throughput_names_the_file_without_a_peak(
        tmp_path: Path) -> None:
    out = tmp_path / "train_only.json"
    main(["bench", "--quick", "--threads", "1", "--skip", "matmul,generate", "--skip", "dpo,ppo", "--compile",
          "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"matmul", "peak_flops", "generate", "dpo", "ppo"}.isdisjoint(result)
    assert [(r["size"], r["compiled"]) for r in result["train"]] == [("tiny", False), ("tiny", True)]
    assert all(r["mfu"] is None and positive(r["tokens_per_s"]) for r in result["train"])
    with pytest.raises(ValueError, match=f"{out}.*peak_flops"):
        Throughput(peak_flops=str(out))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Throughput(peak_flops=str(tmp_path / "missing.json"))
    with pytest.raises(SystemExit, match="unknown --skip"):
        main(["bench", "--quick", "--skip", "matmull"])


def test_throughput_reads_the_peak_of_a_bench_json_and_logs_mfu(bench_files: tuple[Path, Path]) -> None:
    peak = json.loads(bench_files[0].read_text())["peak_flops"]
    assert Throughput(peak_flops=str(bench_files[0])).peak_flops == peak
    assert Throughput(peak_flops=bench_files[0]).peak_flops == peak  # a Path too
    assert Throughput(peak_flops=2e9).peak_flops == 2e9
    config = ModelConfig(**PRESETS["tiny"])
    module = PretrainLM(backbone=config)
    module.model = Transformer(config)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Throughput(str(bench_files[0]), log_every_n_steps=2)])
    trainer.fit(module, train_dataloaders=random_batches(config.vocab_size, 2, 16, 2))
    metrics = trainer.callback_metrics
    expected = module.model.flops_per_token() * float(metrics["train/tokens_per_s"]) / peak
    assert float(metrics["train/mfu"]) == pytest.approx(expected, rel=1e-5)


def test_the_cli_accepts_a_bench_json_as_the_throughput_peak(bench_files: tuple[Path, Path], tmp_path: Path) -> None:
    cli = LitLLMCLI(args=["--config", TINY_PRETRAIN, f"--trainer.default_root_dir={tmp_path}",
                          "--trainer.callbacks+=lit_llm.callbacks.Throughput",
                          f"--trainer.callbacks.peak_flops={bench_files[0]}"], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, Throughput)]
    assert callback.peak_flops == json.loads(bench_files[0].read_text())["peak_flops"]


def test_gpu_checks_summary_lists_an_experiments_runs_with_their_last_metrics(tiny_pretrain: Path) -> None:
    """scripts/mlflow_summary.py (what scripts/gpu_checks.sh brings back from a lent machine) on the micro
    pretraining run of the session's store."""
    spec = importlib.util.spec_from_file_location("mlflow_summary", REPO / "scripts" / "mlflow_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = [r for r in module.summary("tests") if r["stage"] == "pretrain" and r["status"] == "FINISHED"]
    assert runs, "the micro pretraining run is missing"
    assert all(positive(r["wall_s"]) and positive(r["metrics"]["val/loss"]) for r in runs)
    assert module.summary("no-such-experiment") == []
