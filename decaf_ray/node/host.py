"""A host: one frozen base model serving many simulated nodes.

A plain Python class with no Ray (:mod:`decaf_ray.node.service` wraps it for the object store,
:mod:`decaf_ray.engine.cluster` makes that an actor). It builds the peft model once; each node
it carries (:class:`~decaf_ray.node.state.NodeState`) owns its LoRA factors and head as
``nn.Parameter`` objects, its AdamW state, its batch sampler and its data shard. Training node i
swaps i's parameters into the shared model (:class:`~decaf_ray.node.model.ParamSlots`), runs
the local steps, and leaves them there; nothing is copied. Results are numpy
:class:`~decaf_ray.algorithms.Adapter` objects.
"""

from __future__ import annotations

import ctypes
import math
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from decaf_ray.algorithms import Adapter, Inbox, make_algorithm, pack_adapter
from decaf_ray.algorithms.base import one_rank
from decaf_ray.config import AlgorithmConfig, ExchangeConfig, ModelConfig, RunConfig, TrainConfig
from decaf_ray.data import Shard
from decaf_ray.math.compress import public_step
from decaf_ray.node.batched import Resident, plan_groups, stackable, train_group
from decaf_ray.node.merged import MergedBase
from decaf_ray.node.model import ParamSlots, build_peft_model, model_path
from decaf_ray.node.optim import init_moments, learning_rate, make_optimizer, set_lr
from decaf_ray.node.state import (
    NodeState,
    derived_seed,
    node_rank,
    seed_dropout,
    set_mode,
    to_device,
)
from decaf_ray.node.tasks import make_task
from decaf_ray.node.vision import view_of


@dataclass(frozen=True)
class HostSpec:
    """Everything that fixes a host's base model; hosts with equal specs are interchangeable."""

    model: ModelConfig
    num_labels: int
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda
    task: str = "classify"  # which head the base model has (decaf_ray.node.tasks)

    @classmethod
    def of(cls, cfg: RunConfig, num_labels: int) -> HostSpec:
        c = cfg.cluster
        return cls(cfg.model, num_labels, c.threads_per_host, c.device, cfg.task.name)


