"""Backbone tests: shapes, masking (causal, padding, packed documents, bidirectional), RoPE, GQA, KV cache,
scalar head, parameter/FLOP accounting, config validation and activation checkpointing. Tiny CPU models."""

import math

import pytest
import torch

from lit_llm.attention import KVCache, SharedPrefixCache, _doc_positions, build_attention_mask, default_position_ids
from lit_llm.losses import IGNORE_INDEX, token_logprobs
from lit_llm.model import ModelConfig, ScalarHead, Transformer, last_token_index
from lit_llm.rope import RotaryEmbedding, apply_rope

ATOL = 1e-5


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=61, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Larger-than-init random weights (norms included) so that tests are sensitive to every component."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return randomize(Transformer(tiny_config(**kw)), seed)


def ids(*shape, vocab=61, seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_dtype():
    model = tiny_model()
    x = ids(3, 9)
    logits = model(x)
    assert logits.shape == (3, 9, 61) and logits.dtype == torch.float32
    assert model.hidden_states(x).shape == (3, 9, 32)
    assert model.lm_head.weight is model.embed.weight


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny_model()
    x = ids(2, 12)
    y = x.clone()
    y[:, 7:] = ids(2, 5, seed=5)
    torch.testing.assert_close(model(x)[:, :7], model(y)[:, :7], atol=ATOL, rtol=0)
    assert not torch.allclose(model(x)[:, 7:], model(y)[:, 7:])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("causal", [True, False])
def test_padding_invariance(side, causal):
    model = tiny_model()
    seq, n_pad = ids(1, 7), 4
    pad = ids(1, n_pad, seed=9)  # pad ids are arbitrary: the mask must hide them
    ones, zeros = torch.ones(1, 7, dtype=torch.long), torch.zeros(1, n_pad, dtype=torch.long)
    if side == "left":
        x, mask, real = torch.cat([pad, seq], 1), torch.cat([zeros, ones], 1), slice(n_pad, None)
    else:
        x, mask, real = torch.cat([seq, pad], 1), torch.cat([ones, zeros], 1), slice(0, 7)
    batch = torch.cat([x, ids(1, 11, seed=3)])  # second, unpadded row
    batch_mask = torch.cat([mask, torch.ones(1, 11, dtype=torch.long)])
    out = model(batch, attention_mask=batch_mask, causal=causal)
    assert torch.isfinite(out).all()  # pad queries must not produce NaN
    torch.testing.assert_close(out[0, real], model(seq, causal=causal)[0], atol=ATOL, rtol=0)


def test_right_padding_takes_the_causal_fast_path_with_the_same_outputs():
    model = tiny_model()
    x = ids(3, 9)
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7])
    assert model._mask(9, 0, mask, None, True, x.device) == (None, True)
    explicit = build_attention_mask(9, 0, mask, None, True, x.device)
    with torch.no_grad():
        fast = model(x, attention_mask=mask)
        h = model.embed(x)
        rope = model.rope(default_position_ids(3, 9, 0, mask, None, x.device))
        for i, block in enumerate(model.blocks):
            h = block(h, rope, explicit, False, i)
        masked = model.lm_head(model.norm(h))
    real = mask.bool()
    torch.testing.assert_close(fast[real], masked[real], atol=ATOL, rtol=0)
    left = mask.flip(-1)  # left padding keeps the explicit mask
    assert model._mask(9, 0, left, None, True, x.device)[0] is not None


def test_packed_documents_are_isolated():
    model = tiny_model()
    a, b, c = ids(1, 5, seed=1), ids(1, 7, seed=2), ids(1, 3, seed=3)
    packed = torch.cat([a, b, c], 1)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7 + [2] * 3])
    out = model(packed, doc_ids=doc_ids)
    torch.testing.assert_close(out[:, :5], model(a), atol=ATOL, rtol=0)
    torch.testing.assert_close(out[:, 5:12], model(b), atol=ATOL, rtol=0)
    torch.testing.assert_close(out[:, 12:], model(c), atol=ATOL, rtol=0)


