"""Pretraining end to end through the CLI: checkpoint contents, what MLflow records, generate and export."""

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import load_backbone
from lit_llm.commands import main
from tests.conftest import micro_pretrain_args


def last_ckpt(root: Path) -> Path:
    return root / "checkpoints" / "last.ckpt"


def test_checkpoint_loads_without_pickles_and_carries_config_and_tokenizer(tiny_pretrain: Path) -> None:
    checkpoint = torch.load(last_ckpt(tiny_pretrain), weights_only=True)
    meta = checkpoint["lit_llm"]
    assert meta["stage"] == "pretrain"
    assert meta["model_config"]["n_layer"] == 2
    assert meta["model_config"]["vocab_size"] == 300
    assert json.loads(meta["tokenizer"]["tokenizer"])["model"]["type"] == "BPE"
    assert checkpoint["global_step"] == 8
    loaded = load_backbone(last_ckpt(tiny_pretrain))
    assert loaded.tokenizer.vocab_size == loaded.model.config.vocab_size == 300


def test_mlflow_run_has_tags_params_config_metrics_and_samples(tiny_pretrain: Path, mlflow_db: str) -> None:
    run_id = torch.load(last_ckpt(tiny_pretrain), weights_only=True)["lit_llm"]["mlflow_run_id"]
    client = MlflowClient(mlflow_db)
    run = client.get_run(run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["lit_llm.stage"] == "pretrain"
    assert tags["lit_llm.seed"] == "0"
    assert len(tags["lit_llm.data_fingerprint"]) == 16
    assert "lit_llm.git_sha" in tags and "lit_llm.version.torch" in tags
    assert params["model.init_args.backbone.n_layer"] == "2"
    assert params["data.init_args.source"] == "tasks"
    assert params["model/trainable_share"] == "1.0"  # full training: every parameter
    n_params = sum(v.numel() for v in torch.load(last_ckpt(tiny_pretrain), weights_only=True)["state_dict"].values())
    assert int(params["model/trainable_params"]) <= n_params  # tied embedding/head counted once
    for name in ("train/loss", "val/loss", "val/ppl", "val/gold_accuracy", "train/tokens_per_s"):
        assert name in metrics, name
    assert metrics["val/ppl"] == pytest.approx(torch.tensor(metrics["val/loss"]).exp().item(), rel=0.05)
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    assert "config.yaml" in artifacts
    config_text = Path(client.download_artifacts(run_id, "config.yaml")).read_text()
    assert "lit_llm.PretrainLM" in config_text
    tables = client.list_artifacts(run_id, "samples")
    assert len(tables) == 2  # one per validation (steps 4 and 8)
    table = json.loads(Path(client.download_artifacts(run_id, tables[-1].path)).read_text())
    assert {"prompt", "completion", "gold", "correct", "step"} <= set(table["columns"])


def test_generate_command_prints_a_completion(tiny_pretrain: Path, capsys: pytest.CaptureFixture) -> None:
    main(["generate", str(last_ckpt(tiny_pretrain)), "--prompt", "Q: What is 2 plus 3?\nA:", "--max_new_tokens", "5"])
    out = capsys.readouterr().out
    assert out.startswith("Q: What is 2 plus 3?\nA:")


def test_export_round_trips_to_the_same_logits(tiny_pretrain: Path, tmp_path: Path) -> None:
    main(["export", str(last_ckpt(tiny_pretrain)), str(tmp_path / "hf")])
    ours = load_backbone(last_ckpt(tiny_pretrain))
    back = load_backbone(tmp_path / "hf")
    ids = torch.tensor([ours.tokenizer.encode("Q: What is 12 plus 7?", bos=True)])
    torch.testing.assert_close(ours.model(ids), back.model(ids))
    assert back.tokenizer.encode("dog") == ours.tokenizer.encode("dog")


def test_resume_from_last_checkpoint_continues_the_step_count(tiny_pretrain: Path, tmp_path: Path,
                                                              token_cache: Path) -> None:
    args = micro_pretrain_args(tmp_path, token_cache, steps=12)
    main(["fit", *args, f"--ckpt_path={last_ckpt(tiny_pretrain)}"])
    assert torch.load(last_ckpt(tmp_path), weights_only=True)["global_step"] == 12


def test_masked_lm_objective_trains(tmp_path: Path, token_cache: Path) -> None:
    args = micro_pretrain_args(tmp_path, token_cache, steps=4)
    main(["fit", *args, "--model.init_args.objective=masked", "--gold.examples=0"])
    checkpoint = torch.load(last_ckpt(tmp_path), weights_only=True)
    assert checkpoint["global_step"] == 4


def test_validate_test_and_predict_commands(tiny_pretrain: Path, tmp_path: Path, token_cache: Path,
                                            mlflow_db: str) -> None:
    args = micro_pretrain_args(tmp_path, token_cache)
    ckpt = f"--ckpt_path={last_ckpt(tiny_pretrain)}"
    main(["test", *args, ckpt])
    prompts = json.dumps(["Q: What is 1 plus 1?\nA:", "Q: Spell dog.\nA:"])
    main(["predict", *args, ckpt, f"--data.init_args.predict_prompts={prompts}"])
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Q: What is 1 plus 1?\nA:", "Q: Spell dog.\nA:"]
    client = MlflowClient(mlflow_db)
    test_runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                   filter_string="metrics.`test/loss` > 0")
    assert test_runs and "test/gold_accuracy" in test_runs[0].data.metrics


def test_checkpoints_are_written_once_in_the_run_directory(tiny_pretrain: Path) -> None:
    written = sorted(p.relative_to(tiny_pretrain) for p in tiny_pretrain.rglob("*.ckpt"))
    assert written == [Path("checkpoints/epoch=0-step=8.ckpt"), Path("checkpoints/last.ckpt")]
