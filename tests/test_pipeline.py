"""`lit-llm pipeline`: the tiny recipe shrunk to seconds, end to end (outputs, markers, MLflow nesting and lineage,
report); resume without re-running; the plan; recipe errors; same seed twice → identical metric histories; and
`lit-llm report --check` against a fresh run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from lit_llm.checkpoint import read_checkpoint
from lit_llm.commands import main
from lit_llm.pipeline.recipe import PipelineError, load_recipe
from lit_llm.pipeline.state import check_configs, plan
from tests.conftest import REPO

TINY_RECIPE = REPO / "configs" / "pipeline" / "tiny.yaml"
# every fit stage: a few steps, quiet
MICRO_FIT = ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=2",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
GOLD = ["--gold.examples=4", "--gold.max_new_tokens=4"]
SFT = [*GOLD, "--data.init_args.num_records=48", "--data.init_args.num_val_records=8",
       "--data.init_args.max_length=64", "--data.init_args.batch_size=4"]
DPO = [*GOLD, "--data.init_args.max_length=64", "--data.init_args.batch_size=4", "--data.init_args.val_fraction=0.25"]
MICRO = {  # per stage of the tiny recipe: a smaller corpus, model and data
    "prepare": ['--sources=[{"path": "tasks", "max_docs": 300}]', "--tokenizer.vocab_size=300",
                f"--cleaning.blocklist.path={REPO / 'configs' / 'prepare' / 'blocklist.txt'}"],
    "pretrain": [*GOLD, "--model.init_args.backbone.n_layer=2", "--model.init_args.backbone.d_model=64",
                 "--data.init_args.block_size=32", "--data.init_args.batch_size=8", "--data.init_args.val_samples=8"],
    "sft": SFT,
    "judge-sft": SFT,
    "reward": ["--model.init_args.stats_prompts=8", "--data.init_args.num_pairs=24", "--data.init_args.num_ranked=8",
               "--data.init_args.num_val_pairs=8", "--data.init_args.num_val_ranked=4",
               "--data.init_args.batch_size=4"],
    "dpo": DPO,
    "dpo-lora": DPO,
    "grpo": [*GOLD, "--model.init_args.rollout.max_new_tokens=6", "--model.init_args.group.size=4",
             "--model.init_args.update.mini_batch_size=8", "--data.init_args.num_prompts=32",
             "--data.init_args.num_val_prompts=4", "--data.init_args.batch_size=4"],
    "judge-reward-edited": ["--model.init_args.stats_prompts=8", "--data.init_args.batch_size=4",
                            "--data.init_args.val_fraction=0.25"],
    "ppo": [*GOLD, "--model.init_args.rollout.max_new_tokens=6", "--model.init_args.update.ppo_epochs=1",
            "--model.init_args.update.mini_batch_size=4", "--data.init_args.num_prompts=32",
            "--data.init_args.num_val_prompts=4", "--data.init_args.batch_size=8"],
}
MICRO["judge-pretrain"] = [*MICRO["pretrain"], "--data.init_args.num_docs=100"]
MICRO["judge-reward"] = MICRO["reward"]
# the micro model answers nothing right, so gold-scored samples would all tie: score with the reward model
JUDGE = ["judge-pretrain", "judge-sft", "judge-reward", "edited-pairs", "judge-reward-edited"]
MICRO_SAMPLES = {"prompts": 8, "n": 2, "max_new_tokens": 4, "batch_size": 16}
TIMING = ("tokens_per_s", "mfu", "timing.", "seconds", "time_")


def micro_recipe(rounds: int = 1) -> dict:
    """configs/pipeline/tiny.yaml with every stage shrunk to seconds (same stages, same wiring), config paths
    absolute so that the tests run from any folder."""
    raw = yaml.safe_load(TINY_RECIPE.read_text())
    raw["overrides"] = MICRO_FIT
    raw.pop("expected")
    for stage in raw["stages"]:
        for spec in (stage, stage.get("sft") or {}, stage.get("dpo") or {}):
            if "config" in spec:
                spec["config"] = str(REPO / spec["config"])
        if stage["name"] in MICRO:
            kept = [o for o in stage.get("overrides", []) if "gold_eval" not in o]
            stage["overrides"] = kept + MICRO[stage["name"]]
        if stage.get("kind") == "rejection-sample":
            stage["args"] = {**stage["args"], **MICRO_SAMPLES}
            stage["reward"] = "reward"
        if stage.get("kind") == "rounds":
            stage["rounds"] = rounds
            stage["reward"] = "reward"  # the micro model answers nothing right: keep nothing-but-correct off
            rejection = {**stage["rejection"], **MICRO_SAMPLES}
            stage["rejection"] = {k: v for k, v in rejection.items() if k != "min_reward"}
            stage["sft"]["overrides"], stage["dpo"]["overrides"] = SFT, DPO
    return raw


def stage_of(raw: dict, name: str) -> dict:
    """The recipe entry of the stage called `name`."""
    return next(stage for stage in raw["stages"] if stage["name"] == name)


def write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def pipeline_args(folder: Path, experiment: str) -> list[str]:
    recipe = write_recipe(folder / "recipe.yaml", micro_recipe())
    return ["pipeline", "--config", str(recipe), "--root", str(folder / "runs"), "--experiment_name", experiment]


def run_micro(tmp_path_factory: pytest.TempPathFactory, experiment: str) -> dict:
    folder = tmp_path_factory.mktemp(experiment)
    args = pipeline_args(folder, experiment)
    main(args)
    return {"args": args, "root": folder / "runs", "experiment": experiment}


@pytest.fixture(scope="module")
def pipeline_a(tmp_path_factory: pytest.TempPathFactory, mlflow_db: str) -> dict:
    return run_micro(tmp_path_factory, "micro-pipeline-a")


@pytest.fixture(scope="module")
def pipeline_b(tmp_path_factory: pytest.TempPathFactory, mlflow_db: str) -> dict:
    return run_micro(tmp_path_factory, "micro-pipeline-b")


def stage_runs(client: MlflowClient, experiment: str) -> dict[str, object]:
    """Stage runs of an experiment by name (the newest of each name), without the pipeline run."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    named: dict[str, object] = {}
    for run in runs:
        if run.data.tags.get("lit_llm.stage") != "pipeline":
            named.setdefault(run.info.run_name, run)
    return named


