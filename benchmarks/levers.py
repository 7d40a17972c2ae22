"""Levers of the speed issue that the package does not use, each measured as an A/B in one process.

Each lever compares the code as it is (A) with the lever applied (B) on the same inputs, alternating which side runs
first in each round; the ratio is A's median time ÷ B's (above 1: the lever pays) and the table gives its median and
range over the rounds.

- Training levers use the models-alone loop of `nanogpt_side_by_side.py` (forward, loss, backward, clipping and
  AdamW; nanoGPT's CPU shape: 4 layers, 128 dims, context 64, batch 12, SwiGLU width 341), torch's default threads.
- The decode lever uses `generation_vs_transformers.py`'s model (6 layers, 384 dims) and shape (batch 8, 128-token
  prompts, 128 new tokens, greedy), the compiled decode step, 1 thread; both sides must choose the same tokens.

`fuse_projections` is the stored layout the issue names as a lever: q/k/v as one matrix and SwiGLU's gate/up as one,
so a block runs 4 matmuls instead of 7 (as nanoGPT's GPT-2 block does). It exists here only to be measured, as does
`RMSNormOneNode` (on CPU, F.rms_norm is a composite that autograd differentiates op by op).

The second table is not levers: it swaps a Llama part for its GPT-2 counterpart (a different model, same parameter
count and matmul FLOPs) in the same training loop, to show what each part costs at nanoGPT's size.

The third table (with `--nanogpt`, a checkout of nanoGPT) bounds what any lever can reach at that size: A is
nanoGPT's GPT, B our Transformer, so A ÷ B is our speed relative to nanoGPT's. Its rows: the linear layers'
matmuls alone (each layer's forward product and both backward products, at the step's token count, no other
kernel), the models in the training loop eager, ours with the whole step compiled against nanoGPT eager (nanoGPT's
CPU run), and both compiled.

    python benchmarks/levers.py --rounds 7 --nanogpt /tmp/nanoGPT --out /tmp/sbs/levers.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_llm.attention import RMSNorm
from lit_llm.bench.settings import PRESETS
from lit_llm.generation import generate
from lit_llm.model import ModelConfig, Transformer
from lit_llm.rope import apply_rope
from lit_llm.tracking import cpu_model

sys.path.insert(0, os.path.dirname(__file__))
from nanogpt_side_by_side import D_FF, SHAPE, model_step_seconds, nanogpt_model  # noqa: E402

VOCAB = 264  # nanoGPT's byte vocabulary in the side-by-side
DECODE = dict(batch=8, prompt_len=128, new_tokens=128)


def _heads(attn: nn.Module, x: Tensor, n: int) -> Tensor:
    """(B, T, n * head_dim) -> (B, n, T, head_dim)."""
    B, T, _ = x.shape
    return x.view(B, T, n, attn.head_dim).transpose(1, 2)


def _fused_attention(self: nn.Module, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, is_causal: bool,
                     layer: int = 0, kv_cache=None, unpadded=None) -> Tensor:
    B, T, _ = x.shape
    q, k, v = F.linear(x, self.wqkv).split(self.split, -1)
    q, k = q.view(B, T, self.n_head, -1), k.view(B, T, self.n_kv_head, -1)
    q, k = apply_rope(q, *rope).transpose(1, 2), apply_rope(k, *rope).transpose(1, 2)
    v = _heads(self, v, self.n_kv_head)
    if kv_cache is not None:
        k, v = kv_cache.update(layer, k, v)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                       enable_gqa=self.n_kv_head != self.n_head)
    return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


def _fused_swiglu(self: nn.Module, x: Tensor) -> Tensor:
    gate, up = F.linear(x, self.w_gate_up).chunk(2, -1)
    return self.w_down(F.silu(gate) * up)


def fuse_projections(model: Transformer) -> Transformer:
    """In place: each block's wq/wk/wv replaced by one stored `wqkv` parameter and w_gate/w_up by `w_gate_up`, same
    values (no biases or q/k norms: the presets measured here have none)."""
    assert not model.config.qkv_bias and not model.config.qk_norm
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        attn.split = [attn.wq.out_features, attn.wk.out_features, attn.wv.out_features]
        attn.wqkv = nn.Parameter(torch.cat([attn.wq.weight, attn.wk.weight, attn.wv.weight]).detach())
        mlp.w_gate_up = nn.Parameter(torch.cat([mlp.w_gate.weight, mlp.w_up.weight]).detach())
        del attn.wq, attn.wk, attn.wv, mlp.w_gate, mlp.w_up
        attn.forward = types.MethodType(_fused_attention, attn)
        mlp.forward = types.MethodType(_fused_swiglu, mlp)
    return model


class RMSNormOneNode(torch.autograd.Function):
    """F.rms_norm's float32 arithmetic as one autograd node: the composite's gradient formulas in fewer passes
    (doubling is exact, so grad * (2 x) = (2 grad) * x). Alone, the same outputs and gradients bit for bit; in the
    model the residual stream's gradient then sums its terms in another order (equal to rounding; asserted)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:  # noqa: ANN001 (autograd's ctx)
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        normed = x * rstd
        ctx.save_for_backward(x, normed, rstd, weight)
        return normed * weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: ANN001
        x, normed, rstd, weight = ctx.saved_tensors
        grad_normed = grad * weight
        grad_rstd = (grad_normed * x).sum(-1, keepdim=True)
        grad_mean_sq = -0.5 * grad_rstd * rstd.pow(3) / x.shape[-1]
        grad_x = grad_normed * rstd + (2 * grad_mean_sq) * x
        return grad_x, (grad * normed).sum_to_size(weight.shape), None


