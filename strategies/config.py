"""Strategy configuration: one frozen dataclass per strategy, registered with it.

``StrategyConfig`` holds what every strategy shares (``name``, a user class ``target``
and its constructor ``kwargs``); each registered strategy extends it with its own
hyper-parameters, so a key of another strategy (``strategy=fedavg
strategy.proximal_mu=0.1``) is a config error listing the valid keys. The values here
equal ``configs/strategy/<name>.yaml`` (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strategies.runconfig import check, check_choice


@dataclass(frozen=True)
class StrategyConfig:
    """Shared by every strategy.

    name: registry key of ``strategies.registry.STRATEGIES``.
    target: import path of a user's Flower Message-API ``Strategy`` subclass (Hydra's
        ``strategy._target_``); built instead of the registered class, with the named
        strategy's config when it is a :class:`~strategies.seed_strategy.SeedStrategy`.
    kwargs: extra keyword arguments for ``target``'s constructor.
    """

    name: str = "fedavg"
    target: str | None = None
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FedAvgConfig(StrategyConfig):
    """FedAvg (McMahan et al., 2017): no hyper-parameters of its own."""


@dataclass(frozen=True)
class FedProxConfig(StrategyConfig):
    """FedProx (Li et al., 2020). proximal_mu: the proximal weight sent to clients."""

    name: str = "fedprox"
    proximal_mu: float = 0.1

    def __post_init__(self) -> None:
        check(self.proximal_mu >= 0, "strategy.proximal_mu", "a number >= 0", self.proximal_mu)


@dataclass(frozen=True)
class FedAdagradConfig(StrategyConfig):
    """FedAdagrad (Reddi et al., 2021): server lr ``eta``, ``eta_l`` as Flower's
    strategy records it, adaptivity ``tau``."""

    name: str = "fedadagrad"
    eta: float = 1e-2
    eta_l: float = 1e-3
    tau: float = 1e-6

    def __post_init__(self) -> None:
        check(self.eta > 0, "strategy.eta", "a number > 0", self.eta)
        check(self.tau > 0, "strategy.tau", "a number > 0", self.tau)


@dataclass(frozen=True)
class FedOptConfig(FedAdagradConfig):
    """FedAdam / FedYogi (Reddi et al., 2021): as FedAdagrad plus the moments' decays."""

    name: str = "fedadam"
    beta_1: float = 0.9
    beta_2: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("beta_1", "beta_2"):
            v = getattr(self, key)
            check(0 <= v < 1, f"strategy.{key}", "a number in [0, 1)", v)


@dataclass(frozen=True)
class FedAvgMConfig(StrategyConfig):
    """FedAvgM (Hsu et al., 2019): server learning rate and momentum."""

    name: str = "fedavgm"
    server_lr: float = 1.0
    server_momentum: float = 0.9

    def __post_init__(self) -> None:
        check(self.server_lr > 0, "strategy.server_lr", "a number > 0", self.server_lr)
        check(0 <= self.server_momentum < 1, "strategy.server_momentum", "a number in [0, 1)", self.server_momentum)


@dataclass(frozen=True)
class SeedConfig(StrategyConfig):
    """Seed-based strategies (FedKSeed, FedKSeed-Pro; clients send (seed, scalar) pairs).
    These are the round's shared settings: the strategy owns them and sends them down.

    lr: the round's learning rate, sent every round (``zo-lr``): the clients' MeZO step
        size (FedKSeed), the server's SGD step size (FwdLLM).
    server_lr: scales the aggregated update.
    num_seeds: K, the candidate-seed pool (FedKSeed: one pool for the run).
    dist: perturbation distribution, gaussian16 (default: N(0, 1) quantized to 65,536
        levels, bitwise on every backend, 1.8-2.1x faster) | gaussian (exact fp64
        Box-Muller; the default before 2026-12-04) | rademacher.
    kernel_backend: ``kernels`` backend (auto | torch | numba) on the server; a value
        other than auto is also sent to the clients.
    perturbations: perturbations per local step (zo_seed) or per batch (forward_grad).
    lr_schedule: constant | linear (decay to 0 over the run's rounds).
    scalar_bits: width of each uplink scalar: 32 (fp32, exact) or 16 | 8 | 4 | 2 (integer
        codes of one fp32 scale per reply, stochastic rounding: unbiased).
    diag_every: clients add their diagnostic metrics (peak RSS, times; ~110 bytes) in
        round 1 and every this many rounds (0: round 1 only).
    """

    name: str = "fedkseed"
    lr: float = 2e-3
    server_lr: float = 1.0
    num_seeds: int = 4096
    dist: str = "gaussian16"
    kernel_backend: str = "auto"
    perturbations: int = 1
    lr_schedule: str = "constant"
    scalar_bits: int = 8
    diag_every: int = 10

    def __post_init__(self) -> None:
        from kernels import BACKENDS, DISTS  # light: no backend is imported here

        check(self.lr > 0, "strategy.lr", "a number > 0", self.lr)
        check(self.num_seeds >= 1, "strategy.num_seeds", "an integer >= 1 (K, the seed pool size)", self.num_seeds)
        check_choice("strategy.dist", self.dist, DISTS)
        check_choice("strategy.kernel_backend", self.kernel_backend, ("auto", *BACKENDS))
        check(self.perturbations >= 1, "strategy.perturbations", "an integer >= 1", self.perturbations)
        check_choice("strategy.lr_schedule", self.lr_schedule, ("constant", "linear"))
        check(self.scalar_bits in (32, 16, 8, 4, 2), "strategy.scalar_bits", "one of 32, 16, 8, 4, 2", self.scalar_bits)
        check(self.diag_every >= 0, "strategy.diag_every", "an integer >= 0", self.diag_every)


