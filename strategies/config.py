"""Strategy configuration (owned by strategies/, read by the server)."""

from __future__ import annotations

from dataclasses import dataclass, field

from strategies.runconfig import check


@dataclass(frozen=True)
class StrategyConfig:
    """Aggregation strategy and its hyper-parameters.

    name: registry key of ``strategies.registry.STRATEGIES``.
    target: import path of a user's Flower Message-API ``Strategy`` subclass (Hydra's
        ``strategy._target_``); overrides ``name`` when set.
    proximal_mu: FedProx proximal weight (sent to clients as ``proximal-mu``).
    eta, eta_l, beta_1, beta_2, tau: FedOpt family (FedAdam, FedYogi, FedAdagrad).
    server_lr, server_momentum: FedAvgM.
    kwargs: extra keyword arguments for the strategy constructor (``target`` classes).
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

    def __post_init__(self) -> None:
        check(self.proximal_mu >= 0, "strategy.proximal_mu", "a number >= 0", self.proximal_mu)
        check(self.eta > 0, "strategy.eta", "a number > 0", self.eta)
        check(0 <= self.server_momentum < 1, "strategy.server_momentum", "a number in [0, 1)", self.server_momentum)
