"""Generation tests: cached == uncached greedy, eos handling, logprobs, seeding, top-k / top-p. Tiny CPU models."""

import pytest
import torch

from lit_llm.generation import filter_logits, generate, left_pad
from lit_llm.model import ModelConfig, Transformer

VOCAB = 53


def tiny_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64, **kw)
    model = Transformer(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger-than-init weights so greedy outputs are varied, not a repeated token
        for p in model.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g) + (1.0 if p.dim() == 1 else 0.0))
    return model


PROMPTS = [[5, 9, 2], [7, 1, 4, 4, 8, 30, 11], [12], [3, 3, 40, 22, 17]]


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    return left_pad(PROMPTS, pad_id=0)


def test_left_pad():
    ids, mask = left_pad([[1, 2], [3, 4, 5], []], pad_id=9)
    assert ids.tolist() == [[9, 1, 2], [3, 4, 5], [9, 9, 9]]
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 0]]


def test_greedy_cached_equals_uncached_left_padded():
    model = tiny_model()
    ids, mask = prompts()
    cached = generate(model, ids, mask, max_new_tokens=16, temperature=0)
    uncached = generate(model, ids, mask, max_new_tokens=16, temperature=0, use_cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    torch.testing.assert_close(cached.logprobs, uncached.logprobs, atol=1e-5, rtol=0)
    assert cached.response.shape == (4, 16) and cached.tokens.shape == (4, ids.shape[1] + 16)
    assert len({tuple(r) for r in cached.response.tolist()}) > 1  # rows really differ
    assert torch.equal(cached.tokens[:, : ids.shape[1]], ids)


def test_greedy_matches_unpadded_single_prompt_generation():
    model = tiny_model()
    ids, mask = prompts()
    batched = generate(model, ids, mask, max_new_tokens=8, temperature=0)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), torch.ones(1, len(prompt)), max_new_tokens=8, temperature=0)
        assert torch.equal(batched.response[row], alone.response[0])


def test_eos_stops_each_row_and_masks():
    model = tiny_model()
    ids, mask = prompts()
    free = generate(model, ids, mask, max_new_tokens=12, temperature=0)
    # eos := the token found in most rows, so rows stop at different steps (or never)
    eos = max(range(VOCAB), key=lambda t: (free.response == t).any(1).sum().item())
    first = [(r == eos).nonzero()[0].item() if (r == eos).any() else None for r in free.response]
    assert sum(s is not None for s in first) >= 2 and len(set(first)) >= 2
    out = generate(model, ids, mask, max_new_tokens=12, temperature=0, eos_id=eos, pad_id=0)
    for row, stop in enumerate(first):
        n_valid = out.response.shape[1] if stop is None else stop + 1
        assert out.response_mask[row, :n_valid].all() and not out.response_mask[row, n_valid:].any()
        assert torch.equal(out.response[row, :n_valid], free.response[row, :n_valid])
        assert (out.response[row, n_valid:] == 0).all() and (out.logprobs[row, n_valid:] == 0).all()
    assert torch.equal(out.attention_mask, torch.cat([mask, out.response_mask.long()], 1))


def test_stops_early_when_all_rows_done_and_accepts_several_eos_ids():
    model = tiny_model()
    ids, mask = prompts()
    free = generate(model, ids, mask, max_new_tokens=4, temperature=0)
    out = generate(model, ids, mask, max_new_tokens=50, temperature=0, eos_id=free.response[:, 0].tolist())
    assert out.response.shape == (4, 1) and out.response_mask.all()


