"""LoRA through peft: adapters start at the base and merge to the same outputs; the adapter-off policy is exactly the
frozen reference (DPO's first loss ln 2, no second copy); a LoRA checkpoint holds only what trains and refuses a
changed base; export merges (transformers, same logits) or writes a peft adapter folder (PeftModel, same logits);
Qwen2 and Llama-3 families; PPO with a LoRA value model."""

import copy
import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import load_backbone, read_checkpoint
from lit_llm.commands import main
from lit_llm.lora import (LoRAConfig, adapter_config_hf, adapter_state_hf, adapters_disabled, apply_lora,
                          is_adapter_key, merge_adapters)
from lit_llm.model import ModelConfig, Transformer
from lit_llm.rollout import load_reward_model
from lit_llm.stages.dpo import DPOModule
from lit_llm.stages.reward import RewardModule
from lit_llm.stages.sft import SFTModule
from tests.hf_fixtures import hf_chat_model
from tests.test_dpo import ckpt, micro_data
from tests.test_ppo import PPO_TINY, micro_ppo_args
from tests.test_reward import REWARD_TINY
from tests.test_sft import SFT_TINY

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def perturb_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every LoRA B a random value (B starts at 0, where the adapted model equals its base)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


# ---------------------------------------------------------------------------------------------- lora.py
def test_config_names_our_modules_and_refuses_what_cannot_work() -> None:
    assert LoRAConfig().targets() == ["wq", "wv"]
    assert LoRAConfig(target_modules="all-linear").targets() == ["wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"]
    with pytest.raises(ValueError, match="q_proj"):
        LoRAConfig(target_modules=["q_proj"]).targets()
    with pytest.raises(ValueError, match="lora.r"):
        LoRAConfig(r=0).peft_config()
    tied = Transformer(ModelConfig(vocab_size=32, d_model=16, n_layer=1, n_head=2, max_seq_len=16))
    with pytest.raises(ValueError, match="ties them"):
        apply_lora(tied, LoRAConfig(modules_to_save=["lm_head"]))


