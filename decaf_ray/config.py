"""One typed run config: nested frozen dataclasses, loaded from YAML, overridden with ``--set``.

``load_config(path, overrides)`` reads the YAML, applies ``key.sub=value`` overrides, builds the
dataclasses and validates everything once, raising a single :class:`ConfigError` that lists every
problem found. ``to_dict`` turns a config back into plain data, saved beside the results.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from topologies import BUILDERS, MIXING_RULES

TOPOLOGIES = tuple(BUILDERS)


class ConfigError(ValueError):
    """A config value is wrong; the message lists every problem and how to fix it."""


@dataclass(frozen=True)
class AlgorithmConfig:
    # centralized: the oracle, one model on the union of the topology.n nodes' shards;
    # ffa_lora, fedsa_lora, flexlora, flora: federated (a server); dfedsa_lora: on the graph
    name: Literal[
        "local",
        "fedavg",
        "dlora",
        "dlora_fa",
        "decaf",
        "centralized",
        "ffa_lora",
        "fedsa_lora",
        "dfedsa_lora",
        "flexlora",
        "flora",
        "rolora",
        "drolora",
    ] = "decaf"
    sv_split: Literal["balanced", "all_in_B"] = "balanced"  # decaf: how S is shared by B and A
    reset_moments: bool = False  # decaf: zero Adam moments of LoRA factors after each TSVD
    # decaf: turn the new B, A by the orthogonal Q closest to the node's own factors (the same
    # product B A), so the AdamW moments keep referring to roughly the same coordinates
    align: bool = False
    # drolora: gossip only the factor trained this round, or both (ADF-LoRA style)
    rolora_mix: Literal["trained", "both"] = "trained"


# algorithms defined for nodes of different ranks: decaf truncates to each node's rank;
# fedavg, dlora and flexlora zero-pad to the largest and truncate back (the padding rule);
# flora's stack of factors holds any ranks as they are
HETERO_RANK_ALGORITHMS = ("local", "fedavg", "dlora", "decaf", "flexlora", "flora")

# algorithms with a server that averages every message of a round (sync schedules only)
SERVER_ALGORITHMS = ("fedavg", "ffa_lora", "fedsa_lora", "flexlora", "flora", "rolora")

# What the named models are (decaf_ray/node/zoo.py builds them): which tasks each one fits.
ENCODER_MODELS = ("minilm", "tiny-bert")
CAUSAL_MODELS = ("smollm2-135m", "tiny-llama", "tiny-gpt2")
IMAGE_MODELS = ("efficientnet-lite0", "tiny-vit", "tiny-clip")


@dataclass(frozen=True)
class TaskConfig:
    """What the nodes learn (see decaf_ray/node/tasks.py)."""

    name: Literal["classify", "causal_lm", "image_classify"] = "classify"
    # causal_lm on labelled text: the prompt; the answer is the class name. {text} is the
    # text (truncated to fit data.max_length), {choices} the class names joined by ", ".
    prompt: str = (
        "Which topic is this news article about? Answer with one of: {choices}.\n\n{text}\n\nTopic:"
    )
    chat_template: bool = True  # causal_lm: wrap prompts in the tokenizer's chat template
    # image_classify with a CLIP model: the zero-shot head's text for each class ({class})
    class_prompt: str = "a photo of a {class}."


@dataclass(frozen=True)
class TopologyConfig:
    name: str = "ring"
    n: int = 8
    mixing: str = "uniform"
    path: str | None = None  # edge list or GraphML file, for name: file
    params: dict[str, Any] = field(default_factory=dict)  # builder options (p, degree, seed...)


@dataclass(frozen=True)
class DataConfig:
    source: Literal["bbcnews", "file", "datasets", "sharegpt", "digits", "mnist", "images"] = (
        "bbcnews"
    )
    path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str = "prompt"  # causal_lm on prompt/response data (or a messages column)
    response_column: str = "response"
    image_column: str = "image"  # image_classify on a datasets folder
    max_samples: int | None = 1000  # stratified subsample of the whole set before splitting
    test_fraction: float = 0.2
    eval_samples: int | None = 200  # held-out rows each evaluation uses
    partition: Literal["iid", "dirichlet", "classes", "shots"] = "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration; small = strong label skew
    classes_per_node: int = 2
    shots: int = 4  # partition: shots: samples of every class per node (few-shot)
    # shards that may overlap: each node draws this many samples from the whole training pool
    # by the partition rule, independently of the others (more nodes than samples; null: a
    # disjoint partition)
    samples_per_node: int | None = None
    # what a non-IID partition splits by: the label, or (texts; prompt/response data have no
    # labels) data.groups groups of the text's length or of k-means clusters of its words
    split_by: Literal["label", "length", "cluster"] = "label"
    groups: int = 5
    max_length: int = 64  # tokens per text


@dataclass(frozen=True)
class ModelConfig:
    name: Literal[
        "minilm",
        "smollm2-135m",
        "efficientnet-lite0",
        "tiny-bert",
        "tiny-llama",
        "tiny-gpt2",
        "tiny-vit",
        "tiny-clip",
        "path",
    ] = "minilm"
    path: str | None = None  # any transformers model directory, for name: path
    image_size: int | None = None  # vision models: input resolution (None: the model's own)
    target_modules: tuple[str, ...] = ()  # empty: the architecture's usual ones (README)
    r: int = 8  # the rank; with ranks or rank_tiers, the largest (it sets alpha / r for all)
    # heterogeneous ranks: one per node, or {rank: share} drawn per node from the seed
    ranks: tuple[int, ...] = ()
    rank_tiers: dict[int, float] = field(default_factory=dict)
    alpha: float = 16.0
    dropout: float = 0.0
    same_init: bool = True  # every node starts from the same A (B is zero)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the frozen base's weights
    init_lora_weights: Literal["default", "gaussian"] = "default"  # A's draw (B is zero)
    use_rslora: bool = False  # scale the update by alpha / sqrt(r) instead of alpha / r
    use_dora: bool = False  # DoRA: a trained magnitude per output, averaged like the head

    def __hash__(self) -> int:  # hosts are pooled by spec; rank_tiers is a mapping
        return hash(
            tuple(
                tuple(sorted(v.items())) if isinstance(v, dict) else v
                for v in (getattr(self, f.name) for f in dataclasses.fields(self))
            )
        )


@dataclass(frozen=True)
class TrainConfig:
    rounds: int = 10
    local_steps: int = 2  # tau: optimizer steps between exchanges
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # Train a host's nodes in one batched pass (auto: on GPUs only; CPUs gain nothing).
    batched_nodes: Literal["off", "on", "auto"] = "auto"
    batched_max_rows: int = 256  # rows (nodes x batch) per batched pass: bounds memory


@dataclass(frozen=True)
class EvalConfig:
    every: int = 5  # evaluate every k rounds (and always after the last one)
    batch_size: int = 64
    network_average: bool = True  # also evaluate the model with the average of all nodes' updates
    metrics_every: int = 1  # consensus and drift metrics every k rounds (they cost O(n d r k))
    # shared: one held-out set for every node; local: each node's own test split (carved from
    # its partition, data.test_fraction of it: personalisation); both
    on: Literal["shared", "local", "both"] = "shared"


@dataclass(frozen=True)
class ClusterConfig:
    address: str | None = None  # None: start a local Ray; "auto" or HOST:PORT: join a cluster
    nodes_per_actor: int | None = None  # None: spread nodes over one host per CPU
    threads_per_host: int = 1
    num_cpus: int | None = None  # CPUs for a local cluster (None: all)
    gpus_per_host: float | None = None  # None: share the cluster's GPUs evenly, if any
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # a host that dies (killed, out of memory) or stops answering: restart every host and go
    # on from the run's latest checkpoint, at most this many times per run (0: stop at once)
    restarts: int = 2
    # seconds without any answer from the hosts before they count as hung (None: 10 times the
    # slowest round so far, at least 300 s; before round 1 is done, no limit)
    call_timeout_s: float | None = None


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs/out"
    progress: bool = True
    # peft adapter folders at the end of a run: none, the network-average model, or all
    # (every node's too): adapters/average, adapters/node-007 (load with PeftModel)
    save_adapters: Literal["none", "average", "all"] = "average"
    save_nodes: tuple[int, ...] = ()  # also save these nodes' own adapters (with average)


@dataclass(frozen=True)
class ExchangeConfig:
    """How messages travel (decaf_ray/math/compress.py): each tensor a node sends packed by
    ``compress`` (none, fp16, bf16, int8, topk); bytes sent count the packed size. A server's
    broadcast is not compressed."""

    compress: Literal["none", "fp16", "bf16", "int8", "topk"] = "none"
    topk_fraction: float = 0.1  # topk: the share of values sent (the largest in magnitude)
    int8_block: int = 0  # int8: values per scale (0: one scale per row)
    # CHOCO-gossip error feedback (dlora, dlora_fa, dfedsa_lora): send packed differences to
    # public copies, mix with step gamma (top-k 10% needs gamma <= 0.2; int8 works with 1)
    error_feedback: bool = False
    gamma: float = 0.2


@dataclass(frozen=True)
class CheckpointConfig:
    """Whole-simulation checkpoints in <run>/checkpoints/ (``decaf-ray resume`` reads them):
    every ``every`` rounds, when a run is stopped by a signal, and at its end (0: at a stop
    and at the end only); the latest ``keep`` are kept."""

    every: int = 10
    keep: int = 2


@dataclass(frozen=True)
class ScheduleConfig:
    """When things happen, on a virtual clock (see decaf_ray/virtual/ and the README)."""

    mode: Literal["sync", "async", "bounded", "deadline"] = "sync"
    staleness: int = 1  # bounded: a node combines only when every neighbour is within s rounds
    deadline_s: float | None = None  # deadline: messages arriving later in a round are dropped
    time_budget_s: float | None = None  # no node starts a round after this virtual time
    compute: Literal["constant", "factors", "lognormal", "pareto", "trace"] = "constant"
    step_s: float = 1.0  # virtual seconds per local step (the base of every compute model)
    factors: tuple[float, ...] = ()  # compute: factors, one per node
    sigma: float = 0.5  # compute: lognormal spread
    pareto_alpha: float = 2.0  # compute: pareto tail index (> 1)
    trace_path: str | None = None  # compute: trace, one row of seconds per step per node
    latency_s: float = 0.0
    bandwidth_bytes_s: float | None = None  # None: infinite
    straggler_fraction: float = 0.0
    straggler_factor: float = 5.0
    straggler_every: int = 0  # 0: a fixed set of stragglers; k: re-drawn every k rounds
    loss_p: float = 0.0  # probability that any one message is lost
    link_loss: dict[str, float] = field(default_factory=dict)  # {"u-v": p} per-link overrides
    churn: tuple[tuple[int, int, int], ...] = ()  # [node, leave_round, rejoin_round] entries
    churn_p: float = 0.0  # probability a present node leaves at the start of a round
    churn_down: int = 1  # rounds a node stays away when it leaves at random
    rejoin: Literal["stale", "neighbours"] = "stale"  # a returning node's starting state
    missing: Literal["renormalise", "to_self"] = "renormalise"  # weight of messages not held
    graph: Literal["static", "erdos_renyi", "one_peer_exponential", "matching"] = "static"
    graph_p: float | None = None  # graph: erdos_renyi edge probability per round
    debug_sleep_s: dict[int, float] = field(default_factory=dict)  # real sleep per node (tests)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # Optional sweep: dotted key -> list of values; each combination is one run.
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def steps_per_round(self) -> int:
        """Optimizer steps each simulated model takes per round: tau (train.local_steps), or
        n tau for algorithm.name=centralized, whose one model does the steps of all n nodes."""
        if self.algorithm.name == "centralized":
            return self.train.local_steps * self.topology.n
        return self.train.local_steps


# --------------------------------------------------------------------------- building


def _build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from a mapping, collecting type problems into ``problems``.

    A field whose value has a type problem keeps its default, so the value checks that
    follow see well-typed values and can report their own problems alongside.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where or 'config'}: expected a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            prefix = f"{where}." if where else ""
            problems.append(f"unknown key '{prefix}{key}'; known keys: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        path = f"{where}.{f.name}" if where else f.name
        before = len(problems)
        value = _coerce(hints[f.name], data[f.name], path, problems)
        if len(problems) == before or dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = value
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """``value`` as type ``tp`` (items of tuples and keys and values of dicts included); a
    problem is appended for every part that does not fit."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path, problems)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):
            value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            problems.append(f"{path}={value!r} is unknown; choose one of {choices}")
        return value
    if origin is tuple:
        if isinstance(value, str) and args[-1:] == (Ellipsis,):
            value = [value]
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}={value!r} should be a list")
            return ()
        if args[-1:] == (Ellipsis,):
            items = [(args[0], v) for v in value]
        elif len(value) != len(args):
            problems.append(f"{path}={list(value)!r} should have {len(args)} items")
            return tuple(value)
        else:
            items = list(zip(args, value))
        return tuple(_coerce(a, v, f"{path}[{k}]", problems) for k, (a, v) in enumerate(items))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}={value!r} should be a mapping")
            return {}
        key_tp, value_tp = args or (Any, Any)
        out = {}
        for k, v in value.items():
            if key_tp is int and isinstance(k, str) and k.strip().lstrip("-").isdigit():
                k = int(k)  # a key written as '0' (JSON, --set) for node 0
            key = _coerce(key_tp, k, f"{path} key {k!r}", problems)
            out[key] = _coerce(value_tp, v, f"{path}[{k!r}]", problems)
        return out
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}={value!r} should be a list")
            return []
        item = args[0] if args else Any
        return [_coerce(item, v, f"{path}[{k}]", problems) for k, v in enumerate(value)]
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if (
        tp in (int, float, str, bool)
        and not isinstance(value, tp)
        or (tp is int and isinstance(value, bool))
    ):
        problems.append(f"{path}={value!r} should be of type {tp.__name__}")
    return value


