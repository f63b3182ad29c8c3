"""SecAgg+ protocol core (strategies/secagg.py): the server's unmasked sum equals the
plain sum of the survivors' vectors, with and without dropouts; too few survivors fail
clearly; masked vectors reveal nothing obvious; fixed-point weighted means."""

import numpy as np
import pytest

from strategies.secagg import FixedPoint, SecAggClient, SecAggError, WORD, neighbours, prg, unmasked_sum


def run_round(xs: dict[int, np.ndarray], threshold: int, degree: int, drop_before_masking=(), drop_before_unmask=()):
    ids = sorted(xs)
    graph = neighbours(ids, degree, seed=3)
    clients = {i: SecAggClient(i, graph[i], threshold) for i in ids}
    public = {i: c.keys() for i, c in clients.items()}
    routed: dict[int, dict[int, bytes]] = {i: {} for i in ids}  # recipient -> sender -> ciphertext
    for i, c in clients.items():
        for j, blob in c.shares({j: public[j] for j in graph[i]}).items():
            routed[j][i] = blob
    alive = [i for i in ids if i not in drop_before_masking]
    masked = {i: clients[i].masked(xs[i], {j: b for j, b in routed[i].items() if j in alive or j in drop_before_masking})
              for i in alive}
    shared_with = {i: sorted(routed[i]) for i in ids}
    survivors = [i for i in alive if i not in drop_before_unmask]
    masked = {i: masked[i] for i in survivors}
    dropped = [i for i in ids if i not in survivors]
    shares = {i: clients[i].unmask(survivors, dropped) for i in survivors}
    return unmasked_sum(masked, public, graph, shares, shared_with, threshold), masked


def _vectors(ids, n=50, seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, 2**40, n, dtype=np.uint64).astype(WORD) for i in ids}


@pytest.mark.parametrize("degree", [5, 4])
def test_sum_equals_the_plain_sum_without_dropouts(degree):
    xs = _vectors(range(1, 7))
    total, masked = run_round(xs, threshold=3, degree=degree)
    np.testing.assert_array_equal(total, sum(xs.values()))
    assert not np.array_equal(masked[1], xs[1])  # what the server saw of client 1 is not its vector


@pytest.mark.parametrize("degree", [5, 4])
def test_clients_dropping_after_sharing_are_tolerated(degree):
    xs = _vectors(range(1, 7), seed=1)
    total, _ = run_round(xs, threshold=3, degree=degree, drop_before_masking=(2,), drop_before_unmask=(5,))
    np.testing.assert_array_equal(total, sum(x for i, x in xs.items() if i not in (2, 5)))


def test_below_the_threshold_the_sum_is_refused():
    xs = _vectors(range(1, 6))
    with pytest.raises(SecAggError, match="below the threshold 4"):
        run_round(xs, threshold=4, degree=4, drop_before_masking=(1, 2))


def test_prg_is_deterministic_per_seed_and_spreads_over_64_bits():
    a, b = prg(b"k" * 32, 1000), prg(b"k" * 32, 1000)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, prg(b"j" * 32, 1000)) and a.max() > 2**63


def test_harary_graph_is_regular():
    g = neighbours(range(10), 4, seed=0)
    assert all(len(v) == 4 for v in g.values()) and all(i in g[j] for i in g for j in g[i])


def test_fixed_point_weighted_mean_within_a_quantization_step():
    fp, rng = FixedPoint(clip_range=0.5, bits=24), np.random.default_rng(0)
    xs = [rng.normal(0, 0.05, 100) for _ in range(4)]
    w = [10, 20, 30, 40]
    total = sum(fp.encode(x, wi, rng) for x, wi in zip(xs, w))
    mean, weight = fp.decode(total)
    assert weight == 100
    np.testing.assert_allclose(mean, sum(x * wi for x, wi in zip(xs, w)) / 100, atol=1.0 / fp.scale)


def test_the_trust_benchmark_runs_on_a_tiny_model(capsys):
    from benchmarks.trust import main

    main(["--model", "tiny-bert", "--clients", "4"])
    out = capsys.readouterr().out
    assert "int8" in out and "nf4" in out and "topk" in out and "sum exact" in out