def test_an_explicit_mask_is_used_as_given_with_its_positions():
    """hidden_states(attn_mask=...) attends as the mask says (here: the documents' own block-diagonal mask, so the
    outputs equal doc_ids'); it needs position_ids and no KV cache."""
    model = tiny_model()
    doc_ids = torch.tensor([[0] * 5 + [1] * 7])
    x, positions = ids(1, 12), _doc_positions(doc_ids)
    mask = build_attention_mask(12, 0, None, doc_ids, True, x.device)
    torch.testing.assert_close(model.hidden_states(x, position_ids=positions, attn_mask=mask),
                               model.hidden_states(x, doc_ids=doc_ids), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="position_ids"):
        model.hidden_states(x, attn_mask=mask)


@pytest.mark.parametrize("layout", ["right", "left", "bidirectional", "explicit mask", "kv cache", "checkpointed"])
def test_skip_padding_gives_the_same_hidden_states_and_gradients(layout):
    """skip_padding runs the position-wise work on the real tokens only (attention.Unpadded): the real positions'
    hidden states and every gradient are those of the padded forward (to rounding), the padding's states are 0."""
    model = tiny_model(qk_norm=True).train()
    x = ids(3, 10)
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7])
    kw: dict = {"causal": layout != "bidirectional"}
    if layout in ("left", "kv cache"):
        mask = mask.flip(-1)
    if layout == "explicit mask":  # two documents per row, the second one's tail padded
        doc_ids = torch.tensor([[0] * 4 + [1] * 6] * 3)
        kw = {"attn_mask": build_attention_mask(10, 0, mask, doc_ids, True, x.device),
              "position_ids": _doc_positions(doc_ids)}
    model.activation_checkpointing = layout == "checkpointed"

    def run(skip: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        if layout == "kv cache":  # a left-padded prompt, then 4 more tokens on its cached keys/values
            cache = SharedPrefixCache(torch.arange(3))  # the cache gradients flow through
            model.hidden_states(x[:, :6], mask[:, :6], kv_cache=cache, skip_padding=skip)
            hidden = model.hidden_states(x[:, 6:], mask, kv_cache=cache, skip_padding=skip)
            real = mask[:, 6:].bool()
        else:
            hidden, real = model.hidden_states(x, mask, skip_padding=skip, **kw), mask.bool()
        (hidden[real] ** 2).sum().backward()
        if skip:
            assert hidden[~real].abs().max() == 0
        return hidden[real].detach(), [p.grad.clone() for p in model.parameters()]

    (padded, grads), (skipped, skipped_grads) = run(False), run(True)
    torch.testing.assert_close(skipped, padded, atol=ATOL, rtol=0)
    for g_skip, g_ref in zip(skipped_grads, grads):  # float32 rounding at the scale of each gradient (up to ~90
        # here: the loss sums squared states), which differs by CPU (5e-5 at most on an AMD EPYC, 6e-7 relative)
        torch.testing.assert_close(g_skip, g_ref, atol=1e-5 * float(g_ref.abs().max()), rtol=1e-5)
    with pytest.raises(ValueError, match="skip_padding needs the attention_mask"):
        model.hidden_states(x, skip_padding=True)


def test_doc_positions_restart_per_document():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert _doc_positions(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_rope_dot_product_depends_only_on_offset():
    rope = RotaryEmbedding(tiny_config(d_model=64, n_head=4))  # head_dim 16
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def rotated_dot(m: int, n: int) -> torch.Tensor:
        cos_m, sin_m = rope(torch.tensor([[m]]))
        cos_n, sin_n = rope(torch.tensor([[n]]))
        return (apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum()

    torch.testing.assert_close(rotated_dot(3, 1), rotated_dot(40, 38), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rotated_dot(0, 0), (q * k).sum(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rotated_dot(3, 1), rotated_dot(3, 2))


def test_rope_linear_scaling_divides_positions():
    plain = RotaryEmbedding(tiny_config())
    linear = RotaryEmbedding(tiny_config(rope_scaling={"rope_type": "linear", "factor": 4.0}))
    torch.testing.assert_close(linear(torch.tensor([[8]]))[0], plain(torch.tensor([[2]]))[0])


def test_rope_dynamic_scaling_only_beyond_max_seq_len():
    plain = tiny_model(max_seq_len=16)
    dynamic = tiny_model(max_seq_len=16, rope_scaling={"type": "dynamic", "factor": 2.0})
    torch.testing.assert_close(plain(ids(1, 16)), dynamic(ids(1, 16)))
    assert not torch.allclose(plain(ids(1, 24)), dynamic(ids(1, 24)))


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = tiny_model(n_head=4, n_kv_head=2)
    mha = Transformer(tiny_config(n_head=4, n_kv_head=None)).eval()
    state = gqa.state_dict()
    head_dim, repeat = 8, 2
    for name, w in list(state.items()):
        if name.endswith(("attn.wk.weight", "attn.wv.weight")):  # (n_kv * hd, d) -> (n_head * hd, d)
            state[name] = w.view(2, head_dim, -1).repeat_interleave(repeat, dim=0).reshape(4 * head_dim, -1)
    mha.load_state_dict(state)
    x = ids(2, 10)
    torch.testing.assert_close(mha(x), gqa(x), atol=ATOL, rtol=0)


def test_bidirectional_mode_sees_the_future():
    model = tiny_model()
    x = ids(1, 8)
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 61
    assert not torch.allclose(model(x, causal=False)[:, 0], model(y, causal=False)[:, 0])
    torch.testing.assert_close(model(x)[:, 0], model(y)[:, 0])


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [4, 2, 4, 1]


def test_scalar_head_score_selects_index_and_is_padding_invariant():
    torch.manual_seed(0)
    rm = randomize(ScalarHead(Transformer(tiny_config())))
    seq = ids(1, 6)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], 1)
    right = torch.cat([seq, torch.zeros(1, 3, dtype=torch.long)], 1)
    left_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    right_mask = left_mask.flip(-1)
    values = rm(left, left_mask)
    assert values.shape == (1, 9) and values.dtype == torch.float32
    torch.testing.assert_close(rm.score(left, left_mask, index=torch.tensor([5])), values[:, 5])
    expected = rm(seq)[:, -1]
    torch.testing.assert_close(rm.score(left, left_mask), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(rm.score(right, right_mask), expected, atol=ATOL, rtol=0)


def test_scalar_head_starts_at_zero():
    rm = ScalarHead(Transformer(tiny_config()))
    assert rm(ids(2, 5)).abs().max() == 0


@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_forward_equals_full_forward(padded):
    # float64: the two paths differ only by rounding; in float32 that reaches 1.1e-5 on some CPUs (an AMD EPYC's
    # matmul kernels for one-token rows), each path ~7e-6 from the float64 logits, so the check would measure
    # the CPU rather than the cache
    model = tiny_model().double()
    x = ids(2, 12)
    mask = torch.ones_like(x)
    if padded:
        mask[0, :3] = 0  # left padding in row 0
    full = model(x, attention_mask=mask if padded else None)
    cache = KVCache(model.config, 2, 12, device="cpu", dtype=torch.float64)
    chunks = [(0, 6), (6, 7), (7, 8), (8, 12)]  # prompt, single tokens, then a multi-token chunk
    outs = []
    for start, end in chunks:
        outs.append(model(x[:, start:end], attention_mask=mask[:, :end] if padded else None, kv_cache=cache))
    assert cache.length == 12
    real = mask.bool()
    torch.testing.assert_close(torch.cat(outs, 1)[real], full[real], atol=1e-12, rtol=0)


def test_kv_cache_overflow_is_an_error():
    model = tiny_model()
    cache = KVCache(model.config, 1, 4, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="overflow"):
        model(ids(1, 5), kv_cache=cache)


def test_num_params_and_flops():
    c = tiny_config(d_ff=50)
    d, kv_dim, L = c.d_model, c.kv_heads * c.head_dim, c.n_layer
    per_layer = 2 * d * d + 2 * d * kv_dim + 3 * d * 50 + 2 * d
    non_embedding = L * per_layer + d
    tied = Transformer(c)
    assert tied.num_params(exclude_embeddings=True) == non_embedding
    assert tied.num_params() == non_embedding + c.vocab_size * d
    untied = Transformer(tiny_config(d_ff=50, tie_embeddings=False))
    assert untied.num_params() == tied.num_params() + c.vocab_size * d
    assert untied.num_params(exclude_embeddings=True) == non_embedding
    expected = 6 * (non_embedding + d * c.vocab_size) + 12 * L * d * 100
    assert tied.flops_per_token(100) == expected
    assert tied.flops_per_token() == tied.flops_per_token(c.max_seq_len)


def test_init_weights_statistics():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, n_layer=8, d_model=256, n_head=4))
    assert abs(model.embed.weight.std().item() - 0.02) < 2e-3
    assert abs(model.blocks[0].attn.wo.weight.std().item() - 0.02 / math.sqrt(16)) < 5e-4
    assert torch.all(model.norm.weight == 1)


def test_config_defaults_and_roundtrip():
    c = ModelConfig(d_model=128, rope_scaling={"rope_type": "linear", "factor": 2})
    assert c.ff_dim == 384 and c.kv_heads == c.n_head and c.head_dim == 32
    assert c.rope_scaling == {"type": "linear", "factor": 2.0}
    assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_head=4, n_kv_head=3), "n_kv_head"),
        (dict(d_model=30, n_head=4), "divisible by n_head"),
        (dict(d_model=12, n_head=4), "even"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(rope_scaling={"type": "yarn", "factor": 2.0}), "rope_scaling type"),
        (dict(rope_scaling={"type": "linear"}), "factor"),
        (dict(rope_scaling={"type": "linear", "factor": 2.0, "low_freq_factor": 1}), "unsupported keys"),
    ],
)
def test_config_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"n_layers": 2})