def _validate(cfg: RunConfig) -> list[str]:
    """Checks of values that types alone cannot express."""
    p: list[str] = []
    if cfg.topology.name not in TOPOLOGIES:
        p.append(f"topology.name={cfg.topology.name!r} is unknown; choose one of {TOPOLOGIES}")
    if cfg.topology.mixing not in MIXING_RULES:
        p.append(
            f"topology.mixing={cfg.topology.mixing!r} is unknown; choose one of {MIXING_RULES}"
        )
    if cfg.topology.mixing == "dimat" and cfg.topology.name not in ("two_hubs", "file"):
        p.append(
            "topology.mixing='dimat' (the paper's weights for the two-hubs graph) is defined on "
            f"topology.name=two_hubs only, not {cfg.topology.name!r}: use metropolis_hastings"
        )
    if cfg.topology.mixing == "dimat" and cfg.schedule.graph != "static":
        p.append(
            f"topology.mixing='dimat' needs the two_hubs graph every round; schedule.graph="
            f"{cfg.schedule.graph!r} changes it: use metropolis_hastings"
        )
    if cfg.topology.name == "file" and not cfg.topology.path:
        p.append("topology.name='file' needs topology.path (an edge list or GraphML file)")
    if cfg.topology.name != "file" and cfg.topology.n < 1:
        p.append(f"topology.n={cfg.topology.n} must be at least 1")
    if cfg.data.source in ("file", "datasets") and not cfg.data.path:
        p.append(f"data.source={cfg.data.source!r} needs data.path")
    if not 0.0 < cfg.data.test_fraction < 1.0:
        p.append(f"data.test_fraction={cfg.data.test_fraction} must lie strictly between 0 and 1")
    if cfg.data.alpha <= 0:
        p.append(f"data.alpha={cfg.data.alpha} must be positive")
    for key in ("max_samples", "eval_samples"):
        v = getattr(cfg.data, key)
        if v is not None and v < 1:
            p.append(f"data.{key}={v} must be positive (or null for all)")
    spn = cfg.data.samples_per_node
    if spn is not None and spn < 1:
        p.append(f"data.samples_per_node={spn} must be at least 1 (or null: disjoint shards)")
    if spn is not None and cfg.data.partition == "shots":
        p.append(
            "data.samples_per_node draws overlapping shards by iid, dirichlet or classes; "
            "data.partition=shots already fixes a node's size (data.shots per class): leave "
            "data.samples_per_node null"
        )
    if cfg.data.max_length < 8:
        p.append(f"data.max_length={cfg.data.max_length} is too short; use at least 8 tokens")
    if cfg.model.name == "path" and not cfg.model.path:
        p.append("model.name='path' needs model.path (a transformers model directory)")
    if cfg.model.r < 1:
        p.append(f"model.r={cfg.model.r} must be at least 1")
    m = cfg.model
    wanted = [*m.ranks, *m.rank_tiers]
    if m.ranks and m.rank_tiers:
        p.append("model.ranks and model.rank_tiers: give one of them")
    if any(not 1 <= int(r) <= m.r for r in wanted):
        p.append(
            f"model.ranks / rank_tiers {sorted(set(wanted))} must lie in 1..model.r={m.r} "
            "(model.r is the largest rank)"
        )
    if m.rank_tiers and any(v <= 0 for v in m.rank_tiers.values()):
        p.append(f"model.rank_tiers={dict(m.rank_tiers)}: every share must be positive")
    if wanted and cfg.algorithm.name not in HETERO_RANK_ALGORITHMS:
        p.append(
            f"heterogeneous ranks (model.ranks / rank_tiers) work with "
            f"{', '.join(HETERO_RANK_ALGORITHMS)}, not {cfg.algorithm.name!r}"
        )
    if cfg.model.alpha <= 0:
        p.append(f"model.alpha={cfg.model.alpha} must be positive (LoRA scales by alpha / r)")
    if cfg.train.weight_decay < 0:
        p.append(f"train.weight_decay={cfg.train.weight_decay} must be >= 0")
    if cfg.cluster.num_cpus is not None and cfg.cluster.num_cpus < 1:
        p.append(f"cluster.num_cpus={cfg.cluster.num_cpus} must be at least 1 (or null: all)")
    if not cfg.name or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\\0"):
        p.append(
            f"name={cfg.name!r} must be a plain folder name (no '/', no '..'): runs go to "
            "output.dir/<name>-<time>"
        )
    p += _validate_task(cfg)
    if not 0.0 <= cfg.model.dropout < 1.0:
        p.append(f"model.dropout={cfg.model.dropout} must lie in [0, 1)")
    for key in ("rounds", "local_steps", "batch_size"):
        v = getattr(cfg.train, key)
        if v < 1:
            p.append(f"train.{key}={v} must be at least 1")
    if cfg.train.lr <= 0:
        p.append(f"train.lr={cfg.train.lr} must be positive")
    if cfg.eval.metrics_every < 1:
        p.append(f"eval.metrics_every={cfg.eval.metrics_every} must be at least 1")
    if cfg.eval.every < 1:
        p.append(f"eval.every={cfg.eval.every} must be at least 1")
    if cfg.cluster.nodes_per_actor is not None and cfg.cluster.nodes_per_actor < 1:
        p.append(f"cluster.nodes_per_actor={cfg.cluster.nodes_per_actor} must be at least 1")
    if cfg.cluster.threads_per_host < 1:
        p.append(f"cluster.threads_per_host={cfg.cluster.threads_per_host} must be at least 1")
    if cfg.cluster.restarts < 0:
        p.append(f"cluster.restarts={cfg.cluster.restarts} must be >= 0 (0: no recovery)")
    if cfg.cluster.call_timeout_s is not None and cfg.cluster.call_timeout_s <= 0:
        p.append(f"cluster.call_timeout_s={cfg.cluster.call_timeout_s} must be positive (or null)")
    x = cfg.exchange
    if x.compress != "none" and cfg.algorithm.name in ("local", "centralized"):
        p.append(
            f"exchange.compress={x.compress!r} with algorithm.name={cfg.algorithm.name!r}, which "
            "sends no messages: leave exchange.compress at none"
        )
    if not 0.0 < x.topk_fraction <= 1.0:
        p.append(f"exchange.topk_fraction={x.topk_fraction} must lie in (0, 1]")
    if x.error_feedback and x.compress == "none":
        p.append("exchange.error_feedback needs exchange.compress (fp16, bf16, int8 or topk)")
    if x.error_feedback and cfg.algorithm.name not in ("dlora", "dlora_fa", "dfedsa_lora"):
        p.append(
            f"exchange.error_feedback is CHOCO-gossip of averaged factors: dlora, dlora_fa or "
            f"dfedsa_lora, not {cfg.algorithm.name!r}"
        )
    if not 0.0 < x.gamma <= 1.0:
        p.append(f"exchange.gamma={x.gamma} must lie in (0, 1]")
    if x.int8_block < 0:
        p.append(f"exchange.int8_block={x.int8_block} must be >= 0 (0: one scale per row)")
    if cfg.checkpoint.every < 0:
        p.append(f"checkpoint.every={cfg.checkpoint.every} must be >= 0 (0: only at the end)")
    if cfg.checkpoint.keep < 1:
        p.append(f"checkpoint.keep={cfg.checkpoint.keep} must be at least 1")
    if cfg.cluster.gpus_per_host is not None and cfg.cluster.gpus_per_host < 0:
        p.append(f"cluster.gpus_per_host={cfg.cluster.gpus_per_host} must be >= 0")
    p += _validate_schedule(cfg)
    return p


