"""What NonFiniteGuard's gradient check costs next to the training step it guards.

Times one forward + backward pass of a model and one `NonFiniteGuard.nonfinite_gradients` over its gradients
(the per-step check), for the tiny recipe's model (0.85M parameters) and a 28M one, and prints the ratio.

    python benchmarks/nonfinite_guard_cost.py [--threads 2]
"""

import argparse
import time

import torch
from torch import nn

from lit_llm.nonfinite import NonFiniteGuard
from lit_llm.model import ModelConfig, Transformer

SIZES = {"tiny (4x128, 0.85M parameters)": ModelConfig(n_layer=4, n_head=4, n_kv_head=2, d_model=128, vocab_size=512),
         "small (8x512, 28M parameters)": ModelConfig(n_layer=8, n_head=8, n_kv_head=4, d_model=512, vocab_size=8192)}


def seconds(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(config: ModelConfig, batch: int, length: int) -> tuple[float, float]:
    holder = nn.Module()
    holder.model = Transformer(config)
    optimizer = torch.optim.AdamW(holder.parameters())
    x = torch.randint(0, config.vocab_size, (batch, length + 1))

    def step() -> None:
        logits = holder.model(x[:, :-1])
        nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()

    step()  # warm-up, and gradients to check
    return seconds(step, 3), seconds(lambda: NonFiniteGuard.nonfinite_gradients(holder, optimizer), 50)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | forward+backward (ms) | gradient check (ms) | check / step |\n| --- | --- | --- | --- |")
    for name, config in SIZES.items():
        step, check = measure(config, args.batch, args.length)
        print(f"| {name} | {step * 1e3:.1f} | {check * 1e3:.2f} | {100 * check / step:.2f}% |")


if __name__ == "__main__":
    main()
