"""FLoRA's merged base model: every host merges the same update, a node's model is the
pretrained base plus every round's weighted-mean product, and a warm host forgets the merges
at set-up. In process, on tiny models (the maths of the stack is in test_family)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from conftest import tiny_config
from decaf_ray.algorithms import Adapter
from decaf_ray.algorithms.flora import FLoRA
from decaf_ray.node import Host, HostSpec, RunSpec
from decaf_ray.node.merged import MergedBase
from decaf_ray.node.model import _architecture
from decaf_ray.node.state import to_device
from decaf_ray.node.tasks import Classify
from decaf_ray.prepare import prepare


def _base(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base weights of a peft model, by name (copies; call it before an adapter is
    installed as plain tensors, which would count as frozen too)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def _digest(model: nn.Module, names) -> str:
    """A hash of the tensors ``names`` of ``model``: equal only if every bit is."""
    h, now = hashlib.sha256(), dict(model.named_parameters())
    for name in sorted(names):
        h.update(name.encode() + now[name].detach().numpy().tobytes())
    return h.hexdigest()


def _layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _tiny_peft(fan_in_fan_out: bool) -> nn.Module:
    """A linear and a convolution layer, or GPT-2's Conv1D (which stores its weight (in, out))."""
    torch.manual_seed(0)
    if fan_in_fan_out:
        base = nn.ModuleDict({"c1d": Conv1D(5, 6)})
    else:
        base = nn.ModuleDict({"lin": nn.Linear(6, 5), "conv": nn.Conv2d(3, 4, 3)})
    targets = list(base)
    conf = LoraConfig(r=2, lora_alpha=6, target_modules=targets, fan_in_fan_out=fan_in_fan_out)
    return get_peft_model(base, conf)


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_a_merge_adds_peft_s_own_delta_weight_and_reset_restores_the_pretrained(fan_in_fan_out):
    """Layouts: B A as a matrix (out, in kh kw), reshaped for a convolution, transposed for
    Conv1D; the reference is peft's get_delta_weight of the same factors."""
    model = _tiny_peft(fan_in_fan_out)
    pretrained = _base(model)
    rng = np.random.default_rng(0)
    update, expected = Adapter(A={}, B={}), {}
    for name, layer in _layers(model).items():
        short = name.removeprefix("base_model.model.")
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        A = rng.standard_normal((a.shape[0], a[0].numel())).astype(np.float32)  # (r, in kh kw)
        B = rng.standard_normal((b.shape[0], b.shape[1])).astype(np.float32)  # (out, r)
        update.A[short], update.B[short] = A, B
        with torch.no_grad():
            a.copy_(torch.from_numpy(A).view_as(a))
            b.copy_(torch.from_numpy(B).view_as(b))
        expected[f"{name}.base_layer.weight"] = layer.get_delta_weight("default")
    merged = MergedBase(model)
    assert merged.merge(1, update) and not merged.merge(1, update)  # once per round
    for key, delta in expected.items():
        got = dict(model.named_parameters())[key].detach() - pretrained[key]
        torch.testing.assert_close(got, delta, atol=1e-6, rtol=1e-5)

    other_model = _tiny_peft(fan_in_fan_out)  # another host, restored from a snapshot
    other = MergedBase(other_model)
    other.restore(merged.snapshot())
    assert other.round_idx == 1 and _digest(other_model, pretrained) == _digest(model, pretrained)
    merged.reset()
    assert all(torch.equal(w, pretrained[k]) for k, w in _base(model).items())
    assert merged.snapshot() == {} and merged.round_idx == 0


def _hosts(cfg, blocks):
    prep = prepare(cfg)
    spec, run = HostSpec.of(cfg, prep.num_labels), RunSpec.of(cfg, prep.choices, prep.pad_id)
    hosts = []
    for block in blocks:
        host = Host(spec)
        host.setup(run, {i: prep.shards[i] for i in block}, prep.eval_set)
        hosts.append(host)
    return hosts, prep, run


def test_every_host_merges_the_same_update_and_holds_base_plus_the_rounds_means(tmp_path):
    """Two hosts, three FLoRA rounds, heterogeneous ranks: the bases are bit-identical, each is
    W_0 + scaling sum_t sum_k p_k B_k A_k, a node's model scores as the pretrained base with
    every round's stack as one adapter and as its saved peft adapter, and a set-up gives the
    pretrained weights back."""
    cfg = tiny_config(algorithm__name="flora", model__ranks=[2, 4, 2, 4])
    blocks = [[0, 1], [2, 3]]
    (*hosts, reference), prep, run = _hosts(cfg, [*blocks, [0, 1, 2, 3]])
    pretrained = _base(reference.model)
    algo, sizes = FLoRA(), [len(prep.shards[i]) for i in range(4)]
    p = np.array(sizes) / sum(sizes)
    scaling = cfg.model.alpha / cfg.model.r
    mean_sum: dict[str, np.ndarray] = {}
    stacks = []
    for t in (1, 2, 3):
        trained = {i: r.adapter for host in hosts for i, r in host.train(t).items()}
        messages = [algo.message(trained[i]) for i in range(4)]
        server = algo.aggregate(messages, sizes)
        stacks.append(server)
        for m in messages[0].modules:
            mean = sum(pk * (a.B[m].astype(np.float64) @ a.A[m]) for pk, a in zip(p, messages))
            mean_sum[m] = mean_sum.get(m, 0.0) + scaling * mean
        for host, block in zip(hosts, blocks):
            host.combine({i: [(1.0, server)] for i in block}, round_idx=t)

    names = list(pretrained)  # every frozen tensor of the base model
    assert _digest(hosts[0].model, names) == _digest(hosts[1].model, names)
    assert _digest(hosts[0].model, names) != _digest(reference.model, names)
    weights = _base(hosts[0].model)
    for m, delta in mean_sum.items():
        key = f"base_model.model.{m}.base_layer.weight"
        got = (weights[key] - pretrained[key]).double().numpy()
        np.testing.assert_allclose(got, delta, atol=2e-6)

    states = {i: host.adapter(i) for host in hosts for i in host.nodes}
    for i, state in states.items():  # a fresh adapter: B = 0, A redrawn for the round
        assert all(not b.any() for b in state.B.values())
        assert state.A[m].shape[0] == cfg.model.ranks[i]
        assert not np.array_equal(state.A[m], reference.adapter(i).A[m])
    wide = Adapter(  # every round's stack as one adapter on the pretrained base
        A={m: np.concatenate([s.A[m] for s in stacks]) for m in mean_sum},
        B={m: np.concatenate([s.B[m] for s in stacks], axis=1) for m in mean_sum},
        extra=stacks[-1].extra,
    )
    want = reference.evaluate_adapter(wide)
    for host in hosts:
        for i in host.nodes:
            got = host.evaluate_node(i, states[i])
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
            assert got["acc"] == want["acc"]

    for name, data in hosts[0].adapter_files(states[0]).items():  # merged update included
        (tmp_path / name).write_bytes(data)
    torch.manual_seed(0)  # the hosts' random tiny base is drawn from seed 0
    base = _architecture(cfg.model, "classify", prep.num_labels).make(True)
    model = PeftModel.from_pretrained(base, str(tmp_path))
    loaded = Classify(prep.num_labels).evaluate(model, to_device(prep.eval_set, "cpu"), 64)
    assert loaded["loss"] == pytest.approx(want["loss"], rel=1e-5)

    hosts[0].setup(run, {0: prep.shards[0]}, prep.eval_set)  # a warm host's next run
    assert _digest(hosts[0].model, names) == _digest(reference.model, names)
