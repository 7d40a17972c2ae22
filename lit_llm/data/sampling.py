"""Training data order that does not depend on the number of processes.

With one process a training loader shuffles with a generator seeded by the data module's `seed`. Lightning's
default under DDP swaps that sampler for a `DistributedSampler`, whose permutation comes from another seed: two
processes would then see different batches from one process, and runs could not be compared. `ShardedSampler`
instead draws the one-process order and deals it out: rank r takes positions r, r + W, r + 2W, ... of it. At
per-rank batch B the W ranks' step-s batches together are exactly positions [sBW, (s+1)BW) of the one-process
order, i.e. the one-process step-s batch at global batch BW. With W = 1 it yields the one-process order itself,
so single-process runs are unchanged.
"""

import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler


class ShardedSampler(DistributedSampler):
    """Rank `rank`'s share of `base`'s order: every `num_replicas`-th index, starting at `rank`.

    The order is padded by repeating its start to a multiple of `num_replicas` (as `DistributedSampler` does), so
    every rank has the same number of batches. Subclassing `DistributedSampler` keeps Lightning from replacing it.
    """

    def __init__(self, base: Sampler, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.base = base
        self.num_samples = math.ceil(len(base) / num_replicas)  # type: ignore[arg-type]
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank:self.total_size:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def world_of(datamodule: pl.LightningDataModule) -> tuple[int, int]:
    """(world size, global rank) of the trainer the data module is attached to; (1, 0) without one."""
    trainer = getattr(datamodule, "trainer", None)
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def train_loader(datamodule: pl.LightningDataModule, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True,
                 drop_last: bool = False, collate_fn: Callable[[list], Any] | None = None,
                 num_workers: int = 0) -> DataLoader:
    """A training DataLoader whose global order is the same for any number of processes (see the module doc).

    batch_size is per process: W processes at batch B train like one process at batch B·W.
    """
    generator = torch.Generator().manual_seed(seed)
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    world, rank = world_of(datamodule)
    # The DataLoader keeps the same generator: it draws its worker base seed from it before the sampler's
    # permutation, exactly as a plain `DataLoader(shuffle=True, generator=...)` does, so one process's order is kept.
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardedSampler(base, dataset, world, rank),
                      drop_last=drop_last, generator=generator, collate_fn=collate_fn, num_workers=num_workers)
