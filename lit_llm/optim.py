"""AdamW with a warmup + cosine schedule, shared by every stage.

Weight decay applies to matrices only (linear and embedding weights); norms and biases are not decayed, as in
GPT-2/nanoGPT and the Llama papers.
"""

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    Args:
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay on matrices (dim >= 2) only.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: Linear warmup from 0 to `lr` over this many optimizer steps.
        min_lr_ratio: The cosine decays to `lr * min_lr_ratio` at the last step.
        schedule: "cosine" (warmup then cosine decay) or "constant" (warmup then flat).
        fused: Use the fused AdamW kernel (one kernel per step on CPU and GPU, ~10% faster training of the tiny
            model on CPU than the default multi-tensor kernels; reports/side_by_side.md).
    """

    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"
    fused: bool = True


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group (matrices) and an undecayed one (vectors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def configure_adamw(model: nn.Module, config: OptimConfig, total_steps: int) -> dict:
    """Build AdamW and its per-step LambdaLR in the dict form `LightningModule.configure_optimizers` returns."""
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {config.schedule!r}")
    # torch's fused kernel covers plain CPU and CUDA tensors (not sharded DTensors or other devices)
    fusable = all(p.device.type in ("cpu", "cuda") and type(p) is nn.Parameter for p in model.parameters())
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        fused=bool(config.fused and fusable) or None,
    )
    # A functools.partial keeps the scheduler's state_dict free of pickled closures.
    factor = partial(
        lr_factor,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=config.min_lr_ratio,
        schedule=config.schedule,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
