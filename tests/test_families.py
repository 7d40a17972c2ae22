"""Every model family against `transformers` with the same weights, offline: a random tiny checkpoint built from a
config (norm gains and biases perturbed so that a mapping bug shows), imported; logits within 1e-5 in float32,
identical greedy tokens with the KV cache (left-padded batch); exported back, transformers loads it with the
same logits. Also: dtypes kept on import, sharded safetensors in and out."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lit_llm.generation import generate  # noqa: E402
from lit_llm.hf import export_hf, load_hf  # noqa: E402
from tests.test_hf import randomize  # noqa: E402  (norm gains around 1, biases and matrices around 0)

VOCAB = 97
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
FAMILIES = {  # name -> (config class, model class, config changes)
    "llama2": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=10000.0)),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
                                                       num_attention_heads=8)),  # GQA 4:1
    "smollm": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True, num_key_value_heads=1)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1000000.0, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24, rope_theta=1000000.0)),  # head_dim != 64 / 4
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=6)),
}


def build(family: str, directory, dtype: torch.dtype = torch.float32):
    config_class, model_class, changes = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**SIZES, **changes})
    torch.manual_seed(0)
    model = randomize(getattr(transformers, model_class)(config))
    model.to(dtype).save_pretrained(directory)
    return model.float()


def hf_logits(model, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(x, attention_mask=mask).logits


def left_padded(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), width), generator=g)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    return ids * mask, mask


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_gives_transformers_logits_and_greedy_tokens(tmp_path, family):
    theirs = build(family, tmp_path)
    ours, _ = load_hf(tmp_path)
    x = torch.randint(0, VOCAB, (2, 20))  # 20 > the llama3 original context and the mistral window
    with torch.no_grad():
        assert (ours(x) - hf_logits(theirs, x)).abs().max().item() <= 1e-5
    ids, mask = left_padded([5, 9])
    with torch.no_grad():
        assert (ours(ids, mask)[mask.bool()] - hf_logits(theirs, ids, mask)[mask.bool()]).abs().max().item() <= 1e-5
    out = generate(ours, ids, mask, max_new_tokens=12, temperature=0.0)
    expected = theirs.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, min_new_tokens=12,
                               pad_token_id=0, eos_token_id=None)
    assert torch.equal(out.response, expected[:, ids.shape[1]:])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, family):
    build(family, tmp_path / "in")
    ours, _ = load_hf(tmp_path / "in")
    export_hf(ours, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    expected_type = {"llama2": "llama", "llama3": "llama", "smollm": "llama"}.get(family, family)
    assert config["model_type"] == expected_type
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    x = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        assert (back(x).logits - ours(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_keep_their_dtype(tmp_path, dtype):
    build("qwen2", tmp_path, dtype)
    # loaded afresh: a model cast down and back in place keeps a rounded RoPE buffer
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ours, _ = load_hf(tmp_path)
    assert {p.dtype for p in ours.parameters()} == {dtype}
    as_float, _ = load_hf(tmp_path, dtype="float32")
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}
    x = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():  # the same rounded weights: float32 logits agree with transformers' float32 copy
        assert (as_float(x) - hf_logits(theirs, x)).abs().max().item() <= 1e-5
    export_hf(ours, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == str(dtype).removeprefix("torch.")


def test_sharded_safetensors_in_and_out(tmp_path):
    build("llama3", tmp_path / "one")
    ours, _ = load_hf(tmp_path / "one")
    export_hf(ours, None, tmp_path / "sharded", max_shard_size=40_000)
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    again, _ = load_hf(tmp_path / "sharded")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", dtype=torch.float32).eval()
    x = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))
        assert (back(x).logits - ours(x)).abs().max().item() <= 1e-5
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "one")
    theirs.save_pretrained(tmp_path / "theirs", max_shard_size="40KB")  # transformers' own shards read too
    assert (tmp_path / "theirs" / "model.safetensors.index.json").exists()
    loaded, _ = load_hf(tmp_path / "theirs")
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))


def test_pickle_weights_are_still_refused(tmp_path):
    build("qwen2", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ValueError, match="pickle"):
        load_hf(tmp_path)
