"""Which LoRA rank each client trains when ranks are heterogeneous (light: no torch).

The server decides (the heterogeneous-rank strategies send each client the global state
truncated to its rank); the rule is a pure function of the client's stable identity
(its partition id in simulation), so it is the same across rounds and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def client_rank(identity: int, choices: Sequence[int], assignment: str, seed: int) -> int:
    """The rank client ``identity`` trains: ``choices[identity % n]`` (cycle) or a draw
    seeded by ``(seed, identity)`` (random); ``by_device`` needs the population
    (:func:`ranks_by_identity`)."""
    if not choices:
        raise ValueError("no rank choices")
    if assignment == "cycle":
        return int(choices[identity % len(choices)])
    if assignment == "random":
        return int(np.random.default_rng([seed, identity, 0x52414E4B]).choice(list(choices)))
    raise ValueError(f"rank assignment {assignment!r} is not supported here")


BY_DEVICE_NEEDS_DEVICES = ("method.rank_assignment=by_device needs a device population (device=mix, rpi5, phone-mid, "
                           "...; the ranks follow each client's device class): set device=..., or use "
                           "method.rank_assignment=cycle|random (on a deployment, each SuperNode's --device)")


def device_ranks(choices: Sequence[int], speeds: dict[str, tuple[float, float]]) -> dict[str, int]:
    """``rank_assignment=by_device``: each device class's rank. Classes are ordered by their
    profile's compute, then memory (``speeds``: name -> (GFLOP/s, MiB)), and spread over the
    sorted choices: the slowest class trains the smallest rank, the fastest the largest,
    the others evenly between (K classes, n choices: class k of K gets the choice at
    ``round(k (n - 1) / (K - 1))``); a population of one class trains the largest."""
    ranked, order = sorted(choices), sorted(speeds, key=lambda n: (*speeds[n], n))
    if len(order) == 1:
        return {order[0]: int(ranked[-1])}
    return {name: int(ranked[round(k * (len(ranked) - 1) / (len(order) - 1))]) for k, name in enumerate(order)}


def ranks_by_identity(choices: Sequence[int], population, num_clients: int, seed: int) -> tuple[np.ndarray, dict]:
    """(num_clients,) rank of every client identity under ``by_device`` and the per-class
    ranks; the classes are the simulator's own draw (:meth:`Population.classes`, the
    same seed), so a client's rank follows the device its round is clocked on."""
    per_class = device_ranks(choices, {n: (p.flops_fp32, p.memory_mb) for n, p in population.profiles.items()})
    classes = population.classes(num_clients, seed)
    return np.array([per_class[population.names[c]] for c in classes], dtype=np.int64), per_class


def prune_width(rank: int, gamma: float) -> int:
    """Components HetLoRA's self-pruning may drop from a rank-``rank`` client (>= 1, and
    always leaving at least one)."""
    return min(max(1, round(gamma * rank)), rank - 1)


# -- LoRA tensor names (PEFT's): A (r x d_in) and B (d_out x r), for Linear and Embedding layers
A_TAGS, B_TAGS = (".lora_A.", ".lora_embedding_A."), (".lora_B.", ".lora_embedding_B.")
BASE_DELTA = ".base_delta"  # a dense frozen update of an adapted Linear (FLoRA, FlexLoRA)


def is_a(name: str) -> bool:
    return any(t in name for t in A_TAGS)


def is_b(name: str) -> bool:
    return any(t in name for t in B_TAGS)


def module_of(name: str) -> str | None:
    """The adapted module of a LoRA tensor name (None for other tensors)."""
    for tag in A_TAGS + B_TAGS:
        if tag in name:
            return name.split(tag, 1)[0]
    return None


def truncated(name: str, value, rank: int):
    """The first ``rank`` components of a LoRA tensor (numpy or torch); others as they are."""
    if is_a(name):
        return value[:rank]
    if is_b(name):
        return value[:, :rank]
    return value


def rank_of(state) -> int | None:
    """The LoRA rank of a state (the rows of its A tensors); None without LoRA."""
    ranks = {int(v.shape[0]) for k, v in state.items() if is_a(k)}
    if len(ranks) > 1:
        raise ValueError(f"LoRA tensor shapes disagree on the rank: {sorted(ranks)}")
    return ranks.pop() if ranks else None