def test_activation_checkpointing_same_loss_and_grads(monkeypatch):
    import lit_llm.model as model_module

    calls = []
    real_checkpoint = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    model = tiny_model().train()
    x = ids(2, 10)

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_ref, grads_ref = loss_and_grads()
    model.activation_checkpointing = True
    loss_ckpt, grads_ckpt = loss_and_grads()
    assert len(calls) == model.config.n_layer  # the blocks really ran under checkpoint
    torch.testing.assert_close(loss_ckpt, loss_ref)
    for g_ckpt, g_ref in zip(grads_ckpt, grads_ref):
        torch.testing.assert_close(g_ckpt, g_ref)


def test_target_logprobs_equal_the_full_log_softmax_on_target_positions_only():
    model = tiny_model()
    x, mask = ids(3, 9), torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5])
    targets = ids(3, 9, seed=4).masked_fill(mask == 0, IGNORE_INDEX)
    targets[:, :2] = IGNORE_INDEX  # a prompt
    full = token_logprobs(model(x, attention_mask=mask), targets)
    hidden = model.hidden_states(x, attention_mask=mask)
    for chunk_rows in (4096, 5):  # one chunk, and several
        torch.testing.assert_close(model.target_logprobs(hidden, targets, chunk_rows), full, atol=ATOL, rtol=0)
    logits, kept = model.target_logits(hidden, targets)
    assert logits.shape == (int((targets != IGNORE_INDEX).sum()), model.config.vocab_size)
    assert kept.tolist() == targets[targets != IGNORE_INDEX].tolist()
    model.target_logprobs(hidden, targets).sum().backward()  # gradients flow through the scatter
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