def _validate_task(cfg: RunConfig) -> list[str]:
    """Checks that the task, model and data fit together (the model's own checks need its
    config and run in prepare)."""
    p, task, data, model = [], cfg.task, cfg.data, cfg.model
    image_sources = ("digits", "mnist", "images")
    if task.name == "causal_lm" and model.name in ENCODER_MODELS + IMAGE_MODELS:
        p.append(
            f"task.name='causal_lm' needs a decoder; model.name={model.name!r} is not one: "
            f"use one of {CAUSAL_MODELS} or a causal LM folder (model.name=path)"
        )
    if task.name != "image_classify" and model.name in IMAGE_MODELS:
        p.append(
            f"model.name={model.name!r} is a vision model: use task.name=image_classify "
            "(with data.source digits, mnist, images or datasets)"
        )
    if task.name == "image_classify":
        if model.name not in IMAGE_MODELS + ("path",):
            p.append(
                f"task.name='image_classify' needs a vision model; model.name={model.name!r} "
                f"is a text model: use one of {IMAGE_MODELS} or a ViT/CLIP folder (model.name=path)"
            )
        if data.source not in image_sources + ("datasets",):
            p.append(
                f"task.name='image_classify' needs images; data.source={data.source!r} holds "
                f"text: use one of {image_sources + ('datasets',)}"
            )
        if "{class}" not in task.class_prompt:
            p.append(f"task.class_prompt={task.class_prompt!r} has no {{class}} placeholder")
    elif data.source in image_sources:
        p.append(
            f"data.source={data.source!r} holds images: use task.name=image_classify with a "
            f"vision model ({', '.join(IMAGE_MODELS)}), or a text source for text models"
        )
    if model.image_size is not None and model.image_size < 8:
        p.append(f"model.image_size={model.image_size} must be at least 8 pixels (or null)")
    if task.name == "classify" and data.source == "sharegpt":
        p.append("data.source='sharegpt' has no labels: use task.name=causal_lm")
    if task.name == "causal_lm" and "{text}" not in task.prompt:
        p.append(f"task.prompt={task.prompt!r} has no {{text}} placeholder for the text")
    return p