@pytest.mark.parametrize("use_cache", [True, False])
def test_logprobs_equal_full_forward_log_softmax(use_cache):
    model = tiny_model()
    ids, mask = prompts()
    g = torch.Generator().manual_seed(0)
    out = generate(model, ids, mask, 10, temperature=0.7, top_k=20, eos_id=3, generator=g, use_cache=use_cache)
    T0 = ids.shape[1]
    logits = model(out.tokens, attention_mask=out.attention_mask)[:, T0 - 1 : -1]  # predicts the response
    expected = (logits / 0.7).log_softmax(-1).gather(-1, out.response[..., None]).squeeze(-1)
    expected = expected * out.response_mask
    torch.testing.assert_close(out.logprobs, expected, atol=1e-5, rtol=0)


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    ids, mask = prompts()

    def sample(seed: int) -> torch.Tensor:
        return generate(model, ids, mask, 12, temperature=1.5, generator=torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_top_k_one_equals_greedy():
    model = tiny_model()
    ids, mask = prompts()
    greedy = generate(model, ids, mask, 10, temperature=0)
    top1 = generate(model, ids, mask, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy.tokens, top1.tokens)


def test_top_p_filter_keeps_smallest_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    keep = lambda p: torch.isfinite(filter_logits(logits, None, p))[0].tolist()  # noqa: E731
    assert keep(0.7) == [True, True, False, False]
    assert keep(0.5) == [True, False, False, False]
    assert keep(0.9) == [True, True, True, False]
    assert keep(1.0) == [True, True, True, True]
    shuffled = logits[:, [2, 0, 3, 1]]  # order must not matter
    assert torch.isfinite(filter_logits(shuffled, None, 0.7))[0].tolist() == [False, True, False, True]
    assert torch.isfinite(filter_logits(logits, 2, None))[0].tolist() == [True, True, False, False]


def test_top_p_sampling_stays_in_nucleus_and_tiny_p_is_greedy():
    model = tiny_model()
    ids, mask = prompts()
    greedy = generate(model, ids, mask, 8, temperature=0)
    tiny_p = generate(model, ids, mask, 8, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy.tokens, tiny_p.tokens)
    out = generate(model, ids, mask, 8, temperature=1.0, top_p=0.6, generator=torch.Generator().manual_seed(0))
    T0 = ids.shape[1]
    logits = model(out.tokens, attention_mask=out.attention_mask)[:, T0 - 1 : -1]
    allowed = torch.isfinite(filter_logits(logits.flatten(0, 1), None, 0.6)).view_as(logits)
    assert allowed.gather(-1, out.response[..., None]).all()


def test_generation_restores_training_mode():
    model = tiny_model(dropout=0.1).train()
    ids, mask = prompts()
    a = generate(model, ids, mask, 6, temperature=0)
    b = generate(model, ids, mask, 6, temperature=0)
    assert model.training and torch.equal(a.tokens, b.tokens)  # eval inside (no dropout), train restored
    model.eval()
    generate(model, ids, mask, 2, temperature=0)
    assert not model.training


@pytest.mark.parametrize("window", [None, 4])
def test_compiled_static_decode_equals_eager(window):
    # aot_eager traces the decode step through dynamo and AOTAutograd without generating kernels: the static cache,
    # the tensor slot and the key mask are what is checked (inductor gives the same tokens, at ~10 s of compiling).
    # One graph per batch size, for all steps and lengths: a step that recompiles (a guard on a changing stride or
    # length) would cost a compile per token.
    from torch._dynamo.utils import counters

    model = tiny_model(sliding_window=window)  # grouped-query (2 KV heads) as every model here
    ids, mask = prompts()
    torch._dynamo.reset()
    counters.clear()
    for sampling in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 20}):
        eager = generate(model, ids, mask, 10, eos_id=[7, 9], generator=torch.Generator().manual_seed(3), **sampling)
        static = generate(model, ids, mask, 10, eos_id=[7, 9], generator=torch.Generator().manual_seed(3),
                          compile_backend="aot_eager", **sampling)
        assert counters["stats"]["unique_graphs"] == 1
        assert torch.equal(static.tokens, eager.tokens) and torch.equal(static.response_mask, eager.response_mask)
        torch.testing.assert_close(static.logprobs, eager.logprobs, atol=1e-5, rtol=0)
    shorter = generate(model, ids, mask, 5, temperature=0.0, compile_backend="aot_eager")  # a shorter static cache
    assert counters["stats"]["unique_graphs"] == 1
    assert torch.equal(shorter.tokens, generate(model, ids, mask, 5, temperature=0.0).tokens)
    one = generate(model, ids[1:2], mask[1:2], 10, temperature=0.0, compile_backend="aot_eager")  # batch 1
    assert counters["stats"]["unique_graphs"] == 2
    assert torch.equal(one.tokens, generate(model, ids[1:2], mask[1:2], 10, temperature=0.0).tokens)


@pytest.mark.parametrize("window", [None, 4])
def test_repeats_share_each_prompt_pass_and_sample_as_repeated_prompts(window):
    """generate(repeats=G) runs each prompt once and copies its keys/values to its G rows: the same tokens and
    log-probs as the G-times repeated prompts, greedy and sampled with the same generator."""
    model = tiny_model(sliding_window=window)
    ids, mask = prompts()
    shared = generate(model, ids, mask, max_new_tokens=10, temperature=0, repeats=3)
    repeated = generate(model, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), 10, temperature=0)
    assert torch.equal(shared.tokens, repeated.tokens) and torch.equal(shared.attention_mask, repeated.attention_mask)
    torch.testing.assert_close(shared.logprobs, repeated.logprobs, atol=1e-5, rtol=0)
    sampled = [generate(model, *batch, max_new_tokens=10, temperature=1.0, repeats=r,
                        generator=torch.Generator().manual_seed(4))
               for batch, r in (((ids, mask), 3), ((ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)), 1))]
    assert torch.equal(sampled[0].tokens, sampled[1].tokens)
    torch.testing.assert_close(sampled[0].logprobs, sampled[1].logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", [{}, {"qkv_bias": True, "qk_norm": True}, {"sliding_window": 4}])
def test_shared_prompt_forward_equals_the_full_forward_with_gradients(family):
    """rollout.shared_prompt_logprobs (each prompt's pass once, its keys/values shared by the rows that continue
    it) gives one full forward's log-probs, entropies and gradients, for rows in any order."""
    from lit_llm.rollout import sequence_logprobs, shared_prompt_logprobs

    model = tiny_model(**family)
    ids, mask = prompts()
    out = generate(model, ids, mask, 8, temperature=1.0, eos_id=3, repeats=3, generator=torch.Generator().manual_seed(1))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(2))[:9]
    tokens, attention, response = out.tokens[order], out.attention_mask[order], out.response[order]
    results = []
    for forward in (lambda: sequence_logprobs(model, tokens, attention, response, 1.0),
                    lambda: shared_prompt_logprobs(model, tokens, attention, response, order // 3, 1.0)):
        model.zero_grad()
        logprobs, entropy = forward()
        ((logprobs + 0.1 * entropy) * out.response_mask[order]).sum().backward()
        results.append((logprobs.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]))
    (full_lp, full_ent, full_grads), (lp, ent, grads) = results
    keep = out.response_mask[order]
    torch.testing.assert_close(lp[keep], full_lp[keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[keep], full_ent[keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(lp[keep], out.logprobs[order][keep], atol=1e-5, rtol=0)  # and the sampler's
    for grad, full in zip(grads, full_grads):
        torch.testing.assert_close(grad, full, atol=1e-4, rtol=1e-4)