def _norms(model: Transformer, forward: Callable) -> Transformer:
    """In place: every RMSNorm's forward replaced by `forward(norm, x)`."""
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.forward = types.MethodType(forward, module)
    return model


def rms_norm_one_node(model: Transformer) -> Transformer:
    return _norms(model, lambda norm, x: RMSNormOneNode.apply(x, norm.weight, norm.eps))


def layer_norm(model: Transformer) -> Transformer:
    """GPT-2's LayerNorm (one native kernel each way on CPU; no bias, as nanoGPT's `bias=False`) for RMSNorm."""
    return _norms(model, lambda norm, x: F.layer_norm(x, norm.weight.shape, norm.weight, None, norm.eps))


def _attention_without_rope(self: nn.Module, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                            is_causal: bool, layer: int = 0, kv_cache=None, unpadded=None) -> Tensor:
    q, k, v = (_heads(self, proj(x), n) for proj, n in ((self.wq, self.n_head), (self.wk, self.n_kv_head),
                                                       (self.wv, self.n_kv_head)))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=self.n_kv_head != self.n_head)
    B, T, _ = x.shape
    return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


def without_rope(model: Transformer) -> Transformer:
    """Attention without rotary embeddings (no positions at all: nanoGPT's learned table costs one add)."""
    for block in model.blocks:
        block.attn.forward = types.MethodType(_attention_without_rope, block.attn)
    return model


def gelu_mlp(model: Transformer) -> Transformer:
    """GPT-2's MLP (128 -> 512, GELU, 512 -> 128: 2 matmuls) for SwiGLU (3 matmuls of width 341): the same
    parameter count and matmul FLOPs."""
    d = model.config.d_model
    for block in model.blocks:
        block.mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=False), nn.GELU(), nn.Linear(4 * d, d, bias=False))
    return model


def gpt2_parts(model: Transformer) -> Transformer:
    return gelu_mlp(without_rope(layer_norm(model)))


def lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def lm_loss_bf16(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def blocks_compiled(model: Transformer) -> Transformer:
    """What `lit_llm.callbacks.Compile` does: each block through torch.compile, in place."""
    for block in model.blocks:
        block.compile()
    return model


def training_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=VOCAB, n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"],
                                   d_model=SHAPE["n_embd"], max_seq_len=SHAPE["block_size"], d_ff=D_FF))


