"""A host: one frozen base model serving many simulated nodes.

A plain Python class (``decaf_ray.cluster`` turns it into a Ray actor). It builds the peft
model once; each node it carries owns its LoRA factors and head as ``nn.Parameter`` objects,
its AdamW state, its batch sampler and its data shard. Training node i swaps i's parameters
into the shared model (:class:`~decaf_ray.model.ParamSlots`), runs the local steps, and leaves
them there; nothing is copied. Results travel as numpy :class:`~decaf_ray.algorithms.Adapter`.
"""

from __future__ import annotations

import ctypes
import math
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from decaf_ray.algorithms import Adapter, Inbox, make_algorithm
from decaf_ray.batched import adamw_step, node_losses, plan_groups, stacked_modules
from decaf_ray.config import AlgorithmConfig, ModelConfig, TrainConfig
from decaf_ray.model import ParamSlots, build_peft_model


@dataclass(frozen=True)
class Shard:
    """Tokenised examples: input_ids (n, L) int32, attention_mask (n, L) int8, labels (n,)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class HostSpec:
    """Everything that fixes a host's base model; hosts with equal specs are interchangeable."""

    model: ModelConfig
    num_labels: int
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class RunSpec:
    """Per-run settings a host needs besides its base model."""

    algorithm: AlgorithmConfig
    train: TrainConfig
    eval_batch_size: int
    same_init: bool
    seed: int


@dataclass(frozen=True)
class TrainResult:
    loss: float
    train_s: float
    adapter: Adapter  # full state after local steps
    message: Adapter  # what the algorithm sends (may be ``adapter`` itself)


@dataclass(frozen=True)
class CombineResult:
    stats: dict[str, float]
    combine_s: float
    adapter: Adapter  # state after combining


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (seed, node, round...) and nothing else."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class _Node:
    """The private state of one simulated node inside a host."""

    def __init__(
        self,
        node_id: int,
        params: dict[str, nn.Parameter],
        shard: dict,
        optimizer: torch.optim.Optimizer,
        seed: int,
    ) -> None:
        self.node_id = node_id
        self.params = params
        self.shard = shard  # tensors on the host's device
        self.optimizer = optimizer
        self.rng = np.random.default_rng(derived_seed(seed, node_id, 7))
        self._order = np.empty(0, dtype=np.int64)

    def next_batch(self, batch_size: int) -> np.ndarray:
        """Indices of the next batch: seeded epochs over the shard, without replacement."""
        n = len(self.shard["labels"])
        if len(self._order) < min(batch_size, n):
            self._order = np.concatenate([self._order, self.rng.permutation(n)])
        idx, self._order = self._order[:batch_size], self._order[batch_size:]
        return idx


