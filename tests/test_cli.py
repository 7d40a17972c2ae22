"""The `lit-llm` command line: help, unknown commands and keys, and parsing of every shipped config."""

from pathlib import Path

import pytest

from lit_llm.cli import main

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