def training_batches(steps: int = 40) -> list[tuple[Tensor, Tensor]]:
    shape = (SHAPE["batch_size"], SHAPE["block_size"])
    return [(torch.randint(0, VOCAB, shape), torch.randint(0, VOCAB, shape)) for _ in range(steps)]


def decode_seconds(model: Transformer, prompts: Tensor) -> tuple[float, Tensor]:
    """Seconds per generated token position of one compiled-decode `generate` call, and its tokens."""
    start = time.perf_counter()
    with torch.no_grad():
        out = generate(model, prompts, torch.ones_like(prompts), DECODE["new_tokens"], temperature=0.0,
                       compile_backend="inductor")
    return (time.perf_counter() - start) / DECODE["new_tokens"], out.tokens


timed_step = partial(partial, model_step_seconds)  # timed_step(model, loss)(batches) -> seconds a step


def training_levers() -> list[tuple[str, str, Callable, Callable, Callable]]:
    """(lever, workload, inputs of a round, A's seconds, B's seconds)."""
    ours = training_model()
    fused = fuse_projections(copy.deepcopy(ours))
    x, y = training_batches(1)[0]
    loss = lm_loss(ours, x, y)
    torch.testing.assert_close(lm_loss(fused, x, y), loss, rtol=1e-5, atol=1e-6)  # the same model
    torch.testing.assert_close(lm_loss_bf16(ours, x, y), loss, rtol=2e-2, atol=2e-2)
    one_node = rms_norm_one_node(copy.deepcopy(ours))
    assert_same_gradients(ours, one_node, x, y)
    return [
        ("q/k/v and gate/up stored as one matrix each (4 matmuls per block instead of 7)", "training step, eager",
         training_batches, timed_step(ours, lm_loss), timed_step(fused, lm_loss)),
        ("RMSNorm as one autograd node (the same gradients to rounding)", "training step, eager",
         training_batches, timed_step(ours, lm_loss), timed_step(one_node, lm_loss)),
        ("the same, both sides' whole step compiled", "training step, compiled",
         training_batches, timed_step(copy.deepcopy(ours), torch.compile(lm_loss)),
         timed_step(fuse_projections(copy.deepcopy(ours)), torch.compile(lm_loss))),
        ("whole step compiled (model and loss) instead of each block (the Compile callback)",
         "training step, compiled", training_batches, timed_step(blocks_compiled(copy.deepcopy(ours)), lm_loss),
         timed_step(copy.deepcopy(ours), torch.compile(lm_loss))),
        ("bf16 autocast (this CPU has avx512_bf16)", "training step, eager",
         training_batches, timed_step(ours, lm_loss), timed_step(copy.deepcopy(ours), lm_loss_bf16)),
    ]


def assert_same_gradients(a: nn.Module, b: nn.Module, x: Tensor, y: Tensor) -> None:
    for model in (a, b):
        model.zero_grad(set_to_none=True)
        lm_loss(model, x, y).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-8, msg=f"{name}: another gradient")


def architecture_rows() -> list[tuple[str, str, Callable, Callable, Callable]]:
    """(the part swapped, workload, inputs, the Llama model's seconds, the swapped model's seconds)."""
    ours = training_model()
    swaps = [("RMSNorm → LayerNorm (no bias)", layer_norm), ("RoPE removed", without_rope),
             ("SwiGLU (3 matmuls, width 341) → GELU MLP (2 matmuls, width 512)", gelu_mlp),
             ("all three (nanoGPT's block without its position table)", gpt2_parts)]
    return [(name, "training step, eager", training_batches, timed_step(ours, lm_loss),
             timed_step(swap(training_model()), lm_loss)) for name, swap in swaps]


