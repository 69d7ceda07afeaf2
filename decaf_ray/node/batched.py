"""Batched multi-node training: k nodes of one host in one forward/backward pass.

peft trains one adapter at a time (its mixed-adapter batches work in eval mode only), so this
module swaps, for the duration of a group's local steps, every trainable linear map of the
shared model (each LoRA A and B, and the head) for a :class:`StackedLinear` that holds the k
nodes' weights as one (k, out, in) tensor and applies weight j to the j-th block of rows.
The frozen base runs once over the k * b rows.

Updates equal those of training the nodes one after another (tested to tight tolerance):
each node's loss is the mean over its own rows (its own tokens, for a causal LM) and the group
loss is their sum, so node j's gradient is exactly its own; AdamW is elementwise, so
:func:`~decaf_ray.node.optim.adamw_step` over stacked tensors, with one step count per node,
equals k separate AdamW steps. Dropout masks differ
from the sequential path (one RNG draw for the group), so equality holds with dropout off.
:func:`train_group` is the whole loop: stack, step, write back.

With :class:`Resident` the stacks are not made per round: a host's node groups keep their
parameters and AdamW state stacked on the device between rounds, each node's tensors being
views of its row, and only what travels leaves the device, one copy per tensor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from decaf_ray.node.optim import adamw_step, hyper, stack_moments, view_moments, write_moments
from decaf_ray.node.state import NodeState, concat_rows, derived_seed, seed_dropout, set_mode


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


def stackable(slots) -> bool:
    """Whether every trainable module is a linear map (convolutional LoRA is not batched)."""
    return all(isinstance(s.owner, nn.Linear) for s in slots.all())


@contextmanager
def stacked_modules(model: nn.Module, slots, stacks: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily replace each trainable linear map by a StackedLinear over ``stacks``.

    ``slots`` is the host's :class:`~decaf_ray.node.model.ParamSlots`; ``stacks`` maps each slot
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


@dataclass(frozen=True)
class Stacks:
    """One group's resident state: parameters (k, ...) and, of the parameters the optimizer
    holds, (exp_avg, exp_avg_sq, steps (k,)), by slot key."""

    params: dict[str, torch.Tensor]
    moments: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class Resident:
    """The stacked state of a host's node groups, kept on the device between rounds.

    Each group's parameters, AdamW moments and step counts are (k, ...) tensors, and every
    node's ``nn.Parameter`` and optimizer state are views of its row. All that reads or
    writes a node does so in place (the combine's load, checkpoints, a moment reset), so the
    stacks and the nodes never disagree, and a group's local steps neither stack nor copy
    back. Groups other than these (a subset of nodes, as asynchrony trains) are stacked per
    call as before and written back into the same views.
    """

    def __init__(self, groups: list[list[NodeState]]) -> None:
        self.groups = {tuple(n.node_id for n in nodes): _stack_in_place(nodes) for nodes in groups}

    def get(self, nodes: list[NodeState]) -> Stacks | None:
        return self.groups.get(tuple(n.node_id for n in nodes))


def _stack_in_place(nodes: list[NodeState]) -> Stacks:
    """Stack the nodes' state and make each node's tensors views of its row."""
    params = {}
    for key in nodes[0].params:
        stack = torch.stack([n.params[key].detach() for n in nodes])
        for j, node in enumerate(nodes):
            node.params[key].data = stack[j]
        params[key] = stack
    device = next(iter(params.values())).device
    moments = {}
    for key in nodes[0].optimized():
        pairs = [(n.optimizer, n.params[key]) for n in nodes]
        m, v, steps = stack_moments(pairs, device)
        for j, (opt, p) in enumerate(pairs):
            view_moments(opt, p, m[j], v[j], steps[j])
        moments[key] = (m, v, steps)
    return Stacks(params, moments)


@dataclass(frozen=True)
class GroupResult:
    losses: list[float]  # each node's mean loss over the local steps
    seconds_per_node: float
    tensors: dict[str, np.ndarray]  # slot key -> (k, ...) the group's final values, on CPU


def train_group(
    model: nn.Module,
    slots,
    task,
    nodes: list[NodeState],
    *,
    local_steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    round_idx: int,
    resident: Stacks | None = None,
) -> GroupResult:
    """``local_steps`` AdamW steps of k nodes in one pass each over the shared base.

    The group's parameters and moments are ``resident`` (:class:`Resident`: trained where
    they are), or else stacked for the call and copied back into the nodes afterwards;
    either way they are trained as :class:`StackedLinear` maps, and the final tensors come
    back as numpy stacks in one device-to-host copy each.
    """
    t0 = time.perf_counter()
    k, keys = len(nodes), list(nodes[0].params)
    device = nodes[0].data["labels"].device
    trainable = [key for key in keys if nodes[0].params[key].requires_grad]
    if resident is not None:
        stacks = resident.params
        moments = {key: resident.moments[key] for key in trainable}
    else:
        stacks = {key: torch.stack([n.params[key].detach() for n in nodes]) for key in keys}
        moments = {
            key: stack_moments([(n.optimizer, n.params[key]) for n in nodes], device)
            for key in trainable
        }
    for key in keys:
        stacks[key].requires_grad_(key in trainable)
    settings = hyper(nodes[0].optimizer)
    seed_dropout(derived_seed(seed, nodes[0].node_id, round_idx), device)
    set_mode(model, training=True)
    losses = []
    with stacked_modules(model, slots, stacks):
        for _ in range(local_steps):
            batch = concat_rows([n.next_batch(batch_size) for n in nodes])
            per_node = task.node_losses(model, batch, k)  # (k,)
            per_node.sum().backward()
            for key in trainable:
                m, v, steps = moments[key]
                adamw_step(stacks[key].data, stacks[key].grad, m, v, steps, lr=lr, **settings)
                stacks[key].grad = None
            losses.append(per_node.detach())
    for key in keys:
        stacks[key].requires_grad_(False)
    # one copy each (on the CPU too: resident stacks change in place next round)
    host_stacks = {key: x.detach().to("cpu", copy=True).numpy() for key, x in stacks.items()}
    if resident is None:  # the nodes' own tensors get the results
        for j, node in enumerate(nodes):
            with torch.no_grad():
                for key in keys:
                    node.params[key].copy_(stacks[key][j])
            for key in trainable:
                m, v, steps = moments[key]
                write_moments(node.optimizer, node.params[key], m[j], v[j], float(steps[j]))
    mean_losses = torch.stack(losses).mean(dim=0).tolist()
    return GroupResult(mean_losses, (time.perf_counter() - t0) / k, host_stacks)
