"""The training order does not depend on the number of processes, and one process keeps the plain shuffle."""

import pytest
import torch
from torch.utils.data import DataLoader

from lit_llm.data.sampling import TrainOrderState, train_loader


class FakeTrainer:
    def __init__(self, world_size: int, global_rank: int) -> None:
        self.world_size, self.global_rank = world_size, global_rank


class Holder:
    """Stands in for a data module: `train_loader` only reads its `trainer`."""

    def __init__(self, trainer: FakeTrainer | None) -> None:
        self.trainer = trainer


def epochs(loader: DataLoader, n: int = 2) -> list[list[int]]:
    return [[int(i) for batch in loader for i in batch] for _ in range(n)]


def test_one_process_order_is_the_plain_seeded_shuffle_epoch_after_epoch() -> None:
    data = list(range(37))
    plain = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    ours = train_loader(Holder(None), data, batch_size=4, seed=3)
    assert epochs(ours, 3) == epochs(plain, 3)


def test_ranks_together_see_the_one_process_batches_at_the_global_batch_size() -> None:
    data, per_rank, world = list(range(40)), 4, 2
    single = [sorted(b.tolist()) for b in train_loader(Holder(None), data, per_rank * world, seed=5, drop_last=True)]
    ranks = [list(train_loader(Holder(FakeTrainer(world, r)), data, per_rank, seed=5, drop_last=True))
             for r in range(world)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step].tolist() + ranks[1][step].tolist()) == batch


def test_uneven_data_is_padded_so_every_rank_has_the_same_number_of_batches() -> None:
    ranks = [list(train_loader(Holder(FakeTrainer(2, r)), list(range(7)), 2, seed=0, shuffle=False))
             for r in range(2)]
    assert [b.tolist() for b in ranks[0]] == [[0, 2], [4, 6]]
    assert [b.tolist() for b in ranks[1]] == [[1, 3], [5, 0]]


class Progress:
    """Stands in for the trainer's view of the epoch: its length and how many of its batches are done."""

    def __init__(self, epoch_batches: int, done: int, epoch: int) -> None:
        self.world_size, self.global_rank, self.num_training_batches = 1, 0, epoch_batches
        self.current_epoch = epoch
        current = type("Current", (), {"processed": done})()
        self.fit_loop = type("FitLoop", (), {"epoch_loop": type("EpochLoop", (), {
            "batch_progress": type("BatchProgress", (), {"current": current})()})()})()


class ResumableHolder(TrainOrderState, Holder):
    """The data-module stand-in with the checkpoint hooks of a real data module."""


def stopped_after(done: int, epochs_before: int = 1, epoch_batches: int | None = None) -> tuple[dict, list]:
    """The position a checkpoint holds after `epochs_before` whole epochs and `done` batches of the next one,
    and the batches an uninterrupted loader yields from there to the end of the following epoch."""
    data = list(range(20))
    holder = ResumableHolder(None)
    loader = train_loader(holder, data, batch_size=4, seed=7)
    n = epoch_batches or len(loader)
    batches = [b.tolist() for _ in range(epochs_before + 2) for b in list(loader)[:n]]
    loader = train_loader(holder, data, batch_size=4, seed=7)
    for _ in range(epochs_before):
        list(loader)
    iterator = iter(loader)
    for _ in range(min(done, n)):
        next(iterator)
    holder.trainer = Progress(n, done, epochs_before)
    position = holder.state_dict()["train_order"]
    return position, batches[(epochs_before * n) + done:][: 2 * n - done]


def resumed(position: dict, count: int) -> list:
    """The first `count` batches a loader restored from `position` yields (epochs cut as the checkpoint's were)."""
    holder = ResumableHolder(None)
    holder.load_state_dict({"train_order": position})
    loader = train_loader(holder, list(range(20)), batch_size=4, seed=7)
    n, done = position["epoch_batches"], position["batches_done"]
    out = [b.tolist() for b in list(loader)[: n - done if done < n else n]]
    while len(out) < count:
        out += [b.tolist() for b in list(loader)[:n]]
    return out[:count]


def test_a_resume_mid_epoch_continues_the_same_order_and_the_next_epoch() -> None:
    position, expected = stopped_after(done=2)
    assert resumed(position, len(expected)) == expected


def test_a_resume_at_an_epoch_end_starts_the_next_epoch_even_when_epochs_are_cut_short() -> None:
    position, expected = stopped_after(done=5)
    assert resumed(position, len(expected)) == expected
    position, expected = stopped_after(done=2, epoch_batches=2)  # limit_train_batches=2: the epoch is over
    assert position["batches_done"] == position["epoch_batches"] == 2
    assert resumed(position, len(expected)) == expected


def test_resuming_onto_data_of_another_length_is_refused() -> None:
    position, _ = stopped_after(done=2)
    holder = ResumableHolder(None)
    holder.load_state_dict({"train_order": position})
    with pytest.raises(ValueError, match="checkpoint's epoch had 5 batches, this data gives 4"):
        train_loader(holder, list(range(16)), batch_size=4, seed=7)


def test_an_epochs_order_does_not_depend_on_the_passes_opened_before_it() -> None:
    """Lightning opens an extra, empty pass for the epoch a checkpoint ended in; epoch e's order stays e's."""
    data, trainer = list(range(20)), FakeTrainer(1, 0)
    holder = Holder(trainer)
    reference = []
    loader = train_loader(holder, data, batch_size=4, seed=7)
    for epoch in range(3):
        trainer.current_epoch = epoch
        reference.append([b.tolist() for b in loader])
    loader = train_loader(holder, data, batch_size=4, seed=7)
    trainer.current_epoch = 1
    iter(loader), iter(loader)  # passes opened and dropped
    trainer.current_epoch = 2
    assert [b.tolist() for b in loader] == reference[2]
    trainer.current_epoch = 0
    assert [b.tolist() for b in loader] == reference[0]