@dataclass(frozen=True)
class RunSpec:
    """Per-run settings a host needs besides its base model."""

    algorithm: AlgorithmConfig
    train: TrainConfig
    eval_batch_size: int
    same_init: bool
    seed: int
    choices: tuple[tuple[int, ...], ...] = ()  # causal_lm on labelled data: each answer's ids
    pad_id: int = 0
    eval_on: str = "shared"  # shared | local | both (eval.on)
    exchange: ExchangeConfig = ExchangeConfig()  # how messages are packed

    @classmethod
    def of(cls, cfg: RunConfig, choices=(), pad_id: int = 0) -> RunSpec:
        return cls(
            cfg.algorithm,
            replace(cfg.train, local_steps=cfg.steps_per_round),  # n tau for centralized
            cfg.eval.batch_size,
            cfg.model.same_init,
            cfg.seed,
            tuple(tuple(c) for c in choices),
            pad_id,
            cfg.eval.on,
            cfg.exchange,
        )


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
        self.model = build_peft_model(spec.model, spec.task, spec.num_labels, seed=0)
        self.model.to(self.device)
        self.slots = ParamSlots(self.model)
        self.merged = MergedBase(self.model)  # the server updates FLoRA merges into the base
        self._init_std = float(getattr(self.model.config, "initializer_range", 0.02))
        self._shapes = {k: (tuple(p.shape), p.dtype) for k, p in self.slots.current().items()}
        self._initial_magnitudes = {
            k: p.detach().cpu().clone()
            for k, p in self.slots.current().items()
            if k.endswith(".magnitude")
        }
        self._view = None
        if spec.task == "image_classify":
            folder = Path(model_path(spec.model)) if spec.model.name == "path" else None
            self._view = view_of(self.model.config, folder, spec.model.image_size)
        self.nodes: dict[int, NodeState] = {}

    # ------------------------------------------------------------------ set-up

    def setup(
        self,
        run: RunSpec,
        shards: dict[int, Shard],
        eval_set: Shard,
        local_evals: dict[int, Shard] | None = None,
    ) -> list[int]:
        """Forget previous nodes; create fresh ones for ``shards`` (node id -> shard), each
        with its own test split from ``local_evals`` when eval.on is local or both. The base
        model starts from its pretrained weights (a previous run's merges are undone)."""
        self.merged.reset()
        self.run = run
        self.algorithm = make_algorithm(run.algorithm)
        self.task = make_task(
            self.spec.task, self.spec.num_labels, run.choices, run.pad_id, self._view
        )
        mode = run.train.batched_nodes
        self.batched = mode == "on" or (
            mode == "auto" and self.device.type == "cuda" and stackable(self.slots)
        )
        self.eval_set = to_device(eval_set, self.device)
        self.nodes = {i: self._new_node(i, shard) for i, shard in sorted(shards.items())}
        ranks = {node_rank(self.spec.model, run.seed, i) for i in self.nodes}
        self.batched = self.batched and len(ranks) == 1  # stacks need one shape
        self.resident: Resident | None = None  # made by the first batched round
        for i, local in (local_evals or {}).items():
            self.nodes[i].eval_data = to_device(local, self.device)
        return sorted(self.nodes)

    def _initial_params(self, node_id: int, round_idx: int = 0) -> dict[str, nn.Parameter]:
        """Seeded initial state: A ~ U(+-1/sqrt(k)) as peft draws it, B = 0, head ~ N(0, std).

        With ``same_init`` every node draws A and the head from the run's seed alone (the
        usual common starting point of decentralized optimisation; dlora_fa requires it).
        ``round_idx`` > 0: the fresh adapter a merging method (FLoRA) restarts from after
        that round, its A drawn the same way from a seed of the round too.
        """
        who = 0 if self.run.same_init else node_id + 1
        seed = (self.run.seed, who, 1) + ((round_idx,) if round_idx else ())
        gen = torch.Generator().manual_seed(derived_seed(*seed))
        rank = node_rank(self.spec.model, self.run.seed, node_id)
        params = {}
        for key, (shape, dtype) in self._shapes.items():
            if key.endswith(".A"):  # this node's rank (its first rows: a draw of A is nested)
                shape = (rank, *shape[1:])
            elif key.endswith(".B"):
                shape = (shape[0], rank, *shape[2:])
            if key.endswith(".A") and self.spec.model.init_lora_weights == "gaussian":
                value = torch.randn(shape, generator=gen) / shape[0]  # peft's: N(0, 1/r^2)
            elif key.endswith(".A"):
                value = (torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(math.prod(shape[1:]))
            elif key.endswith(".magnitude"):  # DoRA: the base's column norms, as peft sets
                value = self._initial_magnitudes[key].clone()
            elif key.endswith(".B") or len(shape) < 2:
                value = torch.zeros(shape)
            else:
                head_gen = torch.Generator().manual_seed(derived_seed(self.run.seed, 0, 2))
                value = torch.randn(shape, generator=head_gen) * self._init_std
            params[key] = nn.Parameter(value.to(device=self.device, dtype=dtype))
        return params

    def _new_node(self, node_id: int, shard: Shard) -> NodeState:
        params = self._initial_params(node_id)
        for key, p in params.items():
            p.requires_grad_(not (key.endswith(".A") and not self.algorithm.trains_A))
        opt = make_optimizer([p for p in params.values() if p.requires_grad], self.run.train)
        return NodeState(node_id, params, to_device(shard, self.device), opt, self.run.seed)

    # ------------------------------------------------------------------ state <-> numpy

    def adapter(self, node_id: int) -> Adapter:
        """A numpy copy of node ``node_id``'s trainable state."""
        p = self.nodes[node_id].params
        return self._adapter_from(
            {k: v.detach().to("cpu", copy=True).numpy() for k, v in p.items()}
        )

    def _adapter_from(self, arr: dict[str, np.ndarray]) -> Adapter:
        """The factors as matrices whatever the layer: a convolution's A (r, in, kh, kw) is
        the (r, in kh kw) matrix and its B (out, r, 1, 1) the (out, r) one, so B @ A is the
        flattened kernel update and every algorithm and metric applies unchanged."""
        mods = self.slots.modules
        return Adapter(
            A={m: arr[f"{m}.A"].reshape(arr[f"{m}.A"].shape[0], -1) for m in mods},
            B={m: arr[f"{m}.B"].reshape(arr[f"{m}.B"].shape[0], -1) for m in mods},
            extra={s.key: arr[s.key] for s in self.slots.extra},
        )

    def _layer_tensors(self, adapter: Adapter, device: torch.device | str) -> dict:
        """The adapter's tensors in the layers' own shapes (any rank: the matrices' inner
        size decides it), by slot key."""
        out = {}
        for m in self.slots.modules:
            shape_a, shape_b = self._shapes[f"{m}.A"][0], self._shapes[f"{m}.B"][0]
            a, b = _tensor(adapter.A[m], device), _tensor(adapter.B[m], device)
            out[f"{m}.A"] = a.view(a.shape[0], *shape_a[1:])
            out[f"{m}.B"] = b.view(b.shape[0], b.shape[1], *shape_b[2:])
        for key, value in adapter.extra.items():
            out[key] = _tensor(value, device)
        return out

    def _load(self, node: NodeState, adapter: Adapter) -> None:
        with torch.no_grad():
            for key, value in self._layer_tensors(adapter, "cpu").items():
                node.params[key].copy_(value)

    # ------------------------------------------------------------------ the three phases

    def train(self, round_idx: int, node_ids: list[int] | None = None) -> dict[int, TrainResult]:
        """Run tau local steps of round ``round_idx`` on the given nodes (default all), one
        node after another or in batched groups; the learning rate follows the schedule."""
        ids = sorted(self.nodes) if node_ids is None else node_ids
        lr = learning_rate(self.run.train, round_idx)
        trained = self.algorithm.trained_factors(round_idx)
        for i in ids:  # the factors this round trains (all, unless the method alternates)
            for key, p in self.nodes[i].optimized().items():
                if key.endswith((".A", ".B")):
                    p.requires_grad_(key[-1] in trained)
        if not self.batched:
            return {i: self._train_node(self.nodes[i], round_idx, lr) for i in ids}
        train = self.run.train
        if self.resident is None:  # every node's group, stacked where the model is
            groups = self._groups(sorted(self.nodes))
            self.resident = Resident([[self.nodes[i] for i in group] for group in groups])
        out = {}
        for group in self._groups(ids):
            nodes = [self.nodes[i] for i in group]
            res = train_group(
                self.model,
                self.slots,
                self.task,
                nodes,
                local_steps=train.local_steps,
                batch_size=train.batch_size,
                lr=lr,
                seed=self.run.seed,
                round_idx=round_idx,
                resident=self.resident.get(nodes),
            )
            for j, node in enumerate(nodes):
                set_lr(node.optimizer, lr)
                # rows of the group's own host copy: no second copy per node
                adapter = self._adapter_from({k: x[j] for k, x in res.tensors.items()})
                message = self.outgoing(adapter, node, round_idx)
                out[node.node_id] = TrainResult(
                    res.losses[j], res.seconds_per_node, adapter, message
                )
        return out

    def _groups(self, ids: list[int]) -> list[list[int]]:
        """The batched groups of nodes ``ids``: one batch size each, at most
        ``train.batched_max_rows`` rows (all nodes: the groups :class:`Resident` keeps)."""
        train = self.run.train
        sizes = {i: self.nodes[i].size for i in ids}
        return plan_groups(sizes, train.batch_size, train.batched_max_rows)

    def _train_node(self, node: NodeState, round_idx: int, lr: float) -> TrainResult:
        t0 = time.perf_counter()
        self.slots.install(node.params)
        set_mode(self.model, training=True)
        seed_dropout(derived_seed(self.run.seed, node.node_id, round_idx), self.device)
        set_lr(node.optimizer, lr)
        losses = []
        for _ in range(self.run.train.local_steps):
            loss = self.task.loss(self.model, node.next_batch(self.run.train.batch_size))
            loss.backward()
            node.optimizer.step()
            node.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        loss = float(torch.stack(losses).mean())
        adapter = self.adapter(node.node_id)
        message = self.outgoing(adapter, node, round_idx)
        return TrainResult(loss, time.perf_counter() - t0, adapter, message)

    def message_bytes(self) -> dict[int, list[int]]:
        """Size of each node's message in rounds 1..P of the algorithm's cycle (P its
        ``message_period``): set by the node's rank and the round, so one node of each rank
        is measured."""
        rounds = range(1, self.algorithm.message_period + 1)
        by_rank: dict[int, list[int]] = {}
        sizes = {}
        for i in sorted(self.nodes):
            rank = node_rank(self.spec.model, self.run.seed, i)
            if rank not in by_rank:
                adapter = self.adapter(i)
                by_rank[rank] = [self.outgoing(adapter, round_idx=t).nbytes for t in rounds]
            sizes[i] = by_rank[rank]
        return sizes

    def outgoing(
        self, adapter: Adapter, node: NodeState | None = None, round_idx: int | None = None
    ) -> Adapter:
        """What a node whose state is ``adapter`` sends: the algorithm's message, packed as
        ``exchange.compress`` says; with error feedback, the node's public copies after
        adding the packed differences (``node`` None: a message of the same size)."""
        algo = self.algorithm
        message = (
            algo.message(adapter)
            if round_idx is None
            else algo.message_in_round(adapter, round_idx)
        )
        x = self.run.exchange
        if x.compress == "none":
            return message
        if not (x.error_feedback and node is not None):
            return pack_adapter(message, x.compress, x.topk_fraction, x.int8_block)
        parts = {}
        for part in ("A", "B", "extra"):
            parts[part] = {}
            for name, value in getattr(message, part).items():
                key = f"{part}.{name}"
                public = node.public.get(key, np.zeros(value.shape, dtype=np.float32))
                sent, node.public[key] = public_step(
                    value, public, x.compress, x.topk_fraction, x.int8_block
                )
                parts[part][name] = sent
        return Adapter(**parts)

    def _choco(self, node: NodeState, own: Adapter, mixed: Adapter) -> Adapter:
        """Error feedback's step: x_i + gamma (mix of the public copies - x^_i), for every
        tensor the node sends; the others as the algorithm left them."""
        gamma = self.run.exchange.gamma
        parts = {}
        for part in ("A", "B", "extra"):
            parts[part] = dict(getattr(mixed, part))
            for name, value in getattr(own, part).items():
                public = node.public.get(f"{part}.{name}")
                if public is not None:
                    step = getattr(mixed, part)[name] - public
                    parts[part][name] = (value + gamma * step).astype(value.dtype)
        return Adapter(**parts)

    def combine(
        self, inboxes: dict[int, Inbox], round_idx: int | None = None
    ) -> dict[int, CombineResult]:
        """Each listed node combines its (weight, message) inbox with the algorithm's rule.

        A merging method (FLoRA: every inbox is the server's update of round ``round_idx``)
        first adds the update to the base model, once per round on this host
        (:mod:`decaf_ray.node.merged`); each node then restarts from a fresh adapter."""
        out = {}
        if self.algorithm.merges and inboxes:
            if round_idx is None:
                raise ValueError(f"{self.algorithm.name} merges per round: give round_idx")
            ((_, update),) = next(iter(inboxes.values()))
            self.merged.merge(round_idx, update)
        t0 = time.perf_counter()
        owns = {i: self.adapter(i) for i in inboxes}
        combined = self.algorithm.combine_all(list(owns.values()), list(inboxes.values()))
        share = (time.perf_counter() - t0) / max(1, len(inboxes))  # one batched call for all
        for (i, own), (new, stats) in zip(owns.items(), combined):
            t0 = time.perf_counter()
            node = self.nodes[i]
            if self.algorithm.merges:  # B A is in the base now: B = 0, a fresh A
                fresh = self._initial_params(i, round_idx)
                A = self._adapter_from({k: p.detach().cpu().numpy() for k, p in fresh.items()}).A
                new = Adapter(A=A, B=new.B, extra=new.extra)
            if self.run.exchange.error_feedback:
                new = self._choco(node, own, new)
            self._load(node, new)
            if self.algorithm.resets_moments:
                factors = [p for k, p in node.params.items() if k.endswith((".A", ".B"))]
                init_moments(node.optimizer, factors)
            out[i] = CombineResult(stats, share + time.perf_counter() - t0, new)
        return out

    @torch.no_grad()
    def evaluate_node(self, node_id: int, adapter: Adapter) -> dict[str, float]:
        """Node ``node_id``'s model (given as ``adapter``) on the shared held-out set and/or,
        as ``local_*`` metrics, on its own test split (``eval.on``)."""
        self._install(adapter)
        out, bs = {}, self.run.eval_batch_size
        if self.run.eval_on in ("shared", "both"):
            out.update(self.task.evaluate(self.model, self.eval_set, bs))
        if self.run.eval_on in ("local", "both"):
            local = self.task.evaluate(self.model, self.nodes[node_id].eval_data, bs)
            out.update({f"local_{k}": v for k, v in local.items()})
        return out

    @torch.no_grad()
    def evaluate_adapter(self, adapter: Adapter) -> dict[str, float]:
        """Held-out metrics (loss, accuracy, F1...: the task's) of a model given as an adapter
        (any rank: e.g. the network mean) on the shared held-out set."""
        self._install(adapter)
        return self.task.evaluate(self.model, self.eval_set, self.run.eval_batch_size)

    def adapter_files(self, adapter: Adapter) -> dict[str, bytes]:
        """``adapter`` as the files of a peft adapter folder (adapter_model.safetensors,
        adapter_config.json) for this base model. A wider adapter (the network average, rank
        n r) is saved with its own rank and an alpha that keeps the layers' scaling, so
        ``PeftModel.from_pretrained`` rebuilds exactly the evaluated model; modules of
        different ranks (the average's dense and factored shape groups) are zero-padded to
        the largest, as peft has one ``r``. After FLoRA's merges the adapter also carries the
        merged update (on the pretrained base), exactly and densely
        (:meth:`MergedBase.widened`)."""
        import tempfile

        adapter = one_rank(self.merged.widened(adapter))
        self._install(adapter)
        conf = self.model.peft_config["default"]
        saved = (conf.r, conf.lora_alpha)
        rank = next(iter(adapter.A.values())).shape[0]
        grow = rank / conf.r
        conf.r, conf.lora_alpha = rank, conf.lora_alpha * (grow**0.5 if conf.use_rslora else grow)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                self.model.save_pretrained(tmp)
                return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        finally:
            conf.r, conf.lora_alpha = saved

    def snapshot(self, node_ids: list[int]) -> dict[int, tuple[dict[str, torch.Tensor], dict]]:
        """The listed nodes' whole private state (:meth:`NodeState.snapshot`), for a
        checkpoint."""
        return {i: self.nodes[i].snapshot() for i in node_ids}

    def restore(self, snapshots: dict[int, tuple[dict[str, torch.Tensor], dict]]) -> None:
        """Set nodes (made by :meth:`setup`) back to the state of a snapshot."""
        for i, (tensors, meta) in snapshots.items():
            self.nodes[i].restore(tensors, meta)

    def base_snapshot(self) -> dict[str, torch.Tensor]:
        """What is merged into the base model (FLoRA), the same on every host: {} if none."""
        return self.merged.snapshot()

    def restore_base(self, tensors: dict[str, torch.Tensor]) -> None:
        """The base model as a :meth:`base_snapshot` of any host of the run left it."""
        self.merged.restore(tensors)

    def _install(self, adapter: Adapter) -> None:
        """Put ``adapter``'s tensors (plain tensors, not a node's parameters) into the model."""
        self.slots.install(self._layer_tensors(adapter, self.device))


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


def _tensor(x: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor of ``x`` (copied if read-only, as arrays from the object store are)."""
    return torch.from_numpy(np.require(x, requirements="W")).to(device)
