"""In-memory training pairs and the batch collation the Trainer uses."""

from __future__ import annotations

import torch


class TensorPairs(torch.utils.data.Dataset):
    """In-memory dataset of targets ``x: (N, ...)`` and optional conditions ``cond: (N, ...)``;
    items are dicts ``{"x": ..., "cond": ...}`` like :class:`sciffusion.data.PairDataset`."""

    def __init__(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        if cond is not None and len(cond) != len(x):
            raise ValueError(f"x has {len(x)} samples but cond has {len(cond)}")
        self.x, self.cond = x, cond

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        item = {"x": self.x[i]}
        if self.cond is not None:
            item["cond"] = self.cond[i]
        return item

    def batch(self, idx: torch.Tensor) -> dict:
        item = {"x": self.x[idx]}
        if self.cond is not None:
            item["cond"] = self.cond[idx]
        return item


def collate(dataset, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stack ``dataset[i]`` dicts for the indices ``idx`` (uses ``dataset.batch`` when available)."""
    if hasattr(dataset, "batch"):
        return dataset.batch(idx)
    items = [dataset[int(i)] for i in idx]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
