"""Batched multi-node training equals training the nodes one after another (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config
from decaf_ray.node import Host, HostSpec, RunSpec
from decaf_ray.node.batched import StackedLinear, plan_groups
from decaf_ray.node.optim import adamw_step
from decaf_ray.prepare import prepare


def _host(cfg, prep) -> Host:
    host = Host(HostSpec(cfg.model, prep.num_labels, threads=1, device="cpu"))
    for m in host.model.modules():  # dropout draws differ between the paths: switch it off
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    run = RunSpec(cfg.algorithm, cfg.train, cfg.eval.batch_size, cfg.model.same_init, cfg.seed)
    host.setup(run, prep.shards, prep.eval_set)
    return host


@pytest.mark.parametrize("algorithm", ["decaf", "dlora_fa"])
def test_batched_updates_equal_sequential_after_several_steps(algorithm):
    seq_cfg = tiny_config(
        algorithm__name=algorithm,
        train__batched_nodes="off",
        train__local_steps=3,
        model__same_init=False,
    )
    bat_cfg = tiny_config(
        algorithm__name=algorithm,
        train__batched_nodes="on",
        train__local_steps=3,
        model__same_init=False,
        train__batched_max_rows=16,
    )  # 2 groups of 2 nodes
    prep = prepare(seq_cfg)
    seq, bat = _host(seq_cfg, prep), _host(bat_cfg, prep)
    assert bat.batched and not seq.batched
    for t in (1, 2, 3):
        a, b = seq.train(t), bat.train(t)
        for i in a:
            assert b[i].loss == pytest.approx(a[i].loss, rel=1e-4)
            for part in ("A", "B", "extra"):
                for key, x in getattr(a[i].adapter, part).items():
                    y = getattr(b[i].adapter, part)[key]
                    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6, err_msg=key)
    # optimizer moments carried over exactly as AdamW keeps them
    for i, node in seq.nodes.items():
        for key, p in node.params.items():
            if p.requires_grad:
                sa = node.optimizer.state[p]
                sb = bat.nodes[i].optimizer.state[bat.nodes[i].params[key]]
                assert float(sa["step"]) == float(sb["step"]) == 9
                torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-3, atol=1e-9)


def _same_results(a, b) -> None:
    for i in a:
        assert b[i].loss == pytest.approx(a[i].loss, rel=1e-4)
        for key, x in a[i].adapter.B.items():
            np.testing.assert_allclose(b[i].adapter.B[key], x, rtol=1e-4, atol=1e-6, err_msg=key)


def test_resident_stacks_stay_in_step_with_combines_subsets_and_checkpoints():
    """The batched host keeps each group's state stacked between rounds (node tensors are
    views of it): a combine's load, a round that trains only some nodes (stacked per call)
    and a checkpoint restore all reach the stacks, and every round equals the sequential
    host's."""
    kw = dict(algorithm__name="decaf", train__local_steps=2, model__same_init=False)
    seq_cfg = tiny_config(train__batched_nodes="off", **kw)
    bat_cfg = tiny_config(train__batched_nodes="on", train__batched_max_rows=16, **kw)
    prep = prepare(seq_cfg)
    seq, bat = _host(seq_cfg, prep), _host(bat_cfg, prep)
    assert bat.resident is None  # made by the first batched round
    snapshots = None
    for t in (1, 2, 3):
        a, b = seq.train(t), bat.train(t)
        _same_results(a, b)
        if t == 1:
            assert sorted(bat.resident.groups) == [(0, 1), (2, 3)]
            stacks = bat.resident.groups[(0, 1)]
            key = next(k for k in stacks.params if k.endswith(".B"))
            view = bat.nodes[1].params[key].data_ptr()
            assert view == stacks.params[key][1].data_ptr()  # node 1's B is a row of it
        inboxes = {i: [(0.5, a[i].adapter), (0.5, a[(i + 1) % 4].adapter)] for i in a}
        seq.combine(inboxes, t), bat.combine(inboxes, t)  # the same inboxes on both
        np.testing.assert_array_equal(  # the load went into the stack
            stacks.params[key][0].numpy(), bat.nodes[0].params[key].detach().numpy()
        )
        if t == 1:
            snapshots = (seq.snapshot([0, 1, 2, 3]), bat.snapshot([0, 1, 2, 3]))
    # nodes 0 and 3 form a group no host keeps: stacked for the call, written back to views
    _same_results(seq.train(4, [0, 3]), bat.train(4, [0, 3]))
    for host, snap in zip((seq, bat), snapshots):
        host.restore(snap)  # back to after round 1's combine
    _same_results(seq.train(2), bat.train(2))  # round 2 again, from the restored state
    m, v, steps = stacks.moments[key]
    assert float(steps[0]) == 4.0 and v[0].abs().sum() > 0  # restored into the stacks


def test_stacked_linear_matches_per_node_linear():
    torch.manual_seed(0)
    W, b = torch.randn(3, 5, 4), torch.randn(3, 5)
    x = torch.randn(3 * 2, 7, 4)
    y = StackedLinear(W, b)(x)
    for j in range(3):
        ref = nn.functional.linear(x[2 * j : 2 * j + 2], W[j], b[j])
        torch.testing.assert_close(y[2 * j : 2 * j + 2], ref)


def test_adamw_step_equals_torch_adamw_per_node():
    torch.manual_seed(1)
    k = 3
    params = [nn.Parameter(torch.randn(4, 2)) for _ in range(k)]
    opts = [torch.optim.AdamW([p], lr=0.01, weight_decay=0.1) for p in params]
    stack = torch.stack([p.detach().clone() for p in params])
    m, v, steps = torch.zeros_like(stack), torch.zeros_like(stack), torch.zeros(k)
    for _ in range(4):
        grads = torch.randn(k, 4, 2)
        for j in range(k):
            params[j].grad = grads[j].clone()
            opts[j].step()
        adamw_step(
            stack, grads, m, v, steps, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1
        )
    torch.testing.assert_close(stack, torch.stack([p.detach() for p in params]))


def test_groups_bound_rows_and_share_a_batch_size():
    groups = plan_groups({0: 100, 1: 100, 2: 3, 3: 100, 4: 100}, batch_size=8, max_rows=16)
    assert groups == [[2], [0, 1], [3, 4]]


def test_moments_made_up_front_train_like_lazy_adamw():
    """Host makes AdamW state at set-up (less heap fragmentation); steps must not change."""
    from decaf_ray.node.optim import init_moments

    torch.manual_seed(0)
    lazy_p = torch.nn.Parameter(torch.randn(6, 4))
    eager_p = torch.nn.Parameter(lazy_p.detach().clone())
    lazy = torch.optim.AdamW([lazy_p], lr=0.1, weight_decay=0.01)
    eager = torch.optim.AdamW([eager_p], lr=0.1, weight_decay=0.01)
    init_moments(eager)
    assert float(eager.state[eager_p]["step"]) == 0.0
    for step in range(4):
        if step == 2:  # a reset (decaf's reset_moments) equals a fresh optimizer's state
            init_moments(eager, [eager_p])
            lazy.state.pop(lazy_p)
        g = torch.randn(6, 4)
        for p, opt in ((lazy_p, lazy), (eager_p, eager)):
            p.grad = g.clone()
            opt.step()
    torch.testing.assert_close(eager_p, lazy_p, rtol=0, atol=0)
    for key in ("step", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(
            eager.state[eager_p][key], lazy.state[lazy_p][key], rtol=0, atol=0
        )
