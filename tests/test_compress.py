"""Compressed messages: each codec's round-trip error bound and size, and compressed
factors through the engine."""

from __future__ import annotations

import numpy as np
import pytest

from decaf_ray.math.compress import pack, unpack


@pytest.fixture
def x():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((64, 8)) * rng.uniform(0.01, 10, size=(64, 1))).astype(np.float32)


def test_fp16_and_bf16_round_trips_within_their_precision(x):
    for codec, rel in (("fp16", 2.0**-11), ("bf16", 2.0**-8)):
        p = pack(x, codec)
        y = unpack(p)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert p.nbytes == x.nbytes // 2
        np.testing.assert_array_less(np.abs(y - x), rel * np.abs(x) + 1e-30)
    assert unpack(pack(np.float32([1.0, -2.5, 0.0]), "bf16")).tolist() == [1.0, -2.5, 0.0]


@pytest.mark.parametrize("block", [0, 16])
def test_int8_error_is_at_most_half_a_step_of_its_scale(x, block):
    p = pack(x, "int8", block=block)
    y = unpack(p)
    if block == 0:
        step = np.abs(x).max(axis=1, keepdims=True) / 127
        assert p.nbytes == x.size + 4 * x.shape[0]
    else:
        flat = np.abs(x).reshape(-1, block).max(axis=1, keepdims=True) / 127
        step = np.broadcast_to(flat, (x.size // block, block)).reshape(x.shape)
        assert p.nbytes == x.size + 4 * (x.size // block)
    assert (np.abs(y - x) <= step / 2 + 1e-7).all()


def test_topk_keeps_exactly_the_largest_values(x):
    p = pack(x, "topk", fraction=0.25)
    y = unpack(p)
    k = x.size // 4
    assert np.count_nonzero(y) == k and p.nbytes == 8 * k
    kept = np.abs(x[y != 0]).min()
    assert kept >= np.abs(x[y == 0]).max()
    np.testing.assert_array_equal(y[y != 0], x[y != 0])


def _bytes(frame) -> float:
    return float(frame[frame.metric == "bytes_sent"].value.iloc[0])


@pytest.mark.parametrize(
    "algorithm, codec, ratio",
    [("dlora", "fp16", 0.5), ("dlora", "topk", 0.2), ("decaf", "int8", None)]
    + [("fedavg", "bf16", 0.5)],  # a server unpacks what it receives
)
def test_compressed_runs_send_fewer_bytes_and_still_learn(tmp_path, algorithm, codec, ratio):
    from conftest import net, run_in_process, tiny_config

    plain = run_in_process(tiny_config(algorithm__name=algorithm), tmp_path / "plain")[1]
    cfg = tiny_config(
        algorithm__name=algorithm, exchange__compress=codec, exchange__topk_fraction=0.1
    )
    packed = run_in_process(cfg, tmp_path / codec)[1]
    if ratio is not None:  # fp16 halves; topk 10% sends a value and an int32 index each
        assert _bytes(packed) == pytest.approx(ratio * _bytes(plain), rel=0.02)
    else:  # int8: a byte a value plus a float32 scale per row
        assert 0.25 < _bytes(packed) / _bytes(plain) < 0.5
    assert net(packed, "mean_node_acc").index.max() == 2
    first_round = packed[(packed["round"] == 1) & (packed.metric == "train_loss")]
    same = plain[(plain["round"] == 1) & (plain.metric == "train_loss")]
    np.testing.assert_allclose(first_round.value, same.value)  # before any message
    if codec == "fp16":  # half precision barely moves the run
        for metric in ("product_consensus", "train_loss"):
            np.testing.assert_allclose(net(packed, metric), net(plain, metric), rtol=2e-2)


def test_compression_on_a_method_without_messages_is_refused():
    from conftest import tiny_config
    from decaf_ray.config import ConfigError

    with pytest.raises(ConfigError, match="sends no messages: leave exchange.compress at none"):
        tiny_config(algorithm__name="local", exchange__compress="int8")


def _ring(n: int) -> np.ndarray:
    W = np.zeros((n, n))
    for i in range(n):
        W[i, i] = W[i, (i + 1) % n] = W[i, (i - 1) % n] = 1 / 3
    return W


def test_choco_error_feedback_reaches_consensus_where_packed_gossip_stalls():
    """Pure gossip on a ring of 8, each node sending the top 10% of what it sends. Plain
    gossip of packed states stalls far from the average; with error feedback (packed
    differences to public copies, the engine's public_step, gamma 0.2) the states reach
    the average of the start."""
    from decaf_ray.math.compress import public_step

    rng = np.random.default_rng(1)
    W, start = _ring(8), rng.standard_normal((8, 40)).astype(np.float32)
    target = start.mean(axis=0)

    x = start.copy()
    for _ in range(300):
        x = W @ np.stack([unpack(pack(xi, "topk", fraction=0.1)) for xi in x])
    assert np.abs(x - target).max() > 0.3

    x, public = start.copy(), np.zeros_like(start)
    for _ in range(300):
        held = []
        for i in range(8):
            sent, public[i] = public_step(x[i], public[i], "topk", fraction=0.1)
            held.append(unpack(sent))
            assert sent.nbytes == 8 * 4  # 4 of 40 values and their positions travel
        x = x + 0.2 * (W @ np.stack(held) - public)
    assert np.abs(x - target).max() < 1e-3


def test_error_feedback_runs_end_to_end_and_counts_only_the_differences(tmp_path):
    from conftest import net, run_in_process, tiny_config

    def run(feedback: bool, name: str):
        cfg = tiny_config(
            algorithm__name="dlora",
            train__rounds=3,
            exchange__compress="topk",
            exchange__topk_fraction=0.1,
            exchange__error_feedback=feedback,
        )
        return run_in_process(cfg, tmp_path / name)

    sim, frame = run(True, "ef")
    plain = run(False, "plain")[1]
    assert _bytes(frame) == _bytes(plain)  # the same packed size travels
    assert net(frame, "mean_node_acc").index.max() == 3
    host = sim.hosts.services[0].host
    node = host.nodes[min(host.nodes)]
    assert node.public and all(np.isfinite(v).all() for v in node.public.values())


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"exchange__error_feedback": True}, "needs exchange.compress"),
        (
            {"exchange__error_feedback": True, "exchange__compress": "int8"},
            "dlora, dlora_fa or dfedsa_lora, not 'decaf'",
        ),
        ({"exchange__gamma": 0.0}, "exchange.gamma=0.0 must lie in (0, 1]"),
    ],
)
def test_error_feedback_settings_are_checked(overrides, needle):
    from conftest import tiny_config
    from decaf_ray.config import ConfigError

    with pytest.raises(ConfigError) as err:
        tiny_config(algorithm__name="decaf", **overrides)
    assert needle in str(err.value)
