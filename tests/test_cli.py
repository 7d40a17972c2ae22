"""The `lit-llm` command line: help, unknown commands and keys, and parsing of every shipped config."""

import re
from pathlib import Path

import pytest

from lit_llm.commands import main
from tests.conftest import micro_pretrain_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
STAGE_CONFIGS = [c for c in CONFIGS if c.parent.name not in ("strategy", "pipeline", "prepare", "llama3")]


def test_overview_lists_commands(capsys: pytest.CaptureFixture) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "generate", "export"):
        assert f"  {command} " in out


def test_unknown_command_names_the_nearest(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match="Did you mean 'generate'"):
        main(["genrate"])


def test_fit_help_shows_parameter_docstrings(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", "lit_llm.PretrainLM", "--model.help", "lit_llm.PretrainLM"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the help's line wrapping
    assert "masked LM, bidirectional" in out  # the `objective` docstring
    assert "Recompute each block" in out  # activation_checkpointing


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("--model.init_args.backbone.n_layers=2", "did you mean 'n_layer'"),
        ("--data.init_args.batchsize=2", "did you mean 'batch_size'"),
        ("--trainer.max_stepz=2", "did you mean 'trainer.max_steps'"),
    ],
)
def test_unknown_config_key_names_the_nearest(override: str, hint: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/pretrain/tiny.yaml"), override, "--print_config"])
    assert hint in capsys.readouterr().err


def test_unknown_key_in_a_yaml_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: lit_llm.PretrainLM\n  init_args:\n    objectve: causal\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/pretrain/tiny.yaml"), "--config", str(bad), "--print_config"])
    assert "unknown key 'objectve' of lit_llm.PretrainLM; did you mean 'objective'" in capsys.readouterr().err


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_stage_config_parses(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: lit_llm." in printed


@pytest.mark.parametrize("name", ["sft/qwen2.5-0.5b.yaml", "sft/llama-3.2-1b.yaml", "dpo/qwen2.5-0.5b-hh.yaml"])
def test_the_own_model_recipes_start_from_a_hub_id_in_bf16_with_the_model_template(
        name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs" / name), "--print_config"])
    printed = capsys.readouterr().out
    for line in ("precision: bf16-mixed", "devices: 1", "init_from: hf:", "chat_template: own"):
        assert line in printed, line


@pytest.mark.parametrize(("argv", "hint"), [
    (["fit", "--config", str(REPO / "configs/pretrain/tiny.yaml"), "--trainer.max_step=3", "--print_config"],
     "lit-llm fit: error: unknown key 'trainer.max_step'; did you mean 'trainer.max_steps'?"),
    (["fit", "--config", str(REPO / "configs/pretrain/tiny.yaml"), "--model.init_args.config.n_layers=2",
      "--print_config"],
     "lit-llm fit: error: unknown key 'config.n_layers' of lit_llm.PretrainLM; did you mean 'backbone.n_layer'?"),
    (["prepare", "--config", str(REPO / "configs/prepare/tiny.yaml"), "--tokenizer.vocab=300"],
     "lit-llm prepare: error: unknown key 'tokenizer.vocab'; did you mean 'tokenizer.vocab_size'?"),
])
def test_a_misspelt_or_abbreviated_key_is_one_line_with_the_nearest_key(argv: list[str], hint: str,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """No prefix abbreviation is taken for a key; the error is the hint, once, without the usage."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == hint and err.count("unknown key") == 1
    assert "usage:" not in err and "--help lists every option" in err


@pytest.mark.parametrize("argv", [
    ["generate", "x.ckpt", "--prompt", "hi", "--max_new=3"],
    ["rejection-sample", "--policy=x", "--reward=gold", "--prompts=2", "--out=o", "--temp=0.5"],
    ["pipeline", "--config=x.yaml", "--dry"],
    ["report", "--experi=x"],
    ["bench", "--qui"],
], ids=lambda argv: argv[0])
def test_other_commands_refuse_abbreviated_options(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {argv[-1]}" in capsys.readouterr().err  # not taken as a longer option


def test_progress_lines_go_to_stdout_and_the_log_without_a_terminal(tmp_path: Path, token_cache: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    main(["fit", *micro_pretrain_args(tmp_path, token_cache, steps=8), "--trainer.enable_progress_bar=true"])
    out = capsys.readouterr().out  # captured: not a terminal
    log = (tmp_path / "progress.log").read_text()
    for text in (out, log):
        assert "pretrain: training to step 8" in text and re.search(r"step 8/8 \(100%\) \| loss \d", text)
        assert "validation at step 4:" in text and "done: step 8 after" in text
    assert "Epoch 0/" not in out