class Host:
    """Holds the shared base model and the nodes assigned to it."""

    def __init__(self, spec: HostSpec) -> None:
        keep_heap()
        torch.set_num_threads(spec.threads)
        use_cuda = spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if use_cuda:
            torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
        self.spec = spec
        # The base weights do not depend on the run's seed (tiny-bert's random ones use seed 0),
        # so one host serves every run of a sweep; the run's seed sets the initial adapters.
        self.model = build_peft_model(spec.model, spec.num_labels, seed=0).to(self.device)
        self.slots = ParamSlots(self.model)
        self._init_std = float(getattr(self.model.config, "initializer_range", 0.02))
        self._shapes = {k: (tuple(p.shape), p.dtype) for k, p in self.slots.current().items()}
        self.nodes: dict[int, _Node] = {}

    # ------------------------------------------------------------------ set-up

    def setup(self, run: RunSpec, shards: dict[int, Shard], eval_set: Shard) -> list[int]:
        """Forget previous nodes; create fresh ones for ``shards`` (node id -> shard)."""
        self.run = run
        self.algorithm = make_algorithm(run.algorithm)
        mode = run.train.batched_nodes
        self.batched = mode == "on" or (mode == "auto" and self.device.type == "cuda")
        self.eval_set = self._to_device(eval_set)
        self.nodes = {i: self._new_node(i, shard) for i, shard in sorted(shards.items())}
        return sorted(self.nodes)

    def _to_device(self, shard: Shard) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.tensor(shard.input_ids, dtype=torch.long, device=self.device),
            "attention_mask": torch.tensor(
                shard.attention_mask, dtype=torch.long, device=self.device
            ),
            "labels": torch.tensor(shard.labels, dtype=torch.long, device=self.device),
        }

    def _initial_params(self, node_id: int) -> dict[str, nn.Parameter]:
        """Seeded initial state: A ~ U(+-1/sqrt(k)) as peft draws it, B = 0, head ~ N(0, std).

        With ``same_init`` every node draws A and the head from the run's seed alone (the
        usual common starting point of decentralized optimisation; dlora_fa requires it).
        """
        who = 0 if self.run.same_init else node_id + 1
        gen = torch.Generator().manual_seed(derived_seed(self.run.seed, who, 1))
        params = {}
        for key, (shape, dtype) in self._shapes.items():
            if key.endswith(".A"):
                value = (torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(shape[1])
            elif key.endswith(".B") or len(shape) < 2:
                value = torch.zeros(shape)
            else:
                head_gen = torch.Generator().manual_seed(derived_seed(self.run.seed, 0, 2))
                value = torch.randn(shape, generator=head_gen) * self._init_std
            params[key] = nn.Parameter(value.to(device=self.device, dtype=dtype))
        return params

    def _new_node(self, node_id: int, shard: Shard) -> _Node:
        params = self._initial_params(node_id)
        trainable = []
        for key, p in params.items():
            frozen = key.endswith(".A") and not self.algorithm.trains_A
            p.requires_grad_(not frozen)
            if not frozen:
                trainable.append(p)
        opt = torch.optim.AdamW(
            trainable, lr=self.run.train.lr, weight_decay=self.run.train.weight_decay
        )
        _init_moments(opt)
        return _Node(node_id, params, self._to_device(shard), opt, self.run.seed)

    # ------------------------------------------------------------------ state <-> numpy

    def adapter(self, node_id: int) -> Adapter:
        """A numpy copy of node ``node_id``'s trainable state."""
        p = self.nodes[node_id].params
        return self._adapter_from(
            {k: v.detach().to("cpu", copy=True).numpy() for k, v in p.items()}
        )

    def _adapter_from(self, arr: dict[str, np.ndarray]) -> Adapter:
        mods = self.slots.modules
        return Adapter(
            A={m: arr[f"{m}.A"] for m in mods},
            B={m: arr[f"{m}.B"] for m in mods},
            extra={s.key: arr[s.key] for s in self.slots.extra},
        )

    def _load(self, node: _Node, adapter: Adapter) -> None:
        with torch.no_grad():
            for m in self.slots.modules:
                node.params[f"{m}.A"].copy_(_tensor(adapter.A[m]))
                node.params[f"{m}.B"].copy_(_tensor(adapter.B[m]))
            for key, value in adapter.extra.items():
                node.params[key].copy_(_tensor(value))

    # ------------------------------------------------------------------ the three phases

    def train(
        self, round_idx: int, lr: float, node_ids: list[int] | None = None
    ) -> dict[int, TrainResult]:
        """Run tau local steps on the given nodes (default all), one node after another."""
        ids = sorted(self.nodes) if node_ids is None else node_ids
        if not self.batched:
            return {i: self._train_node(self.nodes[i], round_idx, lr) for i in ids}
        sizes = {i: len(self.nodes[i].shard["labels"]) for i in ids}
        out = {}
        for group in plan_groups(sizes, self.run.train.batch_size, self.run.train.batched_max_rows):
            out.update(self._train_group([self.nodes[i] for i in group], round_idx, lr))
        return out

    def _train_node(self, node: _Node, round_idx: int, lr: float) -> TrainResult:
        t0 = time.perf_counter()
        self.slots.install(node.params)
        self.model.train()
        torch.manual_seed(derived_seed(self.run.seed, node.node_id, round_idx))  # dropout
        for group in node.optimizer.param_groups:
            group["lr"] = lr
        losses = []
        for _ in range(self.run.train.local_steps):
            idx = torch.as_tensor(node.next_batch(self.run.train.batch_size), device=self.device)
            out = self.model(**_batch(node.shard, idx))
            out.loss.backward()
            node.optimizer.step()
            node.optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.detach())
        loss = float(torch.stack(losses).mean())
        adapter = self.adapter(node.node_id)
        message = self.algorithm.message(adapter)
        return TrainResult(loss, time.perf_counter() - t0, adapter, message)

    def _train_group(self, nodes: list[_Node], round_idx: int, lr: float) -> dict[int, TrainResult]:
        """Local steps of k nodes in one pass over the shared base (see decaf_ray.batched)."""
        t0 = time.perf_counter()
        k, keys = len(nodes), list(nodes[0].params)
        stacks = {key: torch.stack([n.params[key].detach() for n in nodes]) for key in keys}
        trainable = [key for key in keys if nodes[0].params[key].requires_grad]
        for key in trainable:
            stacks[key].requires_grad_(True)
        moments = {key: self._stack_moments(nodes, key) for key in trainable}
        torch.manual_seed(derived_seed(self.run.seed, nodes[0].node_id, round_idx))  # dropout
        self.model.train()
        losses = []
        with stacked_modules(self.model, self.slots, stacks):
            for _ in range(self.run.train.local_steps):
                batches = [
                    _batch(
                        n.shard,
                        torch.as_tensor(
                            n.next_batch(self.run.train.batch_size), device=self.device
                        ),
                    )
                    for n in nodes
                ]
                batch = _concat(batches)
                logits = self.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
                per_node = node_losses(logits, batch["labels"], k)
                per_node.sum().backward()
                group = nodes[0].optimizer.param_groups[0]
                for key in trainable:
                    m, v, steps = moments[key]
                    adamw_step(
                        stacks[key].data,
                        stacks[key].grad,
                        m,
                        v,
                        steps,
                        lr=lr,
                        betas=group["betas"],
                        eps=group["eps"],
                        weight_decay=group["weight_decay"],
                    )
                    stacks[key].grad = None
                losses.append(per_node.detach())
        out = {}
        host_stacks = {key: x.detach().cpu().numpy() for key, x in stacks.items()}  # one copy
        per_node_s = (time.perf_counter() - t0) / k
        mean_losses = torch.stack(losses).mean(dim=0).tolist()
        for j, node in enumerate(nodes):
            with torch.no_grad():
                for key in keys:
                    node.params[key].copy_(stacks[key][j])
            for key in trainable:
                m, v, steps = moments[key]
                st = node.optimizer.state[node.params[key]]
                st["step"].fill_(float(steps[j]))
                st["exp_avg"].copy_(m[j])
                st["exp_avg_sq"].copy_(v[j])
            for g in node.optimizer.param_groups:
                g["lr"] = lr
            adapter = self._adapter_from({key: x[j].copy() for key, x in host_stacks.items()})
            out[node.node_id] = TrainResult(
                mean_losses[j], per_node_s, adapter, self.algorithm.message(adapter)
            )
        return out

    def _stack_moments(self, nodes: list[_Node], key: str):
        """(exp_avg, exp_avg_sq, steps) of ``key`` over the group."""
        states = [n.optimizer.state[n.params[key]] for n in nodes]
        return (
            torch.stack([st["exp_avg"] for st in states]),
            torch.stack([st["exp_avg_sq"] for st in states]),
            torch.tensor([float(st["step"]) for st in states], device=self.device),
        )

    def combine(self, inboxes: dict[int, Inbox]) -> dict[int, CombineResult]:
        """Each listed node combines its (weight, message) inbox with the algorithm's rule."""
        out = {}
        for i, inbox in inboxes.items():
            t0 = time.perf_counter()
            node = self.nodes[i]
            new, stats = self.algorithm.combine(self.adapter(i), inbox)
            self._load(node, new)
            if self.algorithm.resets_moments:
                _init_moments(
                    node.optimizer, [p for k, p in node.params.items() if k.endswith((".A", ".B"))]
                )
            out[i] = CombineResult(stats, time.perf_counter() - t0, new)
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[int, tuple[float, float]]:
        """(loss, accuracy) of every node's model on the held-out set."""
        out = {}
        for i, node in self.nodes.items():
            self.slots.install(node.params)
            out[i] = self._eval_installed()
        return out

    @torch.no_grad()
    def evaluate_adapter(self, adapter: Adapter) -> tuple[float, float]:
        """(loss, accuracy) of a model given as an adapter (any rank: e.g. the network mean)."""
        params = {}
        for m in self.slots.modules:
            params[f"{m}.A"] = _tensor(adapter.A[m], self.device)
            params[f"{m}.B"] = _tensor(adapter.B[m], self.device)
        for key, value in adapter.extra.items():
            params[key] = _tensor(value, self.device)
        self.slots.install(params)
        return self._eval_installed()

    def _eval_installed(self) -> tuple[float, float]:
        self.model.eval()
        n = len(self.eval_set["labels"])
        bs = self.run.eval_batch_size
        loss_sum, correct = 0.0, 0
        for start in range(0, n, bs):
            idx = torch.arange(start, min(start + bs, n), device=self.device)
            batch = _batch(self.eval_set, idx)
            out = self.model(**batch)
            loss_sum += float(out.loss) * len(idx)
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        return loss_sum / n, correct / n


