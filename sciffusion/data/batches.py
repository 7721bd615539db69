"""In-memory training pairs and the batch collation the Trainer uses."""

from __future__ import annotations

import torch


class BatchDataset(torch.utils.data.Dataset):
    """A dataset that draws whole batches (``batch(idx)``, what :func:`collate` uses); item ``i`` is
    row 0 of ``batch([i])``."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch(torch.tensor([i])).items()}


class TensorPairs(torch.utils.data.Dataset):
    """In-memory dataset of targets ``x: (N, ...)``, optional conditions ``cond: (N, ...)`` and loss
    masks ``mask: (N, ...)``; items are dicts ``{"x": ..., "cond": ...}`` like :class:`sciffusion.data.PairDataset`."""

    def __init__(self, x: torch.Tensor, cond: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        for name, t in (("cond", cond), ("mask", mask)):
            if t is not None and len(t) != len(x):
                raise ValueError(f"x has {len(x)} samples but {name} has {len(t)}")
        self.x, self.cond, self.mask = x, cond, mask

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {k: v[i] for k, v in (("x", self.x), ("cond", self.cond), ("mask", self.mask)) if v is not None}

    def batch(self, idx: torch.Tensor) -> dict:
        return self[idx]


def collate(dataset, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stack ``dataset[i]`` dicts for the indices ``idx`` (uses ``dataset.batch`` when available)."""
    if hasattr(dataset, "batch"):
        return dataset.batch(idx)
    items = [dataset[int(i)] for i in idx]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