def matmul_seconds(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    """Median seconds, over the batches (the first 5 warm-up), of every nn.Linear's three products of a training
    step at the batches' token count: x W^T (forward), g W (the input's gradient) and g^T x (the weight's)."""
    tokens = batches[0][0].numel()
    products = []
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        w = layer.weight.detach()
        x, g = torch.randn(tokens, layer.in_features), torch.randn(tokens, layer.out_features)
        products += [partial(torch.mm, x, w.t()), partial(torch.mm, g, w), partial(torch.mm, g.t(), x)]
    times = []
    for _ in batches:
        start = time.perf_counter()
        for product in products:
            product()
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:])


def ceiling_rows(nanogpt: str) -> list[tuple[str, str, Callable, Callable, Callable]]:
    """(what is compared, workload, inputs, nanoGPT's seconds, ours): our speed ÷ nanoGPT's at the same size."""
    def nano() -> nn.Module:
        torch.manual_seed(0)
        return nanogpt_model(nanogpt, VOCAB)

    nano_loss = lambda model, x, y: model(x, y)[1]  # noqa: E731 (nanoGPT's forward returns logits, loss)
    return [
        ("the linear layers' matmuls alone (7 a block at widths 128 and 341; nanoGPT 4 at 384, 128, 512)",
         "3 products per layer", training_batches, partial(matmul_seconds, nano()),
         partial(matmul_seconds, training_model())),
        ("the models, both eager", "training step", training_batches, timed_step(nano(), nano_loss),
         timed_step(training_model(), lm_loss)),
        ("ours with the whole step compiled, nanoGPT eager (its CPU run)", "training step", training_batches,
         timed_step(nano(), nano_loss), timed_step(training_model(), torch.compile(lm_loss))),
        ("both with the whole step compiled", "training step", training_batches,
         timed_step(nano(), torch.compile(nano_loss)), timed_step(training_model(), torch.compile(lm_loss))),
    ]


def decode_levers() -> list[tuple[str, str, Callable, Callable, Callable]]:
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(**PRESETS["small"])).eval()
    fused = fuse_projections(copy.deepcopy(ours))
    prompts = torch.randint(0, ours.config.vocab_size, (DECODE["batch"], DECODE["prompt_len"]))
    (_, a), (_, b) = decode_seconds(ours, prompts), decode_seconds(fused, prompts)
    assert torch.equal(a, b), "the fused layout chose other tokens"
    first = lambda model, _: decode_seconds(model, prompts)[0]  # noqa: E731
    return [("q/k/v and gate/up stored as one matrix each", "compiled decode step, batch 8, 1 thread",
             lambda: None, partial(first, ours), partial(first, fused))]


def measure(levers: list, rounds: int) -> list[dict]:
    rows = []
    for name, workload, inputs, time_a, time_b in levers:
        warm = inputs()
        time_a(warm), time_b(warm)  # compiles, caches
        per_round = []
        for r in range(rounds):
            data = inputs()
            if r % 2:
                b, a = time_b(data), time_a(data)
            else:
                a, b = time_a(data), time_b(data)
            per_round.append({"a_s": a, "b_s": b, "ratio": a / b, "load": os.getloadavg()[0]})
        ratios = [x["ratio"] for x in per_round]
        rows.append({"lever": name, "workload": workload, "threads": torch.get_num_threads(), "rounds": per_round,
                     "a_median_s": statistics.median(x["a_s"] for x in per_round),
                     "b_median_s": statistics.median(x["b_s"] for x in per_round),
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)})
        print(f"{name} [{workload}]: {rows[-1]['ratio_median']:.3f}x (range {min(ratios):.3f}-{max(ratios):.3f})",
              flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default="levers.json")
    p.add_argument("--nanogpt", help="a nanoGPT checkout: adds the table of our speed against its model's")
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of measuring
    result = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
              "cpu": cpu_model(),
              "torch": torch.__version__, "load_avg_start": os.getloadavg()}
    rows = measure(training_levers(), args.rounds)
    result["architecture"] = measure(architecture_rows(), args.rounds)
    if args.nanogpt:
        result["ceiling"] = measure(ceiling_rows(args.nanogpt), args.rounds)
    torch.set_num_threads(1)
    result["rows"] = rows + measure(decode_levers(), args.rounds)
    result["load_avg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
