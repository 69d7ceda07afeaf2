"""The virtual clock's pure models and plans: seeded, deterministic, and Ray-free."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import networkx as nx
import numpy as np
import pytest

from conftest import tiny_config
from decaf_ray.algorithms import Adapter
from decaf_ray.engine.network import average_drift
from decaf_ray.math import mix_all
from decaf_ray.virtual import (
    EventQueue,
    LinkModel,
    active_table,
    build_world,
    graph_at,
    loss_table,
    make_plan,
    mixing_at,
    step_seconds,
    straggler_factors,
)
from decaf_ray.virtual.plan import weighted
from topologies import build_graph, mixing_matrix


def ring_world(n=8, rounds=6, **schedule):
    overrides = {f"schedule__{k}": v for k, v in schedule.items()}
    cfg = tiny_config(topology__n=n, train__rounds=rounds, **overrides)
    return cfg, build_world(cfg, mixing_matrix(build_graph("ring", n), "uniform"))


def test_virtual_package_never_imports_ray():
    code = "import sys, decaf_ray.virtual, decaf_ray.engine.network; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("model", ["constant", "lognormal", "pareto"])
def test_compute_models_are_seeded_and_have_mean_base(model):
    a = step_seconds(model, 50, 400, base_s=2.0, seed=1)
    assert np.array_equal(a, step_seconds(model, 50, 400, base_s=2.0, seed=1))
    assert a.shape == (50, 400) and (a > 0).all()
    assert abs(a.mean() - 2.0) < 0.1
    if model != "constant":
        assert not np.array_equal(a, step_seconds(model, 50, 400, base_s=2.0, seed=2))


def test_pareto_is_heavier_tailed_than_lognormal():
    par = step_seconds("pareto", 100, 200, alpha=1.5, seed=0)
    logn = step_seconds("lognormal", 100, 200, sigma=0.5, seed=0)
    assert par.max() / np.median(par) > 5 * logn.max() / np.median(logn)


def test_factor_and_trace_models(tmp_path):
    f = step_seconds("factors", 3, 4, base_s=0.5, factors=[1, 2, 4])
    assert np.array_equal(f[:, 0], [0.5, 1.0, 2.0]) and (f == f[:, :1]).all()
    trace = tmp_path / "t.txt"
    trace.write_text("1 2\n3\n# comment\n4,5,6\n")
    t = step_seconds("trace", 3, 4, trace_path=trace)
    assert t.tolist() == [[1, 2, 1, 2], [3, 3, 3, 3], [4, 5, 6, 4]]
    with pytest.raises(ValueError, match=r"t.txt.*3 rows.*5 nodes"):
        step_seconds("trace", 5, 4, trace_path=trace)


def test_stragglers_fixed_or_redrawn():
    fixed = straggler_factors(10, 6, 0.3, 5.0, every=0, seed=0)
    assert ((fixed == 5.0).sum(axis=0) == 3).all() and (fixed == fixed[:, :1]).all()
    moving = straggler_factors(10, 6, 0.3, 5.0, every=2, seed=0)
    assert ((moving == 5.0).sum(axis=0) == 3).all()
    assert (moving[:, 0] == moving[:, 1]).all() and not (moving == moving[:, :1]).all()
    assert (straggler_factors(10, 6, 0.0, 5.0) == 1).all()


def test_links_delay_and_loss():
    assert LinkModel(0.1, 1000.0).delays_s(500, 2)[:, 0] == pytest.approx([0.6, 0.6])
    assert LinkModel(0.1, 1000.0).delays_s([500, 1500], 2)[:, 0] == pytest.approx([0.6, 1.6])
    assert (LinkModel(0.1).delays_s(10**9, 3) == 0.1).all()
    lost = loss_table(4, 200, 0.25, {"1-0": 1.0, "2-3": 0.0}, seed=0)
    assert lost[:, 0, 1].all() and lost[:, 1, 0].all()
    assert not lost[:, 2, 3].any()
    assert 0.15 < lost[:, 0, 2].mean() < 0.35


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_sender_pays_for_its_own_message_size(mode):
    """Nodes of different ranks send messages of different sizes: with a bandwidth limit each
    message arrives after its own sender's delay, not one size's delay for every link."""
    cfg, world = _world("ring", 6, 2, latency_s=0.1, bandwidth_bytes_s=1e6)
    sizes = [1e5 * (1 + i) for i in range(6)]  # node i sends (i + 1) * 100 kB
    plan = make_plan(world, mode, sizes, replace(cfg.schedule, mode=mode))
    receipts = [rc for st in plan.steps.values() for rc in st.inbox if rc.sender != st.node]
    assert receipts
    for rc in receipts:
        assert rc.arrived_s - rc.sent_s == pytest.approx(0.1 + sizes[rc.sender] / 1e6)
    same = make_plan(world, mode, 3e5, replace(cfg.schedule, mode=mode))  # one size for all
    for st in same.steps.values():
        for rc in st.inbox:
            if rc.sender != st.node:
                assert rc.arrived_s - rc.sent_s == pytest.approx(0.4)
    delays = LinkModel(0.1, 1e6).delays_s(sizes, 6)
    assert delays.shape == (6, 1) and delays[:, 0] == pytest.approx([0.1 + b / 1e6 for b in sizes])
    assert LinkModel(0.2).delays_s(sizes, 6).tolist() == [[0.2]] * 6
    cycle = [[1e5 * (1 + i), 2e4] for i in range(6)]  # rolora: B in odd rounds, A in even
    alternating = make_plan(world, mode, cycle, replace(cfg.schedule, mode=mode))
    for st in alternating.steps.values():
        for rc in st.inbox:
            if rc.sender != st.node:
                b = cycle[rc.sender][(rc.sender_round - 1) % 2]  # the message's round
                assert rc.arrived_s - rc.sent_s == pytest.approx(0.1 + b / 1e6)


def test_churn_schedule_and_random():
    act = active_table(4, 5, schedule=[[1, 2, 4]])
    assert act[1].tolist() == [True, False, False, True, True] and act[[0, 2, 3]].all()
    rand = active_table(20, 50, p_leave=0.2, down_rounds=2, seed=0)
    assert np.array_equal(rand, active_table(20, 50, p_leave=0.2, down_rounds=2, seed=0))
    assert 0.1 < 1 - rand.mean() < 0.5


def test_time_varying_graphs():
    hops = [sorted(graph_at("one_peer_exponential", 16, t, 0).neighbors(0)) for t in (1, 2, 3, 4)]
    assert hops == [[1, 15], [2, 14], [4, 12], [8]]
    m = graph_at("matching", 7, 3, seed=0)
    assert max(d for _, d in m.degree) == 1 and m.number_of_edges() == 3
    assert sorted(graph_at("erdos_renyi", 10, 2, 5).edges) == sorted(
        graph_at("erdos_renyi", 10, 2, 5).edges
    )
    Pi = mixing_at("erdos_renyi", 10, 2, "metropolis_hastings", seed=5)
    assert np.allclose(Pi.sum(0), 1) and np.allclose(Pi, Pi.T)


def test_event_queue_breaks_ties_deterministically():
    q = EventQueue()
    q.push(1.0, 2, "combine", 0, 1)
    q.push(1.0, 0, "publish", 3, 1)
    q.push(1.0, 0, "publish", 1, 1)
    q.push(0.5, 3, "begin", 9, 1)
    assert [(e.kind, e.node) for e in (q.pop() for _ in range(4))] == [
        ("begin", 9),
        ("publish", 1),
        ("publish", 3),
        ("combine", 0),
    ]


def test_equal_speeds_make_every_mode_the_same_plan():
    cfg, world = ring_world()
    plans = [make_plan(world, m, 1e5, cfg.schedule) for m in ("sync", "async")]
    bounded = tiny_config(schedule__mode="bounded", schedule__staleness=0).schedule
    plans.append(make_plan(world, "bounded", 1e5, bounded))
    assert plans[0].steps == plans[1].steps == plans[2].steps


def _world(name, n, rounds, mixing="uniform", **schedule):
    overrides = {f"schedule__{k}": v for k, v in schedule.items()}
    cfg = tiny_config(topology__n=n, topology__mixing=mixing, train__rounds=rounds, **overrides)
    Pi = mixing_matrix(
        build_graph(name, n, **({"seed": 0} if name == "erdos_renyi" else {})), mixing
    )
    return cfg, build_world(cfg, Pi)


EQUAL_SPEED_CASES = {
    "ring churn (issue 8: sent)": ("ring", 8, "uniform", dict(churn=[[1, 2, 4]])),
    "er churn (issue 8: dropped)": (
        "erdos_renyi",
        10,
        "metropolis_hastings",
        dict(churn=[[1, 2, 4]]),
    ),
    "churn, rejoin from neighbours": (
        "ring",
        6,
        "uniform",
        dict(churn=[[1, 2, 4], [2, 2, 3], [4, 3, 5]], rejoin="neighbours"),
    ),
    "random churn and loss": (
        "erdos_renyi",
        10,
        "metropolis_hastings",
        dict(churn_p=0.2, churn_down=2, loss_p=0.3, rejoin="neighbours"),
    ),
    "loss, to_self": ("ring", 8, "uniform", dict(loss_p=0.4, missing="to_self")),
    "latency and bandwidth": ("torus", 9, "uniform", dict(latency_s=0.3, bandwidth_bytes_s=1e6)),
    "latency and loss": ("erdos_renyi", 10, "metropolis_hastings", dict(latency_s=0.5, loss_p=0.2)),
    "time-varying graph and loss": (
        "ring",
        8,
        "metropolis_hastings",
        dict(graph="erdos_renyi", loss_p=0.2),
    ),
}


@pytest.mark.parametrize("case", list(EQUAL_SPEED_CASES))
def test_sync_and_bounded_zero_plan_the_same_steps(case):
    """At equal speeds, sync and bounded with s = 0 agree on every Step field: inboxes and
    weights, send/arrival/combine times, sent, dropped, lag and rejoin receipts."""
    name, n, mixing, schedule = EQUAL_SPEED_CASES[case]
    cfg, world = _world(name, n, 6, mixing, **schedule)
    sync = make_plan(world, "sync", 1e5, cfg.schedule)
    s0 = replace(cfg.schedule, mode="bounded", staleness=0)
    bounded = make_plan(world, "bounded", 1e5, s0)
    assert sorted(sync.steps) == sorted(bounded.steps)
    for key, st in sync.steps.items():
        assert bounded.steps[key] == st, (case, key)
    assert [sync.round_end_s(t) for t in range(1, 7)] == [
        bounded.round_end_s(t) for t in range(1, 7)
    ]


def test_sent_dropped_and_rejoin_mean_one_thing():
    """The two cases of issue 8, and what a rejoin reads."""
    _, world = _world("ring", 8, 4, churn=[[1, 2, 4]])
    step = make_plan(world, "sync", 1e5, tiny_config().schedule).steps[(0, 2)]
    assert step.sent == 1  # node 1 is away: only node 7 is sent node 0's message
    cfg, world = _world("erdos_renyi", 10, 5, "metropolis_hastings", churn=[[1, 2, 4]])
    bounded = replace(cfg.schedule, mode="bounded", staleness=0)
    assert make_plan(world, "bounded", 1e5, bounded).steps[(1, 4)].dropped == 0  # sent nothing
    cfg, world = _world("ring", 4, 4, churn=[[1, 2, 4]], rejoin="neighbours", loss_p=1.0)
    for mode in ("sync", "async"):
        plan = make_plan(world, mode, 1e5, cfg.schedule)
        assert plan.steps[(0, 2)].dropped == 1  # node 3's message lost; node 1 sent nothing
        back = plan.steps[(1, 4)].rejoin
        # neighbours 0 and 2 hand over their states after their round-3 combine
        assert [(rc.sender, rc.sender_round) for rc in back] == [(0, 3), (2, 3)]
        assert [rc.weight for rc in back] == [0.5, 0.5]
        assert back[0].sent_s == plan.steps[(0, 3)].combine_s == plan.steps[(1, 4)].start_s


def test_rejoin_reads_initial_states_of_neighbours_that_never_combined():
    cfg, world = _world("ring", 4, 3, churn=[[1, 1, 2], [0, 1, 2]], rejoin="neighbours")
    for mode in ("sync", "async"):
        back = make_plan(world, mode, 1e5, cfg.schedule).steps[(1, 2)].rejoin
        assert [(rc.sender, rc.sender_round) for rc in back] == [(0, 0), (2, 1)]


def test_time_varying_graph_with_a_rule_that_breaks_symmetry_is_refused():
    from decaf_ray.virtual import round_mixings
    from topologies import MixingError

    Pi = mixing_matrix(build_graph("ring", 10), "uniform")
    bad = tiny_config(topology__n=10, schedule__graph="erdos_renyi")
    with pytest.raises(MixingError, match=r"round 1.*not symmetric.*metropolis_hastings"):
        round_mixings(bad, Pi)
    good = tiny_config(
        topology__n=10, topology__mixing="metropolis_hastings", schedule__graph="erdos_renyi"
    )
    for P in round_mixings(good, Pi):
        assert np.allclose(P, P.T) and np.allclose(P.sum(axis=0), 1.0)


def test_plans_are_deterministic_and_async_beats_sync_with_stragglers():
    kw = dict(straggler_fraction=0.25, straggler_factor=5.0, loss_p=0.2, latency_s=0.3)
    cfg, world = ring_world(**kw)
    again = build_world(cfg, world.Pi(1))
    a1, a2 = (make_plan(w, "async", 1e5, cfg.schedule) for w in (world, again))
    assert a1.events == a2.events and a1.steps == a2.steps
    sync = make_plan(world, "sync", 1e5, cfg.schedule)
    assert a1.round_end_s(6) > 0 and sync.round_end_s(6) > a1.round_end_s(6)
    for plan in (a1, sync):  # the running max equals the max over each node's latest step
        for t in range(0, 8):
            latest = {}
            for (i, r), st in plan.steps.items():
                if r <= t and (i not in latest or r > latest[i].round_idx):
                    latest[i] = st
            expected = max((st.combine_s for st in latest.values()), default=0.0)
            assert plan.round_end_s(t) == expected
    for plan in (a1, sync):
        for st in plan.steps.values():
            assert sum(rc.weight for rc in st.inbox) == pytest.approx(1.0)


@pytest.mark.parametrize("s", [0, 1, 2])
def test_bounded_staleness_is_never_exceeded(s):
    cfg, world = ring_world(straggler_fraction=0.25, straggler_factor=5.0, latency_s=0.5)
    bounded = make_plan(world, "bounded", 1e5, tiny_config(schedule__staleness=s).schedule)
    assert max(st.max_lag_rounds for st in bounded.steps.values()) <= s
    free = make_plan(world, "async", 1e5, cfg.schedule)
    assert max(st.max_lag_rounds for st in free.steps.values()) > 2


def test_lossy_link_is_never_heard_and_weights_renormalise():
    cfg, world = ring_world(link_loss={"0-1": 1.0})
    for mode in ("sync", "async"):
        plan = make_plan(world, mode, 1e5, cfg.schedule)
        inbox = plan.steps[(0, 3)].inbox
        assert [rc.sender for rc in inbox] == [0, 7]
        assert [rc.weight for rc in inbox] == [0.5, 0.5]
        assert plan.steps[(0, 3)].dropped == 1
    to_self = tiny_config(schedule__missing="to_self").schedule
    inbox = make_plan(world, "sync", 1e5, to_self).steps[(0, 3)].inbox
    assert [rc.weight for rc in inbox] == pytest.approx([2 / 3, 1 / 3])


def test_isolated_node_trains_alone_and_rejoins_from_neighbours():
    cfg, world = ring_world(n=4, churn=[[1, 2, 4], [3, 2, 4]], rejoin="neighbours")
    for mode in ("sync", "async"):
        plan = make_plan(world, mode, 1e5, cfg.schedule)
        assert (1, 2) not in plan.steps and (1, 4) in plan.steps
        alone = plan.steps[(0, 2)].inbox
        assert [(rc.sender, rc.weight) for rc in alone] == [(0, 1.0)]
        assert {rc.sender for rc in plan.steps[(1, 4)].rejoin} <= {0, 2}
        assert plan.steps[(1, 4)].rejoin


def test_deadline_drops_late_messages():
    cfg, world = ring_world(n=4, factors=[1, 1, 1, 10], compute="factors")
    plan = make_plan(world, "deadline", 0.0, tiny_config(schedule__deadline_s=5.0).schedule)
    assert plan.round_end_s(1) == 5.0
    assert [rc.sender for rc in plan.steps[(0, 1)].inbox] == [0, 1]
    assert plan.steps[(0, 1)].dropped == 1


def test_drift_is_zero_for_doubly_stochastic_mixing_and_not_after_renormalising():
    rng = np.random.default_rng(0)
    before = [
        Adapter(A={"m": rng.normal(size=(2, 5))}, B={"m": rng.normal(size=(6, 2))})
        for _ in range(4)
    ]
    Pi = mixing_matrix(build_graph("ring", 4), "uniform")

    def mixed(P):
        As = mix_all(P, [a.A["m"] for a in before])
        Bs = mix_all(P, [a.B["m"] for a in before])
        return [Adapter(A={"m": A}, B={"m": B}) for A, B in zip(As, Bs)]

    d = average_drift(before, mixed(Pi))
    assert d["drift_A"] < 1e-12 and d["drift_B"] < 1e-12 and d["drift_product"] > 0
    lossy = Pi.copy()
    lossy[0, 1] = 0.0
    lossy[0] /= lossy[0].sum()  # node 0 lost node 1's message and renormalised
    assert average_drift(before, mixed(lossy))["drift_A"] > 1e-3
    same = average_drift(before, before)
    assert same == {"drift_A": 0.0, "drift_B": 0.0, "drift_product": 0.0}


def test_time_budget_lets_fast_nodes_run_more_rounds_in_async_only():
    cfg, world = ring_world(n=4, rounds=10, compute="factors", factors=[5, 1, 1, 1])
    budget = tiny_config(schedule__time_budget_s=20.0).schedule
    sync = make_plan(world, "sync", 0.0, budget)
    free = make_plan(world, "async", 0.0, budget)
    assert sync.last_round == 2  # rounds of 10 s (the straggler's) until 20 s
    done = {i: max(t for j, t in free.steps if j == i) for i in range(4)}
    assert done == {0: 2, 1: 10, 2: 10, 3: 10}
    assert all(st.start_s < 20.0 for st in free.steps.values())


def test_erdos_renyi_rounds_keep_their_graphs_and_draw_sparsely_when_large(monkeypatch):
    from decaf_ray.virtual import graphs

    for n, t in ((5, 1), (17, 2), (64, 3)):  # the graphs runs have always had for a seed
        upper = np.random.default_rng([3, t]).random((n, n)) < 0.3
        loop = {(i, j) for i in range(n) for j in range(i + 1, n) if upper[i, j]}
        assert {tuple(sorted(e)) for e in graph_at("erdos_renyi", n, t, 3, 0.3).edges()} == loop
    monkeypatch.setattr(graphs, "DENSE_DRAW_MAX", 0)  # above the limit: edges drawn sparsely
    i, j = graphs._gnp_edges(np.random.default_rng(0), 9, 1.0)
    assert list(zip(i.tolist(), j.tolist())) == [(a, b) for a in range(9) for b in range(a + 1, 9)]
    n, q = 400, 0.05
    g = graph_at("erdos_renyi", n, 1, 0, q)
    pairs = n * (n - 1) / 2
    assert abs(g.number_of_edges() - pairs * q) < 5 * np.sqrt(pairs * q * (1 - q))
    assert nx.number_of_selfloops(g) == 0 and g.number_of_nodes() == n
    assert sorted(graph_at("erdos_renyi", n, 1, 0, q).edges()) == sorted(g.edges())  # seeded
    assert sorted(graph_at("erdos_renyi", n, 2, 0, q).edges()) != sorted(g.edges())


@pytest.mark.parametrize("missing", ["renormalise", "to_self"])
def test_weights_sum_to_one_when_the_node_has_no_self_weight(missing):
    """A valid mixing matrix may have Pi_ii = 0 (a weighted topology file): a missing
    neighbour is still noticed, and a node that heard no weighted message keeps its state."""
    row = {1: 0.5, 4: 0.5}  # node 0's row of a 5-ring with edge weights 0.5: Pi_00 = 0
    own, one = (0, 1, 0.0, 0.0), (1, 1, 0.0, 0.0)
    got = {r.sender: r.weight for r in weighted(row, 0, [own, one], missing)}
    assert got == ({0: 0.0, 1: 1.0} if missing == "renormalise" else {0: 0.5, 1: 0.5})
    alone = {r.sender: r.weight for r in weighted(row, 0, [own], missing)}
    assert alone == {0: 1.0}
    full = {r.sender: r.weight for r in weighted(row, 0, [own, one, (4, 1, 0.0, 0.0)], missing)}
    assert full == {0: 0.0, 1: 0.5, 4: 0.5}  # everything arrived: Pi's row as is


def test_bounded_zero_does_not_wait_for_a_round_its_neighbour_skipped():
    """Churn with latency: a node back from an away round has no message of that round, so
    bounded s = 0 combines when sync does instead of a round later. Only the returning node's
    own start differs (it is back when its away time ends, not at sync's barrier)."""
    cfg, world = _world("ring", 6, 5, "uniform", churn=[[1, 2, 3], [4, 3, 4]], latency_s=0.5)
    sync = make_plan(world, "sync", 1e5, cfg.schedule)
    bounded = make_plan(world, "bounded", 1e5, replace(cfg.schedule, mode="bounded", staleness=0))
    assert sorted(sync.steps) == sorted(bounded.steps)
    back = {(1, 3), (4, 4)}
    for key, st in sync.steps.items():
        other = bounded.steps[key]
        assert other.combine_s == st.combine_s, key
        assert [(r.sender, r.sender_round, r.weight) for r in other.inbox] == [
            (r.sender, r.sender_round, r.weight) for r in st.inbox
        ], key
        if key not in back:
            assert (other.start_s, other.trained_s) == (st.start_s, st.trained_s), key


@pytest.mark.parametrize("model", ["lognormal", "pareto"])
def test_random_draws_of_more_rounds_keep_the_first_rounds(model):
    """A resumed run may grow train.rounds: the longer world must plan the rounds already run
    exactly as the shorter one did (compute times and random churn drawn round by round)."""
    short, long = step_seconds(model, 7, 5, seed=3), step_seconds(model, 7, 9, seed=3)
    assert np.array_equal(long[:, :5], short)
    assert not np.array_equal(long[:, 5:], long[:, :4])  # later rounds are fresh draws
    a, b = (active_table(7, r, p_leave=0.3, down_rounds=2, seed=3) for r in (5, 9))
    assert np.array_equal(b[:, :5], a) and not a.all()


@pytest.mark.parametrize("latency", [0.0, 0.3])
def test_a_departed_nodes_messages_are_forgotten_however_late_they_arrive(latency):
    """async: node 2 (fast) publishes round 1 at 0.5 and leaves; node 1 combines round 1 at
    1.0. Its message is forgotten whether it arrived before the departure or after it."""
    import networkx as nx

    from decaf_ray.virtual.links import LossModel
    from decaf_ray.virtual.world import RoundMixings, World

    n, T = 3, 4
    Pi = mixing_matrix(nx.path_graph(n), "metropolis_hastings")
    compute = np.ones((n, T))
    compute[2] = 0.5
    active = active_table(n, T, [[2, 2, 4]])  # node 2 away in rounds 2 and 3
    world = World(compute, LinkModel(latency_s=latency), LossModel(n), active, RoundMixings(Pi, T))
    step = make_plan(world, "async", 0.0, tiny_config().schedule).steps[(1, 1)]
    assert step.combine_s == 1.0
    assert 2 not in {rc.sender for rc in step.inbox}
    assert sum(rc.weight for rc in step.inbox) == pytest.approx(1.0)