def test_adapters_start_at_the_base_train_alone_and_merge_to_the_same_outputs() -> None:
    torch.manual_seed(0)
    base = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=32))
    base.eval()
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        want = base(x)
    model = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, target_modules="all-linear", modules_to_save=["norm"]))
    assert torch.equal(model(x), want)  # B = 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_key(n) for n in trainable)
    perturb_adapters(model)
    with torch.no_grad():
        adapted = model(x)
        with adapters_disabled(model) as off:
            assert torch.equal(off(x), want)  # exactly the base: no weight was touched
        assert torch.equal(model(x), adapted) and all(model.get_parameter(n).requires_grad for n in trainable)
        merged = merge_adapters(model)
        assert list(merged.state_dict()) == list(base.state_dict())  # plain modules and names again
        torch.testing.assert_close(merged(x), adapted, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- DPO without a copy
def test_lora_dpo_reference_is_the_adapter_off_policy_exactly(tiny_pretrain: Path) -> None:
    full = DPOModule(ckpt(tiny_pretrain), precompute_ref_logprobs=False)
    module = DPOModule(ckpt(tiny_pretrain), lora=LoRAConfig(r=4), precompute_ref_logprobs=False)
    assert module.reference is None  # no second model in memory
    n_adapters = sum(p.numel() for n, p in module.named_parameters() if is_adapter_key(n))
    assert sum(p.numel() for p in module.parameters()) == full.model.num_params() + n_adapters
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == n_adapters
    batch = next(iter(micro_data(module).train_dataloader()))
    assert abs(module.compute(batch)["loss"].item() - math.log(2)) < 1e-6  # policy = reference at the start
    perturb_adapters(module.model)  # now the policy differs from its base
    with torch.no_grad():
        frozen_copy = full.sequence_logprobs(full.reference, batch)
        assert torch.equal(module.reference_logprobs(batch), frozen_copy)
        assert not torch.equal(module.sequence_logprobs(module.model, batch), frozen_copy)
    assert module.model.training and all(p.requires_grad for n, p in module.named_parameters() if is_adapter_key(n))


# ------------------------------------------------------------------------- checkpoint, export, refusals
def micro_sft_args(root: Path, init_from: str, *extra: str) -> list[str]:
    return ["--config", SFT_TINY, f"--model.init_args.init_from={init_from}", "--model.init_args.lora.r=4",
            "--model.init_args.lora.target_modules=all-linear", "--trainer.max_steps=4",
            "--trainer.val_check_interval=4", f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.logger.init_args.experiment_name=tests", "--gold.examples=4", "--gold.max_new_tokens=4",
            "--data.init_args.num_records=64", "--data.init_args.num_val_records=8",
            "--data.init_args.max_length=64", "--data.init_args.batch_size=4", "--model.init_args.optim.lr=1e-2",
            *extra]


def test_lora_sft_checkpoint_holds_adapters_exports_and_refuses_another_base(tiny_pretrain: Path, tmp_path: Path,
                                                                           mlflow_db: str) -> None:
    base = tmp_path / "base.ckpt"
    shutil.copy(ckpt(tiny_pretrain), base)
    root = tmp_path / "sft"
    main(["fit", *micro_sft_args(root, str(base))])
    checkpoint = read_checkpoint(ckpt(root))
    assert checkpoint["state_dict"] and all(is_adapter_key(k) for k in checkpoint["state_dict"])
    lora = checkpoint["lit_llm"]["lora"]
    assert lora["bases"]["model"]["source"] == str(base.resolve()) and lora["config"]["r"] == 4
    run = MlflowClient(mlflow_db).get_run(checkpoint["lit_llm"]["mlflow_run_id"])
    assert 0 < float(run.data.params["model/trainable_share"]) < 0.2

    merged = load_backbone(ckpt(root)).model.eval()  # adapters onto the recorded base, merged
    x = torch.randint(0, merged.config.vocab_size, (2, 12))
    with torch.no_grad():
        ours = merged(x)
        assert not torch.allclose(ours, load_backbone(base).model.eval()(x))  # training moved it
    main(["export", str(base), str(tmp_path / "base_hf")])
    main(["export", ckpt(root), str(tmp_path / "merged_hf")])
    main(["export", ckpt(root), str(tmp_path / "adapter"), "--adapter_only"])
    with torch.no_grad():
        hf_merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged_hf").eval()
        torch.testing.assert_close(hf_merged(x).logits, ours, rtol=1e-5, atol=1e-5)
        hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base_hf").eval()
        with_adapter = peft.PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
        torch.testing.assert_close(with_adapter(x).logits, ours, rtol=1e-5, atol=1e-5)

    state = read_checkpoint(base)  # the base changes after training: its adapters no longer fit it
    state["state_dict"]["model.norm.weight"] += 1.0
    torch.save(state, base)
    with pytest.raises(ValueError, match="not the model the adapters were trained on"):
        load_backbone(ckpt(root))
    with pytest.raises(ValueError, match="differs from this run's"):
        main(["fit", *micro_sft_args(root, str(base), "--trainer.max_steps=6", f"--ckpt_path={ckpt(root)}")])


# ----------------------------------------------------------------------------------------- model families
@pytest.mark.parametrize("style,family", [("chatml", "qwen2"), ("llama3", "llama")])
def test_lora_on_hugging_face_families_matches_peft_on_transformers(style: str, family: str,
                                                                     tmp_path: Path) -> None:
    extra = {"rope_theta": 500000.0} if family == "llama" else {}
    directory = hf_chat_model(style, family, tmp_path / family, **extra)
    module = SFTModule(str(directory), lora=LoRAConfig(r=4, target_modules="all-linear"))
    perturb_adapters(module.model)
    ours = module.model.eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 12))
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    hf = peft.get_peft_model(hf, adapter_config_hf(module.lora, str(directory)))
    state = {k[len("model."):]: v for k, v in module.state_dict().items() if k.startswith("model.")}
    result = peft.set_peft_model_state_dict(hf, {k.replace(".default", ""): v for k, v in
                                                 adapter_state_hf(state).items()})
    assert not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, ours(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------- PPO
def test_lora_ppo_adapts_policy_and_value_and_checkpoints_only_them(tiny_pretrain: Path, reward_ckpt: str,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "ppo"
    main(["fit", *micro_ppo_args(PPO_TINY, root, ckpt(tiny_pretrain), reward_ckpt), "--model.init_args.lora.r=4"])
    checkpoint = read_checkpoint(ckpt(root))
    assert set(checkpoint["lit_llm"]["lora"]["bases"]) == {"model", "value.backbone"}
    frozen = [k for k in checkpoint["state_dict"] if not is_adapter_key(k)]
    assert frozen == ["value.head.weight", "value.head.bias"]  # the value head trains in full
    policy = load_backbone(ckpt(root)).model
    assert policy.num_params() == load_backbone(ckpt(tiny_pretrain)).model.num_params()


# ------------------------------------------------------------------------------------------------ QLoRA
def test_qlora_trains_adapters_on_a_4bit_base_like_lora_on_its_dequantized_weights() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    base = Transformer(ModelConfig(vocab_size=64, d_model=64, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=32))
    config = LoRAConfig(r=4, target_modules="all-linear")
    quantized = apply_lora(copy.deepcopy(base), dataclasses.replace(config, quantize_base=True))
    linears = [(n, m) for n, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7 and all(m.weight.dtype == torch.uint8 for _, m in linears)  # packed NF4
    dequantized = copy.deepcopy(base)  # the same weights as plain float32 layers, to compare gradients with
    with torch.no_grad():
        for name, module in linears:
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            dequantized.get_submodule(name.replace(".base_layer", "")).weight.copy_(weight)
    apply_lora(dequantized, config)
    perturb_adapters(quantized)
    dequantized.load_state_dict({k: v for k, v in quantized.state_dict().items() if is_adapter_key(k)}, strict=False)
    x = torch.randint(0, 64, (4, 24))
    grads = []
    for model in (quantized, dequantized):
        logits = model(x[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(is_adapter_key(n) for n in grads[0])
    for name, grad in grads[1].items():  # bf16 compute against float32: close, not equal
        assert (grads[0][name] - grad).norm() <= 0.02 * grad.norm(), name


# ---------------------------------------------------------------------------------------------- reward
def test_lora_reward_model_keeps_its_head_and_statistics_and_scores_like_the_module(tiny_pretrain: Path,
                                                                                   tmp_path: Path) -> None:
    main(["fit", "--config", REWARD_TINY, f"--model.init_args.init_from={ckpt(tiny_pretrain)}",
          "--model.init_args.lora.r=4", "--model.init_args.optim.lr=1e-2", "--trainer.max_steps=4",
          "--trainer.val_check_interval=4", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--trainer.logger.init_args.experiment_name=tests", "--model.init_args.stats_prompts=8",
          "--data.init_args.num_pairs=24", "--data.init_args.num_ranked=0", "--data.init_args.num_val_pairs=8",
          "--data.init_args.num_val_ranked=0", "--data.init_args.batch_size=4"])
    checkpoint = read_checkpoint(ckpt(tmp_path))
    assert {k for k in checkpoint["state_dict"] if not is_adapter_key(k)} == {"head.weight", "head.bias",
                                                                              "reward_mean", "reward_std"}
    scorer, tokenizer, mean, std = load_reward_model(ckpt(tmp_path))  # merged backbone + the trained head
    stats = checkpoint["lit_llm"]["reward_stats"]
    assert (mean, std) == pytest.approx((stats["mean"], stats["std"]), rel=1e-6)
    module = RewardModule(ckpt(tiny_pretrain), lora=LoRAConfig(r=4))
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    ids = torch.tensor([tokenizer.encode("What is 2 + 3? 5")])
    with torch.no_grad():
        torch.testing.assert_close(scorer.score(ids, torch.ones_like(ids)), module.eval()(ids, torch.ones_like(ids)),
                                   rtol=1e-5, atol=1e-5)
