"""Batched multi-node training: k nodes of one host in one forward/backward pass.

peft trains one adapter at a time (its mixed-adapter batches work in eval mode only), so this
module swaps, for the duration of a group's local steps, every trainable linear map of the
shared model (each LoRA A and B, and the head) for a :class:`StackedLinear` that holds the k
nodes' weights as one (k, out, in) tensor and applies weight j to the j-th block of rows.
The frozen base runs once over the k * b rows.

Updates equal those of training the nodes one after another (tested to tight tolerance):
each node's loss is the mean over its own rows and the group loss is their sum, so node j's
gradient is exactly its own; AdamW is elementwise, so :func:`adamw_step` over stacked
tensors, with one step count per node, equals k separate AdamW steps. Dropout masks differ
from the sequential path (one RNG draw for the group), so equality holds with dropout off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class StackedLinear(nn.Module):
    """k linear maps on k equal row blocks: x (k*b, ..., in) -> (k*b, ..., out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight  # (k, out, in)
        self.bias = bias  # (k, out) or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, out_features, in_features = self.weight.shape
        xs = x.reshape(k, -1, in_features)  # rows are node-major: node j owns block j
        y = torch.bmm(xs, self.weight.transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias[:, None, :]
        return y.reshape(*x.shape[:-1], out_features)


def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """id(module) -> (parent, attribute name) for every submodule of ``model``."""
    out = {}
    for parent in model.modules():
        for name, child in parent.named_children():
            out[id(child)] = (parent, name)
    return out


@contextmanager
def stacked_modules(model: nn.Module, slots, stacks: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily replace each trainable linear map by a StackedLinear over ``stacks``.

    ``slots`` is the host's :class:`~decaf_ray.model.ParamSlots`; ``stacks`` maps each slot
    key ("<module>.A", "<module>.B", "classifier.weight", ...) to a (k, ...) tensor.
    """
    parents = _parents(model)
    owners: dict[int, nn.Module] = {}
    for slot in slots.all():
        owners[id(slot.owner)] = slot.owner
    swapped = []
    for owner in owners.values():
        if not isinstance(owner, nn.Linear):
            raise ValueError(
                f"train.batched_nodes needs every trainable module to be nn.Linear; "
                f"{type(owner).__name__} is not: set train.batched_nodes=off"
            )
        keys = {s.attr: s.key for s in slots.all() if s.owner is owner}
        bias = stacks[keys["bias"]] if "bias" in keys else None
        parent, name = parents[id(owner)]
        stacked = StackedLinear(stacks[keys["weight"]], bias)
        if isinstance(parent, nn.ModuleDict):
            parent[name] = stacked
        else:
            setattr(parent, name, stacked)
        swapped.append((parent, name, owner))
    try:
        yield
    finally:
        for parent, name, owner in swapped:
            if isinstance(parent, nn.ModuleDict):
                parent[name] = owner
            else:
                setattr(parent, name, owner)


@torch.no_grad()
def adamw_step(
    params: torch.Tensor,
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    steps: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW step on stacked (k, ...) tensors, in place; ``steps`` (k,) per node.

    The same arithmetic as torch.optim.AdamW's single-tensor path, per row block:
    p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """
    beta1, beta2 = betas
    steps += 1
    shape = (-1,) + (1,) * (params.dim() - 1)
    bc1 = (1 - beta1 ** steps.to(torch.float64)).to(params.dtype).reshape(shape)
    bc2_sqrt = (1 - beta2 ** steps.to(torch.float64)).sqrt().to(params.dtype).reshape(shape)
    if weight_decay:
        params.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grads, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
    params.sub_(lr * exp_avg / (bc1 * denom))


def node_losses(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k,) each node's mean cross-entropy over its own rows (rows node-major).

    Their sum is the group loss: its gradient w.r.t. node j's weights is node j's own.
    """
    per_row = F.cross_entropy(logits, labels, reduction="none")
    return per_row.view(k, -1).mean(dim=1)


def plan_groups(sizes: dict[int, int], batch_size: int, max_rows: int) -> list[list[int]]:
    """Nodes grouped so each group has one batch size and at most ``max_rows`` rows."""
    by_batch: dict[int, list[int]] = {}
    for node_id, n in sorted(sizes.items()):
        by_batch.setdefault(min(batch_size, n), []).append(node_id)
    groups = []
    for b, ids in sorted(by_batch.items()):
        per_group = max(1, max_rows // b)
        groups += [ids[i : i + per_group] for i in range(0, len(ids), per_group)]
    return groups
