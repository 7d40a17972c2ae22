"""Bring your own model: SFT then DPO through `lit-llm fit`, starting from a random tiny Qwen2 (ChatML) and a
Llama-3 (its header/eot template) Hugging Face folder, each with its own tokenizer and chat template; the result
exports back to its family and loads in `transformers` with the same logits."""

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import load_backbone
from lit_llm.commands import main
from lit_llm.data.preference import PreferenceDataModule
from lit_llm.losses import IGNORE_INDEX
from lit_llm.tokenizer import Tokenizer
from tests.conftest import REPO
from tests.hf_fixtures import hf_chat_model

transformers = pytest.importorskip("transformers")

COMMON = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.log_every_n_steps=1",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--trainer.logger.init_args.experiment_name=tests", "--gold.examples=4", "--gold.max_new_tokens=4",
          "--data.init_args.max_length=96", "--data.init_args.batch_size=4"]
MODELS = {"qwen2": ("chatml", "qwen2", "<|im_start|>assistant\n"),
          "llama3": ("llama3", "llama", "<|start_header_id|>assistant<|end_header_id|>\n\n")}


def fit(config: str, root: Path, init_from: Path | str, *extra: str) -> dict:
    main(["fit", "--config", str(REPO / "configs" / config), f"--model.init_args.init_from={init_from}",
          f"--trainer.default_root_dir={root}", *COMMON, *extra])
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_sft_then_dpo_from_a_hugging_face_model_with_its_own_chat_template(tmp_path: Path, mlflow_db: str,
                                                                            name: str) -> None:
    style, family, assistant_header = MODELS[name]
    model_dir = hf_chat_model(style, family, tmp_path / "hf", rope_theta=500000.0)
    sft = fit("sft/tiny.yaml", tmp_path / "sft", model_dir, "--data.init_args.num_records=32",
              "--data.init_args.num_val_records=8", "--data.init_args.packing=false")
    assert sft["lit_llm"]["stage"] == "sft" and sft["global_step"] == 4
    run = MlflowClient(mlflow_db).get_run(sft["lit_llm"]["mlflow_run_id"])
    assert run.data.params["data_stats.chat_template"].startswith("own")
    loaded = load_backbone(tmp_path / "sft" / "checkpoints" / "last.ckpt")
    tok = loaded.tokenizer
    prompt = tok.render_prompt("What is 2 plus 3?")
    assert tok.decode(prompt, skip_special=False).endswith(assistant_header)
    assert set(tok.chat_stop_ids()) >= {tok.eos_id, *map(tok.backend.token_to_id, tok.stop_tokens)}

    dpo = fit("dpo/tiny.yaml", tmp_path / "dpo", tmp_path / "sft" / "checkpoints" / "last.ckpt",
              "--data.init_args.source=tasks", "--data.init_args.num_pairs=16", "--data.init_args.num_val_pairs=4",
              "--model.init_args.rpo_alpha=0", "--model.init_args.precompute_ref_logprobs=false")
    assert dpo["lit_llm"]["stage"] == "dpo" and dpo["global_step"] == 4
    history = MlflowClient(mlflow_db).get_metric_history(dpo["lit_llm"]["mlflow_run_id"], "train/loss")
    assert min(history, key=lambda m: m.step).value == pytest.approx(math.log(2), abs=1e-5)

    main(["export", str(tmp_path / "dpo" / "checkpoints" / "last.ckpt"), str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == family
    ours = load_backbone(tmp_path / "dpo" / "checkpoints" / "last.ckpt").model.eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    x = torch.tensor([prompt])
    with torch.no_grad():
        assert (theirs(x).logits - ours(x)).abs().max().item() <= 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    assert hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        tok.decode(prompt, skip_special=False)


HH = REPO.parent / "shared" / "data" / "hh_rlhf_harmless_base_test_first1200.jsonl"


@pytest.mark.skipif(not HH.is_file(), reason="../shared/data/hh_rlhf_harmless_base_test_first1200.jsonl is absent")
def test_hh_rlhf_transcripts_through_the_reward_and_dpo_paths_with_chatml(tmp_path: Path, mlflow_db: str) -> None:
    model_dir = hf_chat_model("chatml", "qwen2", tmp_path / "hf")
    data = PreferenceDataModule(source=str(HH), format="implicit", max_length=4096, val_fraction=0.05)
    data.tokenizer = Tokenizer.from_file(model_dir)
    data.setup("fit")
    records = [json.loads(line) for line in HH.read_text(encoding="utf-8").splitlines()]
    replies = {r[key].rsplit("\n\nAssistant:", 1)[1].strip() for r in records for key in ("chosen", "rejected")}
    for item in list(data.datasets["train"])[:50]:
        for seq in item.sequences:  # a ChatML conversation whose loss covers exactly the last reply + <|im_end|>
            text = data.tokenizer.decode(seq.input_ids, skip_special=False)
            assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
            response = data.tokenizer.decode([t for t in seq.labels if t != IGNORE_INDEX], skip_special=False)
            assert response.endswith("<|im_end|>") and response.removesuffix("<|im_end|>") in replies
            assert text.endswith("<|im_start|>assistant\n" + response)
    stats = data.stats["train"]
    assert (stats.records, stats.pairs, stats.truncated, stats.dropped_too_long) == (1140, 1140, 0, 0)

    source = ["--data.init_args.source=" + str(HH), "--data.init_args.format=implicit", "--trainer.max_steps=2",
              "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--data.init_args.val_fraction=0.01"]
    reward = fit("reward/tiny.yaml", tmp_path / "reward", model_dir, *source, "--model.init_args.stats_prompts=8")
    dpo = fit("dpo/tiny.yaml", tmp_path / "dpo", model_dir, *source, "--model.init_args.precompute_ref_logprobs=false")
    assert reward["global_step"] == dpo["global_step"] == 2
    client = MlflowClient(mlflow_db)
    for run_id in (reward["lit_llm"]["mlflow_run_id"], dpo["lit_llm"]["mlflow_run_id"]):
        assert client.get_run(run_id).data.params["data_stats.chat_template"].startswith("own")