def pipeline_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`lit_llm.stage` = 'pipeline'")
    return run


# ------------------------------------------------------------------------------------------------ the recipe
def test_dry_run_prints_every_command_wired_by_path_and_runs_nothing(tmp_path: Path, mlflow_db: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", micro_recipe(rounds=2))
    root = tmp_path / "runs"
    main(["pipeline", "--config", str(recipe), "--root", str(root), "--experiment_name", "dry", "--dry_run"])
    out = capsys.readouterr().out
    names = ["prepare", "pretrain", "sft", "reward", *JUDGE, "ppo", "dpo-pairs", "dpo", "dpo-lora", "grpo"] + [
        f"llama3-r{r}-{part}" for r in (1, 2) for part in ("samples", "sft", "dpo")]
    assert [m.group(1) for m in re.finditer(r"^\s*\d+\. (\S+)", out, re.M)] == names
    assert out.count(" run   (") == len(names)
    ckpt = lambda stage: f"{root}/{stage}/checkpoints/last.ckpt"  # noqa: E731
    assert f"--data.init_args.source={root}/prepare" in out
    assert f"--model.init_args.init_from={ckpt('pretrain')} " in out  # sft
    assert f"--data.init_args.tokenizer={ckpt('pretrain')}" in out  # the judge shares the policy's tokenizer
    assert f"--model.init_args.reward_from={ckpt('judge-reward-edited')} " in out  # ppo
    assert f"--data.init_args.source={root}/edited-pairs/edited_pairs.jsonl" in out
    assert f"--data.init_args.source={root}/dpo-pairs/pairs.jsonl" in out
    r1_dpo = f"{root}/llama3/round1/dpo/checkpoints/last.ckpt"
    assert f"--policy={r1_dpo} --reward={ckpt('reward')} --out={root}/llama3/round2/samples" in out
    assert "--seed=1" in out and "--seed=2" in out  # each round draws new prompts
    assert not root.exists() and MlflowClient(mlflow_db).get_experiment_by_name("dry") is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["stages"][2].update(init_frm="pretrain"), "stage 'sft': unknown key 'init_frm'; did you mean "
                                                           "'init_from'?"),
    (lambda r: stage_of(r, "dpo").update(data="{nope}/pairs.jsonl"), "stage 'dpo', data: '{nope}' is not 'root' "
                                                                       "or an earlier stage"),
    (lambda r: stage_of(r, "dpo").update(data="{dpo}/pairs.jsonl"), "'{dpo}' is not 'root' or an earlier stage"),
    (lambda r: r["stages"][2].update(init_from="prepare"), "'prepare' is a prepare stage, not a checkpoint"),
    (lambda r: r["stages"][3].update(name="sft"), "the name 'sft' is used twice"),
    (lambda r: r["stages"][1].update(kind="train"), "kind must be one of prepare, fit, rejection-sample, rounds"),
    (lambda r: stage_of(r, "llama3").pop("sft"), "stage 'llama3': a rounds stage needs 'sft'"),
    (lambda r: r.update(stage=[]), "unknown key 'stage'; did you mean 'stages'?"),
])
def test_recipe_errors_name_the_file_the_stage_and_the_key(tmp_path: Path, change, message: str) -> None:
    raw = micro_recipe()
    change(raw)
    path = write_recipe(tmp_path / "bad.yaml", raw)
    with pytest.raises(PipelineError, match=f"^{path}") as err:
        load_recipe(path)
    assert message in str(err.value)
    with pytest.raises(SystemExit, match="lit-llm pipeline: .*" + message[:20]):
        main(["pipeline", "--config", str(path), "--dry_run"])


