"""The training order does not depend on the number of processes, and one process keeps the plain shuffle."""

import torch
from torch.utils.data import DataLoader

from lit_llm.data.sampling import train_loader


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