def _validate_schedule(cfg: RunConfig) -> list[str]:
    """Checks of ``schedule``: probabilities in [0, 1], positive times, consistent options."""
    s, p = cfg.schedule, []
    n = cfg.topology.n if cfg.topology.name != "file" else None
    for key in ("loss_p", "straggler_fraction", "churn_p"):
        v = getattr(s, key)
        if not 0.0 <= v <= 1.0:
            p.append(f"schedule.{key}={v} is a probability and must lie in [0, 1]")
    for link, v in s.link_loss.items():
        if not 0.0 <= v <= 1.0:
            p.append(f"schedule.link_loss[{link!r}]={v:g} is a probability and must lie in [0, 1]")
        parts = str(link).split("-")
        if len(parts) != 2 or not all(x.strip().isdigit() for x in parts):
            p.append(f"schedule.link_loss key {link!r} should be 'u-v', e.g. '0-1'")
    if s.mode == "deadline" and (s.deadline_s is None or s.deadline_s <= 0):
        p.append(f"schedule.deadline_s={s.deadline_s} must be positive in mode 'deadline'")
    if s.deadline_s is not None and s.deadline_s <= 0:
        p.append(f"schedule.deadline_s={s.deadline_s} must be positive (or null)")
    if s.time_budget_s is not None and s.time_budget_s <= 0:
        p.append(f"schedule.time_budget_s={s.time_budget_s} must be positive (or null)")
    if s.staleness < 0:
        p.append(f"schedule.staleness={s.staleness} must be >= 0")
    if s.step_s <= 0:
        p.append(f"schedule.step_s={s.step_s} must be positive")
    if s.latency_s < 0:
        p.append(f"schedule.latency_s={s.latency_s} must be >= 0")
    if s.bandwidth_bytes_s is not None and s.bandwidth_bytes_s <= 0:
        p.append(f"schedule.bandwidth_bytes_s={s.bandwidth_bytes_s} must be positive (or null)")
    if s.straggler_factor <= 0:
        p.append(f"schedule.straggler_factor={s.straggler_factor} must be positive")
    if s.straggler_every < 0 or s.churn_down < 1:
        p.append("schedule.straggler_every must be >= 0 and schedule.churn_down >= 1")
    if s.sigma < 0:
        p.append(f"schedule.sigma={s.sigma} must be >= 0")
    if s.compute == "pareto" and s.pareto_alpha <= 1:
        p.append(f"schedule.pareto_alpha={s.pareto_alpha} must exceed 1 (finite mean)")
    if s.compute == "factors" and (n is not None and len(s.factors) != n):
        p.append(f"schedule.factors has {len(s.factors)} values; topology.n={n} needs one each")
    if any(f <= 0 for f in s.factors):
        p.append(f"schedule.factors={list(s.factors)} must all be positive")
    if s.compute == "trace":
        if not s.trace_path:
            p.append("schedule.compute='trace' needs schedule.trace_path")
        elif n is not None:
            from decaf_ray.virtual.compute import read_trace

            try:
                read_trace(s.trace_path, n)
            except ValueError as exc:
                p.append(str(exc))
    for entry in s.churn:
        if len(entry) != 3 or (n is not None and not 0 <= entry[0] < n) or entry[1] > entry[2]:
            p.append(f"schedule.churn entry {list(entry)} should be [node, leave, rejoin]")
    if any(v < 0 for v in s.debug_sleep_s.values()):
        p.append("schedule.debug_sleep_s values must be >= 0 seconds")
    if n is not None:
        for node in s.debug_sleep_s:
            if not 0 <= int(node) < n:
                p.append(f"schedule.debug_sleep_s names node {node}; nodes are 0..{n - 1}")
        if cfg.model.ranks and len(cfg.model.ranks) != n:
            p.append(f"model.ranks has {len(cfg.model.ranks)} entries; give one per node ({n})")
        for node in cfg.output.save_nodes:
            if not 0 <= int(node) < n:
                p.append(f"output.save_nodes names node {node}; nodes are 0..{n - 1}")
        for link in s.link_loss:
            ends = [int(x) for x in str(link).split("-") if x.strip().isdigit()]
            if any(not 0 <= e < n for e in ends):
                p.append(f"schedule.link_loss key {link!r} names a node outside 0..{n - 1}")
    if cfg.algorithm.name == "centralized":
        p += _validate_centralized(cfg)
    name = cfg.algorithm.name
    if name in SERVER_ALGORITHMS and s.mode != "sync":
        why = " (it merges every client's update of a round)" if name == "flora" else ""
        p.append(f"schedule.mode={s.mode!r} needs a decentralized algorithm, not {name}{why}")
    if name == "flora" and cfg.model.use_dora:
        p.append(
            "algorithm.name='flora' merges B A into the base weights, which DoRA's magnitudes "
            "are defined against: set model.use_dora=false"
        )
    if name in SERVER_ALGORITHMS and (s.churn or s.churn_p > 0):
        p.append(f"schedule.churn needs a decentralized algorithm: {name}'s server has no churn")
    if name in ("ffa_lora", "rolora") and not cfg.model.same_init:  # (dlora_fa allows it)
        p.append(
            f"algorithm.name={name!r} needs the factor it freezes equal on every node at the "
            "start: set model.same_init=true"
        )
    return p


