"""One simulated node inside a host: its parameters, optimizer, sampler and data, and seeds.

A node owns ``nn.Parameter`` objects (A and B per adapted module, plus the trainable head)
that the host swaps into its shared model to train or evaluate the node; its AdamW state;
a seeded sampler that walks its shard in epochs; and its shard as tensors on the host's
device. Every random draw is seeded by :func:`derived_seed` from the run's seed and the
node (and round), so results never depend on which host a node lives on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from decaf_ray.data import Shard

Batch = dict[str, torch.Tensor]  # input_ids (b, L), attention_mask (b, L), labels (b,)


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (seed, node, round...) and nothing else."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def to_device(shard: Shard, device: torch.device) -> Batch:
    """The whole shard as long tensors on ``device``."""
    return {
        "input_ids": torch.tensor(shard.input_ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(shard.attention_mask, dtype=torch.long, device=device),
        "labels": torch.tensor(shard.labels, dtype=torch.long, device=device),
    }


def take_rows(data: Batch, idx: torch.Tensor) -> Batch:
    """Rows ``idx`` of a tokenised set, trimmed to the longest sequence among them."""
    mask = data["attention_mask"][idx]
    length = int(mask.sum(dim=1).max())
    return {
        "input_ids": data["input_ids"][idx, :length],
        "attention_mask": mask[:, :length],
        "labels": data["labels"][idx],
    }


def concat_rows(batches: list[Batch]) -> Batch:
    """Node-major concatenation of batches, padded to the longest sequence among them."""
    length = max(b["input_ids"].shape[1] for b in batches)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, length - x.shape[1]))

    return {
        "input_ids": torch.cat([pad(b["input_ids"]) for b in batches]),
        "attention_mask": torch.cat([pad(b["attention_mask"]) for b in batches]),
        "labels": torch.cat([b["labels"] for b in batches]),
    }


class NodeState:
    """The private state of one simulated node inside a host."""

    def __init__(
        self,
        node_id: int,
        params: dict[str, nn.Parameter],
        data: Batch,
        optimizer: torch.optim.Optimizer,
        seed: int,
    ) -> None:
        self.node_id = node_id
        self.params = params
        self.data = data  # the node's shard, on the host's device
        self.optimizer = optimizer
        self.rng = np.random.default_rng(derived_seed(seed, node_id, 7))
        self._order = np.empty(0, dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.data["labels"])

    def trainable(self) -> dict[str, nn.Parameter]:
        return {k: p for k, p in self.params.items() if p.requires_grad}

    def next_indices(self, batch_size: int) -> np.ndarray:
        """Indices of the next batch: seeded epochs over the shard, without replacement."""
        n = self.size
        if len(self._order) < min(batch_size, n):
            self._order = np.concatenate([self._order, self.rng.permutation(n)])
        idx, self._order = self._order[:batch_size], self._order[batch_size:]
        return idx

    def next_batch(self, batch_size: int) -> Batch:
        idx = torch.as_tensor(self.next_indices(batch_size), device=self.data["labels"].device)
        return take_rows(self.data, idx)
