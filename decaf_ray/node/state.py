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

from decaf_ray.config import ModelConfig
from decaf_ray.data import Shard
from decaf_ray.node.optim import load_moments, moments

# labels (b,) and input_ids (b, L), attention_mask (b, L); causal LM: loss_mask (b, L),
# prompt_len (b,); images: pixels (b, H, W, C) uint8 instead of the token arrays
Batch = dict[str, torch.Tensor]


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (seed, node, round...) and nothing else."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_dropout(seed: int, device: torch.device) -> None:
    """Seed the generator dropout draws from on ``device``, and only that one.

    ``torch.manual_seed`` also queues a seed for every accelerator backend; where none is
    initialised each queued call records a stack trace (about 2 ms on a small CPU host, per
    node and round, more than a tiny model's step). The CPU draws are the same either way."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device's generator


def set_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)`` unless the model is in that mode already: switching walks
    every submodule (about 2 ms for a small BERT), and a host trains node after node."""
    if model.training != training:
        model.train(training)


def node_rank(model: ModelConfig, seed: int, node_id: int) -> int:
    """Node ``node_id``'s LoRA rank: ``model.ranks[i]``, a draw from ``model.rank_tiers``
    seeded by the run's seed and the node, or ``model.r``."""
    if model.ranks:
        return int(model.ranks[node_id])
    if model.rank_tiers:
        ranks = sorted(int(r) for r in model.rank_tiers)
        share = np.array([model.rank_tiers[r] for r in ranks], dtype=np.float64)
        rng = np.random.default_rng(derived_seed(seed, node_id, 11))
        return int(rng.choice(ranks, p=share / share.sum()))
    return model.r


def to_device(shard: Shard, device: torch.device) -> Batch:
    """The whole shard as tensors on ``device`` (every array it holds): token arrays as long,
    images as they are stored (uint8)."""
    return {
        k: torch.tensor(v, dtype=torch.uint8 if k == "pixels" else torch.long, device=device)
        for k, v in shard.arrays().items()
    }


def take_rows(data: Batch, idx: torch.Tensor) -> Batch:
    """Rows ``idx`` of a set; token arrays trimmed to the longest sequence among them."""
    if "attention_mask" not in data:
        return {k: v[idx] for k, v in data.items()}
    mask = data["attention_mask"][idx]
    length = int(mask.sum(dim=1).max())
    return {k: v[idx, :length] if v.dim() == 2 else v[idx] for k, v in data.items()}


def concat_rows(batches: list[Batch]) -> Batch:
    """Node-major concatenation of batches, padded to the longest sequence among them."""
    if "input_ids" not in batches[0]:
        return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    length = max(b["input_ids"].shape[1] for b in batches)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, length - x.shape[1])) if x.dim() == 2 else x

    return {k: torch.cat([pad(b[k]) for b in batches]) for k in batches[0]}


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
        self.eval_data: Batch | None = None  # the node's own test split (eval.on: local)
        self.public: dict[str, np.ndarray] = {}  # CHOCO public copies of what it sends

    @property
    def size(self) -> int:
        return len(self.data["labels"])

    def trainable(self) -> dict[str, nn.Parameter]:
        return {k: p for k, p in self.params.items() if p.requires_grad}

    def optimized(self) -> dict[str, nn.Parameter]:
        """The parameters the optimizer holds (trainable in some round), by key."""
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return {k: p for k, p in self.params.items() if id(p) in held}

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

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything that decides this node's future, as CPU tensors plus a JSON-able dict:
        parameters, AdamW moments, the sampler's pending order and its generator's state, the
        public copies of error feedback."""
        tensors = {f"param.{k}": p.detach().to("cpu", copy=True) for k, p in self.params.items()}
        for key, value in moments(self.optimizer, self.optimized()).items():
            tensors[f"adamw.{key}"] = value
        tensors["order"] = torch.from_numpy(self._order.copy())
        for key, value in self.public.items():
            tensors[f"public.{key}"] = torch.from_numpy(value.copy())
        return tensors, {"rng": self.rng.bit_generator.state}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Undo everything since :meth:`snapshot` (the inverse of it)."""
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(tensors[f"param.{k}"])
        adamw = {k[len("adamw.") :]: v for k, v in tensors.items() if k.startswith("adamw.")}
        load_moments(self.optimizer, self.optimized(), adamw)
        self._order = tensors["order"].numpy().astype(np.int64, copy=True)
        self.public = {
            k[len("public.") :]: v.numpy().copy()
            for k, v in tensors.items()
            if k.startswith("public.")
        }
        self.rng.bit_generator.state = meta["rng"]