def test_a_missing_stage_config_is_named_before_anything_runs(tmp_path: Path) -> None:
    raw = micro_recipe()
    stage_of(raw, "ppo")["config"] = "configs/ppo/missing.yaml"
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", raw), root=str(tmp_path / "runs"))
    ppo = next(stage for stage in recipe.stages if stage.name == "ppo")
    assert "--model.init_args.reward_from=" + str(tmp_path / "runs/judge-reward-edited/checkpoints/last.ckpt") in \
        ppo.argv
    with pytest.raises(PipelineError, match="stage 'ppo': config file not found: configs/ppo/missing.yaml"):
        plan(recipe)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "pipeline").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_names_existing_configs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # recipes name configs relative to the repository root
    recipe = load_recipe(path.relative_to(REPO))
    check_configs(recipe)
    assert recipe.stages and recipe.root.parts[0] == "runs"


# ------------------------------------------------------------------------------------------------ end to end
def test_micro_pipeline_runs_every_stage_nested_with_lineage_and_a_report(pipeline_a: dict, mlflow_db: str) -> None:
    root, client = pipeline_a["root"], MlflowClient(mlflow_db)
    parent = pipeline_run(client, pipeline_a["experiment"])
    assert parent.info.status == "FINISHED" and parent.data.tags["lit_llm.hardware.cpu_cores"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"recipe.yaml", "stages.json", "commands.sh"} <= artifacts
    runs = stage_runs(client, pipeline_a["experiment"])
    names = ["prepare", "pretrain", "sft", "reward", *JUDGE, "ppo", "dpo-pairs", "dpo", "dpo-lora", "grpo",
             "llama3-r1-samples", "llama3-r1-sft", "llama3-r1-dpo"]
    assert sorted(runs) == sorted(names)
    for name, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id, name
        assert run.data.tags["lit_llm.pipeline_stage"] == name
        marker = json.loads((root / ".pipeline" / f"{name}.json").read_text())
        assert marker["run_id"] == run.info.run_id
    rid = {name: run.info.run_id for name, run in runs.items()}
    lineage = {"sft": "pretrain", "reward": "sft", "ppo": "sft", "dpo-pairs": "sft", "dpo": "sft", "dpo-lora": "sft",
               "grpo": "sft", "llama3-r1-samples": "sft",
               "llama3-r1-sft": "sft", "llama3-r1-dpo": "llama3-r1-sft", "judge-sft": "judge-pretrain",
               "judge-reward": "judge-sft", "edited-pairs": "sft", "judge-reward-edited": "judge-reward"}
    for child, parent_stage in lineage.items():
        assert runs[child].data.tags["lit_llm.parent_run_id"] == rid[parent_stage], child
    data = {"pretrain": "prepare", "dpo": "dpo-pairs", "dpo-lora": "dpo-pairs", "judge-reward-edited": "edited-pairs",
            "llama3-r1-sft": "llama3-r1-samples",
            "llama3-r1-dpo": "llama3-r1-samples"}
    for child, data_stage in data.items():
        assert runs[child].data.tags["lit_llm.data_run_id"] == rid[data_stage], child
    assert runs["llama3-r1-dpo"].data.tags["lit_llm.round"] == "1"
    assert runs["pretrain"].data.tags["lit_llm.data_fingerprint"] == runs["prepare"].data.tags[
        "lit_llm.data_fingerprint"]
    assert (root / "llama3" / "round1" / "dpo" / "checkpoints" / "last.ckpt").is_file()

    report = root / "report"
    text = (report / "REPORT.md").read_text()
    for name in names:
        assert f"| {name} |" in text, name
    assert "| pretrain | pretrain | 4 |" in text and "val/gold_accuracy" in text and "rejection/num_pairs" in text
    for png in ("loss_curves.png", "gold_accuracy.png", "reward_vs_kl.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "configs/sft/tiny.yaml --trainer.default_root_dir" in text and "- hardware: " in text
    expected = json.loads((report / "expected.json").read_text())
    assert expected["experiment"] == pipeline_a["experiment"]
    assert expected["stages"]["sft"]["val/loss"]["value"] == pytest.approx(runs["sft"].data.metrics["val/loss"],
                                                                           abs=1e-4)


def test_a_second_run_skips_done_stages_and_a_stopped_stage_runs_again(pipeline_a: dict, mlflow_db: str,
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    root, client = pipeline_a["root"], MlflowClient(mlflow_db)
    before = {n: r.info.run_id for n, r in stage_runs(client, pipeline_a["experiment"]).items()}
    ckpt = root / "sft" / "checkpoints" / "last.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    main([*pipeline_a["args"], "--no_report"])
    out = capsys.readouterr().out
    assert out.count("skip  (done (run") == len(before) and "=== stage" in out and "lit-llm fit" in out
    assert " run   (" not in out and ckpt.stat().st_mtime_ns == mtime
    assert {n: r.info.run_id for n, r in stage_runs(client, pipeline_a["experiment"]).items()} == before

    # stopped during the last stage: last.ckpt may exist, but the marker does not; only that stage runs again
    (root / ".pipeline" / "llama3-r1-dpo.json").unlink()
    main([*pipeline_a["args"], "--no_report"])
    out = capsys.readouterr().out
    assert out.count(" run   (") == 1 and "llama3-r1-dpo        run   (not run yet)" in out
    after = {n: r.info.run_id for n, r in stage_runs(client, pipeline_a["experiment"]).items()}
    assert after["llama3-r1-dpo"] != before["llama3-r1-dpo"]
    assert {n: r for n, r in after.items() if n != "llama3-r1-dpo"} == \
        {n: r for n, r in before.items() if n != "llama3-r1-dpo"}
    local = client.download_artifacts(pipeline_run(client, pipeline_a["experiment"]).info.run_id, "stages.json",
                                      str(tmp_path))
    table = json.loads(Path(local).read_text())
    assert [row["status"] for row in table] == ["reused"] * (len(before) - 1) + ["ran"]

    # a changed override re-runs that stage and those that read it
    raw = yaml.safe_load(Path(pipeline_a["args"][2]).read_text())
    stage_of(raw, "reward")["overrides"].append("--model.init_args.center_coef=0.02")
    recipe = load_recipe(write_recipe(tmp_path / "changed.yaml", raw), root=str(root),
                         experiment_name=pipeline_a["experiment"])
    runs = {stage.name: why for stage, runs, why in plan(recipe) if runs}
    # (the micro recipe scores every rejection-sample stage with the reward model, edited-pairs included)
    assert runs == {"reward": "command, config or inputs changed", "edited-pairs": "input reward runs",
                    "judge-reward-edited": "input edited-pairs runs", "ppo": "input judge-reward-edited runs",
                    "dpo-pairs": "input reward runs",
                    "dpo": "input dpo-pairs runs", "dpo-lora": "input dpo-pairs runs",
                    "llama3-r1-samples": "input reward runs",
                    "llama3-r1-sft": "input llama3-r1-samples runs",
                    "llama3-r1-dpo": "input llama3-r1-sft, llama3-r1-samples runs"}


def histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                    key=lambda m: (m.step, m.timestamp))]
            for key in run.data.metrics if not any(t in key for t in TIMING)}