def _validate_centralized(cfg: RunConfig) -> list[str]:
    """The oracle pools topology.n nodes into one model: options that name nodes or change
    the graph have nothing to act on."""
    s, p, why = cfg.schedule, [], "algorithm.name='centralized' trains one model"
    if s.churn or s.churn_p > 0:
        p.append(f"schedule.churn needs several nodes; {why}: remove the churn")
    if s.compute in ("factors", "trace"):
        p.append(
            f"schedule.compute={s.compute!r} gives each node its own speed; {why}: use "
            "constant, lognormal or pareto"
        )
    if s.graph != "static":
        p.append(f"schedule.graph={s.graph!r} changes a graph; {why}: use schedule.graph=static")
    if cfg.topology.name == "file" and cfg.topology.n < 1:
        p.append(
            "algorithm.name='centralized' pools the shards of topology.n nodes: with "
            "topology.name='file', set topology.n to the file's node count"
        )
    return p


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML) into (["a", "b", "c"], value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"malformed --set {text!r}: write KEY=VALUE with a dotted key, e.g. train.lr=1e-4"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed --set {text!r}: the value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_override(data: dict, keys: list[str], value: Any) -> dict:
    """Return a copy of nested dict ``data`` with ``keys`` set to ``value``."""
    out = dict(data)
    if len(keys) == 1:
        out[keys[0]] = value
        return out
    inner = out.get(keys[0]) or {}
    if not isinstance(inner, dict):
        raise ConfigError(f"cannot set {'.'.join(keys)}: '{keys[0]}' is not a section")
    out[keys[0]] = apply_override(inner, keys[1:], value)
    return out


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a :class:`RunConfig`; raise one ConfigError listing every problem."""
    problems: list[str] = []
    cfg = _build(RunConfig, data, "", problems)
    problems += _validate(cfg)  # every field is well typed here (bad ones kept their default)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return cfg


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise ConfigError(
                    f"line {mark.line + 1}, column {mark.column + 1}: the key {key!r} is given "
                    "twice in one mapping; keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A config file's YAML, or one ConfigError naming the file, line, column and problem."""
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)  # a SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"config file {str(path)!r}, {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        text = str(exc.problem or exc.context or "").strip()
        if "\\t" in text or "tab" in text:
            text += " (YAML indents with spaces, never tabs)"
        if "tag" in text:
            text += " (configs are read with a safe loader: plain values only)"
        raise ConfigError(f"config file {str(path)!r}, {where}: {text}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML at ``path`` (or defaults when None), apply ``--set`` overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; see runs/*.yaml for examples")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    for text in overrides:
        keys, value = parse_override(text)
        data = apply_override(data, keys, value)
    return config_from_dict(data)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), fit for YAML."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _paired(key: str, value: Any) -> list[tuple[str, Any]]:
    """The (dotted key, value) pairs one sweep value sets: a mapping sets each of its keys
    under ``key`` together (``model: [{r: 2, alpha: 4}, ...]``), anything else ``key`` itself."""
    if isinstance(value, dict):
        if not value:
            raise ConfigError(f"sweep.{key} has an empty mapping: give the keys it sets")
        return [(f"{key}.{k}", v) for k, v in value.items()]
    return [(key, value)]


