"""`lit-llm report` on runs written straight into a real MLflow store (no training): the tables and plots, the
fallback for runs made by hand, expected.json keeping hand-set tolerances, and --check's verdicts. The report of a
real (micro) pipeline and --check against a fresh pipeline run are in tests/test_pipeline.py."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from lit_llm.commands import main
from lit_llm.report import fmt, write_report
from lit_llm.report.expected import compare, default_tolerance
from lit_llm.report.runs import load_runs

PNG = b"\x89PNG\r\n\x1a\n"


def log_run(client: MlflowClient, experiment_id: str, name: str, stage: str, metrics: dict[str, list[float]],
            tags: dict | None = None, status: str = "FINISHED", config: str | None = "seed_everything: 0\n") -> str:
    """A finished run with metric histories (one value per step) and a config.yaml artifact."""
    run_id = client.create_run(experiment_id, run_name=name,
                               tags={"lit_llm.stage": stage, "lit_llm.seed": "0", "lit_llm.git_sha": "abc123",
                                     "lit_llm.version.torch": "2.x", **(tags or {})}).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, 1000 + step, step) for k, values in metrics.items()
                                      for step, v in enumerate(values)])
    client.log_param(run_id, "trainer.max_steps", str(max((len(v) for v in metrics.values()), default=0)))
    if config:
        client.log_text(run_id, config, "config.yaml")
    client.set_terminated(run_id, status)
    return run_id


def experiment(client: MlflowClient, name: str) -> str:
    return client.create_experiment(name)


@pytest.fixture
def hand_runs(mlflow_db: str, request: pytest.FixtureRequest) -> tuple[MlflowClient, str]:
    """An experiment of runs made by hand: pretrain (an older failed try and the finished one), sft, dpo, ppo."""
    client = MlflowClient(mlflow_db)
    name = f"report-{request.node.name}"[:60]
    exp = experiment(client, name)
    log_run(client, exp, "pretrain", "pretrain", {"val/loss": [9.0]}, status="FAILED")
    pre = log_run(client, exp, "pretrain", "pretrain", {"train/loss": [3.0, 2.0, 1.5], "val/loss": [2.5, 1.8],
                                                         "val/ppl": [12.2, 6.05], "val/gold_accuracy": [0.1, 0.15],
                                                         "train/tokens_per_s": [900.0, 950.0]})
    sft = log_run(client, exp, "sft", "sft", {"train/loss": [1.2, 1.0], "val/loss": [1.1, 0.9],
                                              "val/gold_accuracy": [0.2, 0.25]}, {"lit_llm.parent_run_id": pre})
    log_run(client, exp, "dpo", "dpo", {"train/loss": [0.69, 0.6], "val/reward_margin": [0.0, 0.3],
                                        "val/reward_accuracy": [0.5, 0.7], "val/gold_accuracy": [0.25, 0.3]},
            {"lit_llm.parent_run_id": sft})
    log_run(client, exp, "ppo", "ppo", {"train/reward": [0.1, 0.4, 0.6], "train/kl": [0.0, 0.05, 0.1],
                                        "val/gold_accuracy": [0.25, 0.28]}, {"lit_llm.parent_run_id": sft})
    return client, name


def test_report_of_runs_made_by_hand(hand_runs: tuple[MlflowClient, str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    client, name = hand_runs
    main(["report", "--experiment", name, "--out", str(tmp_path), "--recipe", "configs/pipeline/x.yaml"])
    assert f"wrote {tmp_path / 'REPORT.md'}" in capsys.readouterr().out
    text = (tmp_path / "REPORT.md").read_text()
    assert "lit-llm pipeline --config configs/pipeline/x.yaml" in text and "made outside `lit-llm pipeline`" in text
    # the newest finished run per name; final values; columns only for metrics some stage logged
    assert "| pretrain | pretrain | 3 | 1.800 | 6.050 | 0.150 |" in text and "9.000" not in text
    assert "| dpo | dpo | 2 | – | – | 0.300 | 0.300 | 0.700 |" in text
    assert "train/kl" in text and "val/pair_accuracy" not in text and "tokens_per_s" not in text
    assert "| sft | `" in text and "| pretrain | – | 0 |" in text  # lineage: sft's weights came from pretrain
    assert "hardware: not recorded" in text and "`abc123`" in text and "torch 2.x" in text
    for png in ("loss_curves.png", "gold_accuracy.png", "reward_vs_kl.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG and f"]({png})" in text
    assert (tmp_path / "configs" / "sft.yaml").read_text() == "seed_everything: 0\n"
    expected = json.loads((tmp_path / "expected.json").read_text())
    assert expected["experiment"] == name and expected["reported_from"]["pipeline_run"] is None
    assert expected["reported_from"]["git_sha"] == "abc123" and len(expected["reported_from"]["runs"]) == 4
    assert expected["stages"]["ppo"]["train/kl"] == {"value": 0.1, "tolerance": 0.01}
    assert expected["stages"]["sft"]["val/gold_accuracy"] == {"value": 0.25, "tolerance": 0.05}


def test_expected_values_keep_hand_set_tolerances_and_check_compares(hand_runs: tuple[MlflowClient, str],
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    client, name = hand_runs
    write_report(name, tmp_path)
    path = tmp_path / "expected.json"
    expected = json.loads(path.read_text())
    expected["stages"]["sft"]["val/loss"]["tolerance"] = 0.5
    path.write_text(json.dumps(expected))
    write_report(name, tmp_path)  # regenerated: values from the runs, the judgment kept
    assert json.loads(path.read_text())["stages"]["sft"]["val/loss"] == {"value": 0.9, "tolerance": 0.5}

    main(["report", "--check", str(path)])
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("all ") and "the reported runs themselves" in out[-1]
    runs = load_runs(name)
    expected = json.loads(path.read_text())
    expected["stages"]["sft"]["val/loss"]["value"] = 1.5  # 0.6 off, tolerance 0.5
    expected["stages"]["dpo"]["val/kl"] = {"value": 0.1, "tolerance": 0.1}
    ok, rows = compare(expected, runs)
    bad = {(r[0], r[1]): r for r in rows if r[-1] != "ok"}
    assert not ok and set(bad) == {("sft", "val/loss"), ("dpo", "val/kl")}
    assert bad[("sft", "val/loss")][3:] == ["0.9", "-0.6", "FAIL"]
    assert bad[("dpo", "val/kl")][3] == "missing" and "metric not logged" in bad[("dpo", "val/kl")][-1]


def test_report_of_a_pipeline_run_follows_its_stage_table(mlflow_db: str, tmp_path: Path) -> None:
    """The pipeline's stage table decides the stages: reused runs of other experiments included, in its order,
    with its commands, wall times and the hardware it recorded."""
    client = MlflowClient(mlflow_db)
    exp, other = experiment(client, "report-pipeline"), experiment(client, "report-pipeline-earlier")
    old = log_run(client, other, "pretrain", "pretrain", {"val/loss": [2.0]})
    new = log_run(client, exp, "sft", "sft", {"val/loss": [1.0], "val/gold_accuracy": [0.25]},
                  {"lit_llm.parent_run_id": old})
    log_run(client, exp, "stray", "sft", {"val/loss": [5.0]})  # in the experiment, not in the pipeline
    pipeline = client.create_run(exp, run_name="pipeline-x", tags={
        "lit_llm.stage": "pipeline", "lit_llm.recipe": "configs/pipeline/x.yaml", "lit_llm.hardware.cpu": "TestCPU",
        "lit_llm.hardware.cpu_cores": "2", "lit_llm.hardware.load_avg_1m": "0.10"}).info.run_id
    table = [{"name": "pretrain", "run_id": old, "seconds": 130.0, "status": "reused", "command": "lit-llm fit A",
              "load_avg_1m": 3.2},
             {"name": "sft", "run_id": new, "seconds": 20.0, "status": "ran", "command": "lit-llm fit B"}]
    client.log_text(pipeline, json.dumps(table), "stages.json")
    client.set_terminated(pipeline)
    text = Path(write_report("report-pipeline", tmp_path)).read_text()
    assert text.index("| pretrain | pretrain |") < text.index("| sft | sft |") and "stray" not in text
    assert "| 2.2 min (load 3.2) |" in text and "| 20 s |" in text and "reused" in text
    assert "# pretrain\nlit-llm fit A\n# sft\nlit-llm fit B" in text
    assert "lit-llm pipeline --config configs/pipeline/x.yaml" in text and "TestCPU, 2 cores" in text
    assert "| sft | `" in text and "| pretrain | – |" in text  # lineage by stage name across experiments
    assert "load average when the last invocation started: 0.10" in text
    assert "wall time: 2.5 min over 2 stages" in text


def test_unknown_experiment_and_missing_expected_file_are_named(mlflow_db: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no MLflow experiment 'nope' in this store"):
        main(["report", "--experiment", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="expected values not found: .*missing.json"):
        main(["report", "--check", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit):
        main(["report", "--experiment", "x"])  # neither --out nor --check


def test_number_formats_and_default_tolerances() -> None:
    assert [fmt(None), fmt(0.25), fmt(0.0012), fmt(326620.0, "output.train_tokens"), fmt(8.0, "rejection/num_pairs"),
            fmt(1.0, "val/reward_accuracy")] == ["–", "0.250", "0.0012", "326,620", "8", "1.000"]
    assert default_tolerance("val/gold_accuracy", 0.25) == 0.05
    assert default_tolerance("val/loss", 0.9) == pytest.approx(0.045)
    assert default_tolerance("output.train_tokens", 326620) == 0.0
    assert default_tolerance("rejection/num_pairs", 1900) == 190.0
