"""Hugging Face interop tests: export -> transformers LlamaForCausalLM gives our logits; transformers-saved Llama ->
load_hf gives theirs; unsupported configs are refused with a clear message. transformers is a test-only dependency."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lit_llm.hf import config_from_hf, config_to_hf, export_hf, load_hf  # noqa: E402
from lit_llm.model import ModelConfig, Transformer  # noqa: E402

VOCAB = 67


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, norms included (all-ones norms would hide a norm-mapping bug)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=32, rope_base=5000.0)
    base.update(kw)
    return ModelConfig(**base)


def hf_logits(directory, x: torch.Tensor) -> torch.Tensor:
    hf = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(x).logits


CASES = {
    "gqa_tied": dict(),
    "mha_untied_odd_dff": dict(n_kv_head=None, tie_embeddings=False, d_ff=100),
    "rope_linear": dict(rope_scaling={"type": "linear", "factor": 2.0}),
    "rope_dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 3.0}, max_seq_len=16),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_loads_in_transformers_with_same_logits(tmp_path, case):
    torch.manual_seed(0)
    model = randomize(Transformer(tiny_config(**CASES[case])))
    export_hf(model, None, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= files
    x = torch.randint(0, VOCAB, (2, 24))  # 24 > max_seq_len=16 exercises dynamic NTK scaling
    with torch.no_grad():
        ours = model(x)
    torch.testing.assert_close(hf_logits(tmp_path, x), ours, atol=1e-4, rtol=0)


def test_export_writes_tied_weights_once(tmp_path):
    from safetensors import safe_open

    export_hf(Transformer(tiny_config()), None, tmp_path / "tied")
    export_hf(Transformer(tiny_config(tie_embeddings=False)), None, tmp_path / "untied")
    with safe_open(tmp_path / "tied" / "model.safetensors", "pt") as f:
        tied_keys = set(f.keys())
    with safe_open(tmp_path / "untied" / "model.safetensors", "pt") as f:
        untied_keys = set(f.keys())
    assert "lm_head.weight" not in tied_keys and untied_keys - tied_keys == {"lm_head.weight"}
    assert "model.layers.1.mlp.down_proj.weight" in tied_keys and len(tied_keys) == 2 + 2 * 9
    cfg = json.loads((tmp_path / "tied" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    assert cfg["head_dim"] == 8 and cfg["hidden_act"] == "silu" and cfg["torch_dtype"] == "float32"


@pytest.mark.parametrize("tied", [True, False])
def test_import_transformers_llama_gives_same_logits(tmp_path, tied):
    hf_config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=20000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = randomize(transformers.LlamaForCausalLM(hf_config))
    hf.save_pretrained(tmp_path)  # safetensors by default
    model, tokenizer = load_hf(tmp_path)
    assert tokenizer is None and model.config.tie_embeddings == tied and model.config.kv_heads == 2
    x = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)


def test_config_roundtrip():
    config = tiny_config(d_ff=100, tie_embeddings=False, rope_scaling={"type": "linear", "factor": 4.0})
    assert config_from_hf(config_to_hf(config)) == config


def base_hf_config(**changes) -> dict:
    cfg = config_to_hf(tiny_config())
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(model_type="gemma"), "model_type 'gemma'"),
        (dict(architectures=["MistralForCausalLM"]), "architectures"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(mlp_bias=True), "mlp_bias"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
        (dict(num_local_experts=8), "num_local_experts=8: mixture of experts"),
        (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
        (dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=True), "use_sliding_window"),
        (dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], attention_bias=True), "attention_bias"),
        (dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], layer_types=["full_attention", "sliding_attention"]),
         "layer_types with \\['sliding_attention'\\]"),
        (dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"], attn_logit_softcapping=50.0), "gemma2"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "'llama3' needs numbers for"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 8.0}), "rope_scaling type 'yarn'"),
    ],
)
def test_import_refuses_unsupported_configs(changes, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf(base_hf_config(**changes))


def test_load_refuses_pickle_checkpoints(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(base_hf_config()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="pickle"):
        load_hf(tmp_path)


def test_export_then_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = randomize(Transformer(tiny_config(tie_embeddings=False)))
    export_hf(model, None, tmp_path)
    loaded, _ = load_hf(tmp_path)
    x = torch.randint(0, VOCAB, (1, 10))
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["byte_level", "trained"])
def test_tokenizer_export_matches_transformers_autotokenizer(tmp_path, kind):
    tok_module = pytest.importorskip("lit_llm.tokenizer")
    if kind == "byte_level":
        tokenizer = tok_module.Tokenizer.byte_level()
    else:
        texts = ["the quick brown fox jumps over the lazy dog", "hello world, hello tokenizer", "a b c the fox"]
        tokenizer = tok_module.Tokenizer.train(texts * 5, vocab_size=300)
    export_hf(Transformer(tiny_config(vocab_size=tokenizer.vocab_size)), tokenizer, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["eos_token_id"] == tokenizer.eos_id and cfg["bos_token_id"] == tokenizer.bos_id
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "the lazy fox says héllo"
    assert hf_tok.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    _, loaded_tok = load_hf(tmp_path)
    assert loaded_tok is not None and loaded_tok.encode(text) == tokenizer.encode(text)


# ------------------------------------------------------------------------------------ exports users load
@pytest.fixture
def exported(tiny_pretrain, tmp_path):
    """The micro pretraining checkpoint exported as a Hugging Face directory, with what it was exported from."""
    from lit_llm.checkpoint import load_backbone

    loaded = load_backbone(tiny_pretrain / "checkpoints" / "last.ckpt")
    return export_hf(loaded.model, loaded.tokenizer, tmp_path / "hf"), loaded


def test_a_stage_started_from_a_hugging_face_directory_trains_in_train_mode(exported):
    from lit_llm.stages.dpo import DPOModule
    from lit_llm.stages.sft import SFTModule

    directory, _ = exported
    sft = SFTModule(str(directory))
    assert all(m.training for m in sft.model.modules())  # dropout on, as with one of our checkpoints
    dpo = DPOModule(str(directory))
    assert all(m.training for m in dpo.model.modules()) and not dpo.reference.training


def test_transformers_tokenizer_of_an_export_gives_our_ids_bos_included(exported):
    directory, loaded = exported
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    for text in ("Q: What is 12 plus 7?\nA:", "hello  world\n", ""):
        assert theirs(text)["input_ids"] == loaded.tokenizer.encode(text, bos=True)
    chat = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"}]
    rendered = theirs.apply_chat_template(chat, tokenize=True)
    assert list(getattr(rendered, "input_ids", rendered)) == loaded.tokenizer.render_chat(chat)[0]


def test_every_exported_file_has_the_same_permissions(exported):
    directory, _ = exported
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert len(set(modes.values())) == 1, modes
