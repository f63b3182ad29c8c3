"""Strategy configuration (owned by strategies/, read by the server)."""

from __future__ import annotations

from dataclasses import dataclass, field

from strategies.runconfig import check, check_choice


@dataclass(frozen=True)
class StrategyConfig:
    """Aggregation strategy and its hyper-parameters.

    name: registry key of ``strategies.registry.STRATEGIES``.
    target: import path of a user's Flower Message-API ``Strategy`` subclass (Hydra's
        ``strategy._target_``); overrides ``name`` when set.
    proximal_mu: FedProx proximal weight (sent to clients as ``proximal-mu``).
    eta, eta_l, beta_1, beta_2, tau: FedOpt family (FedAdam, FedYogi, FedAdagrad).
    server_lr, server_momentum: FedAvgM; ``server_lr`` also scales seed-based updates.
    kwargs: extra keyword arguments for the strategy constructor (``target`` classes).

    Seed-based strategies (fedkseed, fedkseed_pro, fwdllm; clients send (seed, scalar)):
    eta_l: the client learning rate they prescribe (sent every round as ``zo-lr``).
    num_seeds: K, the candidate-seed pool per round (FedKSeed: one pool for the run).
    dist: perturbation distribution, gaussian | rademacher.
    kernel_backend: ``kernels`` backend for the server's updates (auto | torch | numba).
    perturbations: perturbations per local step (zo_seed) or per batch (forward_grad).
    lr_schedule: constant | linear (FwdLLM: linear decay to 0 over the run's rounds).
    variance_threshold, max_asks: FwdLLM variance control: ask the same clients for more
        perturbations while the estimate's variance exceeds the threshold, at most
        ``max_asks`` extra times per round (0 disables).
    candidates: FwdLLM discriminative sampling: candidates drawn per kept perturbation,
        keeping those best aligned with the previous global update (1 disables); the
        server picks them and sends the chosen pool indices down.
    scalar_bits: width of each uplink scalar: 32 (fp32, exact) or 16 | 8 | 4 | 2 (integer
        codes of one fp32 scale per reply, stochastic rounding: unbiased).
    diag_every: seed clients add their diagnostic metrics (peak RSS, times; ~110 bytes)
        in round 1 and every this many rounds (0: round 1 only).
    """

    name: str = "fedavg"
    target: str | None = None
    proximal_mu: float = 0.01
    eta: float = 1e-2
    eta_l: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-6
    server_lr: float = 1.0
    server_momentum: float = 0.9
    kwargs: dict = field(default_factory=dict)
    num_seeds: int = 4096
    dist: str = "gaussian"
    kernel_backend: str = "auto"
    perturbations: int = 1
    lr_schedule: str = "constant"
    variance_threshold: float = 0.1
    max_asks: int = 0
    candidates: int = 1
    scalar_bits: int = 8
    diag_every: int = 10

    def __post_init__(self) -> None:
        from kernels import BACKENDS, DISTS  # light: no backend is imported here

        check(self.num_seeds >= 1, "strategy.num_seeds", "an integer >= 1 (K, the seed pool size)", self.num_seeds)
        check_choice("strategy.dist", self.dist, DISTS)
        check_choice("strategy.kernel_backend", self.kernel_backend, ("auto", *BACKENDS))
        check(self.perturbations >= 1, "strategy.perturbations", "an integer >= 1", self.perturbations)
        check_choice("strategy.lr_schedule", self.lr_schedule, ("constant", "linear"))
        check(self.eta_l > 0, "strategy.eta_l", "a number > 0", self.eta_l)
        check(self.variance_threshold >= 0, "strategy.variance_threshold", "a number >= 0", self.variance_threshold)
        check(self.max_asks >= 0, "strategy.max_asks", "an integer >= 0", self.max_asks)
        check(self.scalar_bits in (32, 16, 8, 4, 2), "strategy.scalar_bits", "one of 32, 16, 8, 4, 2", self.scalar_bits)
        check(self.diag_every >= 0, "strategy.diag_every", "an integer >= 0", self.diag_every)
        check(self.candidates >= 1, "strategy.candidates", "an integer >= 1", self.candidates)
        check(self.proximal_mu >= 0, "strategy.proximal_mu", "a number >= 0", self.proximal_mu)
        check(self.eta > 0, "strategy.eta", "a number > 0", self.eta)
        check(0 <= self.server_momentum < 1, "strategy.server_momentum", "a number in [0, 1)", self.server_momentum)