@dataclass(frozen=True)
class FwdLLMConfig(SeedConfig):
    """FwdLLM: as :class:`SeedConfig` (a fresh pool every round), plus

    variance_threshold, max_asks: variance control: ask the same clients for more
        perturbations while the estimate's variance exceeds the threshold, at most
        ``max_asks`` extra times per round (0 disables).
    candidates: discriminative sampling: candidates drawn per kept perturbation, keeping
        those best aligned with the previous global update (1 disables); the server
        picks them and sends the chosen pool indices down.
    """

    name: str = "fwdllm"
    perturbations: int = 10
    lr_schedule: str = "linear"
    variance_threshold: float = 0.1
    max_asks: int = 2
    candidates: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.variance_threshold >= 0, "strategy.variance_threshold", "a number >= 0", self.variance_threshold)
        check(self.max_asks >= 0, "strategy.max_asks", "an integer >= 0", self.max_asks)
        check(self.candidates >= 1, "strategy.candidates", "an integer >= 1", self.candidates)


@dataclass(frozen=True)
class SplitFedConfig(StrategyConfig):
    """SplitFed V1 / V2 (``strategies/split.py``) for ``method=split``.

    client_strategy: the delta strategy (registry name, with its default settings)
        that aggregates the clients' parts: fedavg, fedprox, fedadam, ...
    server_part: import path of the factory ``f(run_config) -> server part`` that loads
        and trains the server's blocks (default: the backbone zoo's).
    """

    name: str = "sfl_v2"
    client_strategy: str = "fedavg"
    server_part: str = "client.split_server:make_server_part"

    def __post_init__(self) -> None:
        from strategies.registry import STRATEGIES

        check(bool(self.server_part), "strategy.server_part", "an import path 'package.module:factory'", self.server_part)
        choices = [n for n in STRATEGIES.names("delta") if n != "fedprox"]  # no proximal term in split clients yet
        check_choice("strategy.client_strategy", self.client_strategy, choices)


@dataclass(frozen=True)
class HetRankConfig(StrategyConfig):
    """FLoRA / FlexLoRA (``strategies/hetrank.py``) for ``method=lora`` with
    ``method.rank_choices``: no hyper-parameters of their own."""

    name: str = "flora"


@dataclass(frozen=True)
class FlexLoRAConfig(HetRankConfig):
    """FlexLoRA (``strategies/hetrank.py``).

    average: "products" (FlexLoRA: the new ``dW`` is the weighted mean of the clients'
        full-size products, so the part of ``dW`` beyond a client's rank, which its
        truncated SVD could not carry, counts as zero in the mean) or "updates" (the
        products' changes averaged: ``dW += sum_k p_k (s B_k A_k - T_k(dW))``, ``T_k`` the
        rank-``r_k`` truncation the client started from, so what a client could not hold
        counts as unchanged and the global update never shrinks).
    """

    name: str = "flexlora"
    average: str = "products"

    def __post_init__(self) -> None:
        check_choice("strategy.average", self.average, ("products", "updates"))


@dataclass(frozen=True)
class HetLoRAConfig(HetRankConfig):
    """HetLoRA (``strategies/hetrank.py``).

    weighting: "examples" (by ``num-examples``) or "norm" (HetLoRA's sparsity-weighted
        aggregation: by ``||B_k A_k||_F`` per module).
    padding: "zeros" (HetLoRA: a client's missing components count as zeros in the
        average, so a component only a quarter of the clients train shrinks toward zero
        each round) or "holders" (HeteroFL's rule: each component is the weighted mean over
        the clients that trained it; one no sampled client trained keeps its value) or
        "global" (the updates averaged: a client's missing components count as the global
        values it left unchanged, so each component moves by its trainers' weighted
        updates and none shrinks).
    self_pruning: clients regularise their top ``prune_gamma`` fraction of components by
        ``prune_lambda * ||B_tail A_tail||_F`` and drop them when that norm fell during the
        round; the server keeps each client's pruned rank for the rest of the run.
    """

    name: str = "hetlora"
    weighting: str = "examples"
    padding: str = "zeros"
    self_pruning: bool = False
    prune_lambda: float = 1e-2
    prune_gamma: float = 0.25

    def __post_init__(self) -> None:
        check_choice("strategy.weighting", self.weighting, ("examples", "norm"))
        check_choice("strategy.padding", self.padding, ("zeros", "holders", "global"))
        check(self.prune_lambda > 0, "strategy.prune_lambda", "a number > 0", self.prune_lambda)
        check(0 < self.prune_gamma < 1, "strategy.prune_gamma", "a number in (0, 1)", self.prune_gamma)