def test_same_seed_twice_gives_identical_metric_histories(pipeline_a: dict, pipeline_b: dict,
                                                          mlflow_db: str) -> None:
    client = MlflowClient(mlflow_db)
    a, b = stage_runs(client, pipeline_a["experiment"]), stage_runs(client, pipeline_b["experiment"])
    assert sorted(a) == sorted(b)
    for name in a:
        ha, hb = histories(client, a[name]), histories(client, b[name])
        assert ha and ha == hb, name


def test_check_passes_on_a_fresh_run_and_fails_with_a_readable_diff(pipeline_a: dict, pipeline_b: dict,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    reported = pipeline_a["root"] / "report" / "expected.json"
    main(["report", "--check", str(reported), "--experiment", pipeline_b["experiment"]])
    out = capsys.readouterr().out
    assert "values reproduce" in out and "FAIL" not in out

    expected = json.loads(reported.read_text())
    expected["stages"]["sft"]["val/loss"]["value"] += 1.0
    expected["stages"]["ppo-extra"] = {"train/kl": {"value": 0.1, "tolerance": 0.01}}
    off = tmp_path / "expected.json"
    off.write_text(json.dumps(expected))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--check", str(off), "--experiment", pipeline_b["experiment"]])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines()[1:-1]}
    assert "FAIL" in lines["sft val/loss"] and "-1" in lines["sft val/loss"]
    assert "missing" in lines["ppo-extra train/kl"] and "no such stage run" in lines["ppo-extra train/kl"]
    assert out.splitlines()[-1] == f"2 of {len(lines) - 1} values do NOT reproduce"


def test_a_stage_stopped_by_sigterm_resumes_where_it_stopped(tmp_path: Path, mlflow_db: str) -> None:
    """SIGTERM mid-stage (a scheduler's preemption): the pipeline exits 143 with its run KILLED and the stage's
    last.ckpt written; the same command again resumes the stage from there and ends with the weights of a stage
    that was never stopped."""
    raw = micro_recipe()
    raw["stages"] = [stage_of(raw, "pretrain")]
    raw["stages"][0]["data"] = "tasks"
    raw["overrides"] = [*MICRO_FIT, "--trainer.max_steps=6", "--trainer.val_check_interval=6",
                        "--data.init_args.num_docs=200", "--data.init_args.vocab_size=300"]
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)
    signal_at = ["--override=--trainer.callbacks+=tests.faults.SignalAt", "--override=--trainer.callbacks.step=2"]
    args = ["pipeline", "--config", str(recipe), "--root", str(tmp_path / "runs"), "--experiment_name", "stopped",
            "--no_report", *signal_at]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lit_llm", *args], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "stopped during stage 'pretrain'; run the same command again" in proc.stderr
    state = tmp_path / "runs" / ".pipeline"
    assert (state / "pretrain.started.json").is_file() and not (state / "pretrain.json").exists()
    client = MlflowClient(mlflow_db)
    assert pipeline_run(client, "stopped").info.status == "KILLED"
    ckpt = tmp_path / "runs" / "pretrain" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(ckpt)["global_step"] == 3

    main(args)  # the signal fires at step 2 only, which the resumed stage is past
    assert not (state / "pretrain.started.json").exists()
    assert json.loads((state / "pretrain.json").read_text())["resumed_from"] == str(ckpt)
    whole = tmp_path / "whole"
    main(["fit", *load_recipe(recipe, root=str(whole)).stages[0].argv[1:]])
    ours, reference = read_checkpoint(ckpt), read_checkpoint(whole / "pretrain" / "checkpoints" / "last.ckpt")
    assert ours["global_step"] == reference["global_step"] == 6
    assert all(torch.equal(ours["state_dict"][k], v) for k, v in reference["state_dict"].items())