def keep_heap() -> None:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    Every local step allocates and frees the same activations (MBs each). By default glibc
    returns them (munmap, heap trim), and the next step takes page faults to zero-fill fresh
    pages: 10^4-10^5 faults per round in a Ray actor, whose tasks run on a non-main thread
    with its own, more often trimmed, arena. Measured with 8 MiniLM nodes per process on 2
    cores: about 5% of a round, the gap between a Ray host and a bare process. With a fixed
    mmap threshold of 32 MiB (the largest glibc allows) and trimming only past 1 GiB, the
    faults vanish; a process's peak memory stays about the same. A no-op off glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, 2**30)


def _init_moments(opt: torch.optim.AdamW, params: list[nn.Parameter] | None = None) -> None:
    """Give ``params`` (default: all of ``opt``'s) fresh AdamW state: step 0, zero moments.

    This is the state AdamW would create lazily at its first step, made up front (or zeroed
    in place, for a reset). Lazily, a node's first step allocates its moments between the
    activations of that step, and the heap holes they pin cost about 4 MB per node; made at
    set-up, the moments of all nodes sit together (measured: 5.0 -> 1-2 MiB per node).
    """
    wanted = {id(p) for p in params} if params is not None else None
    for group in opt.param_groups:
        for p in group["params"]:
            if wanted is not None and id(p) not in wanted:
                continue
            st = opt.state[p]
            if st:
                st["step"].zero_()
                st["exp_avg"].zero_()
                st["exp_avg_sq"].zero_()
            else:  # the layout of torch.optim.Adam._init_group (not fused, not capturable)
                st["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _batch(data: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of a tokenised set, trimmed to the longest sequence among them."""
    mask = data["attention_mask"][idx]
    length = int(mask.sum(dim=1).max())
    return {
        "input_ids": data["input_ids"][idx, :length],
        "attention_mask": mask[:, :length],
        "labels": data["labels"][idx],
    }


def _concat(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Node-major concatenation of batches, padded to the longest sequence among them."""
    length = max(b["input_ids"].shape[1] for b in batches)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, length - x.shape[1]))

    return {
        "input_ids": torch.cat([pad(b["input_ids"]) for b in batches]),
        "attention_mask": torch.cat([pad(b["attention_mask"]) for b in batches]),
        "labels": torch.cat([b["labels"] for b in batches]),
    }


def _tensor(x: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor of ``x`` (copied if read-only, as arrays from the object store are)."""
    return torch.from_numpy(np.require(x, requirements="W")).to(device)
