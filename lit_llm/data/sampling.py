"""Training data order that does not depend on the number of processes.

With one process a training loader shuffles with a generator seeded by the data module's `seed`. Lightning's
default under DDP swaps that sampler for a `DistributedSampler`, whose permutation comes from another seed: two
processes would then see different batches from one process, and runs could not be compared. `ShardedSampler`
instead draws the one-process order and deals it out: rank r takes positions r, r + W, r + 2W, ... of it. At
per-rank batch B the W ranks' step-s batches together are exactly positions [sBW, (s+1)BW) of the one-process
order, i.e. the one-process step-s batch at global batch BW. With W = 1 it yields the one-process order itself,
so single-process runs are unchanged.

The order also survives a resume. Epoch e's order is a function of the seed and e (`ResumableLoader`), and
`TrainOrderState` (a mixin for data modules) stores, in every checkpoint, the epoch and how many of its batches the
trainer has processed; the resumed loader skips those batches in that epoch, so a resumed run sees exactly the
uninterrupted run's batches wherever the checkpoint was written (mid-epoch, after a validation, at an epoch's end).
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
        self.skip = 0  # leading indices of the next pass to leave out (a resume mid-epoch); reset after use

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        order += order[: self.total_size - len(order)]
        skip, self.skip = self.skip, 0
        return iter(order[self.rank:self.total_size:self.num_replicas][skip:])

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A training DataLoader whose order is a function of the seed and the epoch, and that can restart mid-epoch.

    Every pass over the loader makes the same draws from its generator (the iterator's worker base seed, then the
    sampler's permutation), so epoch e's starting state is the seed's state after e such passes: computed once by
    replaying them, and set at the start of each pass. The uninterrupted sequence of epochs is unchanged, and a
    resumed run gets epoch e's order however many passes Lightning opens on its way. `position()` is the
    plain-data state a checkpoint keeps; `resume_from(position)` makes the first pass after a resume skip the
    batches the checkpoint's epoch had done, or, when that epoch was over, be the next epoch's (Lightning opens it
    before counting the new epoch, and uses it, or drops it and opens another: both then give the same order). Its
    length stays the full epoch's (Lightning counts the batches already done itself).
    """

    def __init__(self, *args: Any, datamodule: pl.LightningDataModule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule
        self._starts = {0: self.generator.get_state()}  # epoch -> generator state at the start of its pass
        self._passes = 0  # passes started: the epoch when no trainer counts them
        self._resume: dict[str, Any] | None = None

    def epoch(self) -> int:
        epoch = getattr(getattr(self.datamodule, "trainer", None), "current_epoch", None)
        return self._passes if epoch is None else epoch

    def start_state(self, epoch: int) -> torch.Tensor:
        """The generator's state at the start of `epoch`'s pass (replaying the passes before it once)."""
        known = max(e for e in self._starts if e <= epoch)
        while known < epoch:
            self.generator.set_state(self._starts[known])
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the iterator's base seed
            list(self.sampler.base)  # the sampler's permutation
            known += 1
            self._starts[known] = self.generator.get_state()
        return self._starts[epoch]

    def __iter__(self) -> Iterator[Any]:
        epoch, resume, self._resume = self.epoch(), self._resume, None
        if resume is not None and resume["epoch"] == epoch:
            if resume["batches_done"] < resume["epoch_batches"]:  # mid-epoch: leave out what it did
                self.sampler.skip = resume["batches_done"] * self.batch_size
            else:  # it ended the epoch: Lightning opens this pass before it counts the next epoch
                epoch += 1
        self.generator.set_state(self.start_state(epoch))
        self._passes += 1
        return super().__iter__()

    def progress(self) -> tuple[int, int]:
        """(batches of the current epoch the trainer has processed, batches in its epoch): an epoch may be cut
        short by `limit_train_batches`. Without a trainer: (0, len)."""
        trainer = getattr(self.datamodule, "trainer", None)
        if trainer is None:
            return 0, len(self)
        epoch_batches = trainer.num_training_batches
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done, int(epoch_batches) if math.isfinite(epoch_batches) else len(self)

    def position(self) -> dict[str, Any]:
        done, epoch_batches = self.progress()
        return {"epoch": self.epoch(), "batches_done": done, "epoch_batches": epoch_batches,
                "num_batches": len(self)}

    def resume_from(self, position: dict[str, Any]) -> None:
        if position["num_batches"] != len(self):
            raise ValueError(f"cannot resume the training order: the checkpoint's epoch had "
                             f"{position['num_batches']} batches, this data gives {len(self)} (changed data, batch "
                             f"size or number of processes?)")
        if "epoch" not in position:
            raise ValueError("this checkpoint's training order was saved by an older lit_llm (generator states, no "
                             "epoch); resume it with that version or start the run again")
        self._resume = position
        # without a trainer to say which epoch a pass is, passes continue from the checkpoint's (next) epoch
        self._passes = position["epoch"] + (position["batches_done"] >= position["epoch_batches"])


class TrainOrderState:
    """Mixin for data modules whose training loader comes from `train_loader`: checkpoints keep the position in
    the training order (Lightning saves a data module's `state_dict` and hands it back on resume, before it asks
    for the training loader)."""

    def state_dict(self) -> dict[str, Any]:
        loader = getattr(self, "_train_loader", None)
        return {"train_order": loader.position()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = state_dict.get("train_order")


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
    loader = ResumableLoader(dataset, batch_size=batch_size, sampler=ShardedSampler(base, dataset, world, rank),
                             drop_last=drop_last, generator=generator, collate_fn=collate_fn, num_workers=num_workers,
                             datamodule=datamodule)
    position = getattr(datamodule, "_resume_position", None)
    if position is not None:
        loader.resume_from(position)
        datamodule._resume_position = None
    datamodule._train_loader = loader
    return loader