def _sweep_label(value: Any) -> str:
    """A sweep value in a run's name: ``2``, ``true`` or, for a mapping, ``r=2,alpha=4``."""
    if isinstance(value, dict):
        return ",".join(f"{k}={_sweep_label(v)}" for k, v in value.items())
    return str(value).lower() if isinstance(value, bool) else str(value)


def expand_sweep(cfg: RunConfig) -> list[RunConfig]:
    """One config per combination of ``cfg.sweep`` values (the sweep itself is cleared).
    A value that is a mapping sets several keys at once, so values that belong together
    (a rank and its alpha) are swept as pairs rather than as a product."""
    import itertools

    base = to_dict(cfg)
    base["sweep"] = {}
    if not cfg.sweep:
        return [cfg]
    keys = list(cfg.sweep)
    for k in keys:
        if not isinstance(cfg.sweep[k], list) or not cfg.sweep[k]:
            raise ConfigError(f"sweep.{k} must be a non-empty list of values")
    runs = []
    for values in itertools.product(*(cfg.sweep[k] for k in keys)):
        data = base
        for k, v in zip(keys, values):
            for dotted, value in _paired(k, v):
                data = apply_override(data, dotted.split("."), value)
        label = "-".join(_sweep_label(v) for v in values)
        data = apply_override(data, ["name"], f"{cfg.name}-{label}")
        runs.append(config_from_dict(data))
    return runs


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
