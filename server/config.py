"""Server-side configuration: strategy, sampling, rounds, evaluation, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.screening import ScreenConfig
from server.trackers import parse_logger
from strategies.adversary import AttackConfig
from strategies.assign import AssignConfig
from strategies.codecs import CodecConfig
from strategies.dp import DPConfig
from strategies.population import DeviceConfig
from strategies.robust import RobustConfig
from strategies.secagg import SecAggConfig
from strategies.config import FedAvgConfig, StrategyConfig
from strategies.runconfig import check, check_choice

RESUME_MODES = ("false", "true", "auto")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the ServerApp needs, as read from run_config.

    evaluator: import path of a factory ``f(run_config: dict) -> evaluate_fn`` used for
        central evaluation; the server never imports client code directly.
    run_dir: where metrics.jsonl, summary.json and checkpoints/ go.
    resume: "false" starts afresh; "true" continues from ``run_dir/checkpoints/latest``
        and is an error without one; "auto" continues when there is one, else starts.
    logger: experiment trackers fed with every metrics row (``server/trackers.py``):
        tensorboard, mlflow, wandb; several allowed.
    logger_group: the trackers' group of runs (a sweep's folder; MLflow experiment,
        W&B group); empty for a single run.
    timeout_s: how long a round waits for its replies; a client that crashes, hangs or
        disappears past it counts as a failure and the round goes on.
    keep_checkpoints: the newest round checkpoints kept (0: all).
    screen: per-reply and per-round screening limits (``server/screening.py``).
    robust: the robust rule in front of the strategy (``strategies/robust.py``).
    secagg: secure aggregation of delta updates (``strategies/secagg.py``).
    dp: client-level differential privacy (``strategies/dp.py``).
    attack: the simulated adversaries (``strategies/adversary.py``); the server only
        counts the attackers it sampled.
    device: the simulated device population (``strategies/population.py``): who is
        available, simulated time and energy (``server/clock.py``).
    pool: a simulation's SuperNodes (set by the simulator; 0: deployment, one SuperNode
        per client, each asked its identity). With a pool, clients ``0 .. num_clients - 1``
        are identities the messages carry, run by whichever of the ``pool`` SuperNodes a
        round gives them: a population costs no node, context or message per client.
    round_deadline_s: simulated seconds a round waits for its clients (None: no
        deadline); a client whose simulated time passes it is dropped, not aggregated.
    assign: which configuration each simulated device trains (``strategies/assign.py``):
        ``fixed`` or ``resource_aware`` over ``assign.local_steps`` / ``assign.batch_size``.
    deployed: set by ``anther-deploy run``: the clients are real devices. With
        ``assign=resource_aware`` each node then picks its own option, the first its
        memory budget holds (:func:`client.budget.node_option`), as the simulator picks
        for a simulated device.
    """

    strategy: StrategyConfig = field(default_factory=FedAvgConfig, metadata={"registry": "strategies.registry:STRATEGIES"})
    codec: CodecConfig = field(default_factory=CodecConfig, metadata={"registry": "strategies.codecs:CODECS"})
    robust: RobustConfig = field(default_factory=RobustConfig, metadata={"registry": "strategies.robust:ROBUST"})
    attack: AttackConfig = field(default_factory=AttackConfig, metadata={"registry": "strategies.adversary:ATTACKS"})
    dp: DPConfig = field(default_factory=DPConfig, metadata={"registry": "strategies.dp:DP"})
    secagg: SecAggConfig = field(default_factory=SecAggConfig, metadata={"registry": "strategies.secagg:SECAGG"})
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    round_deadline_s: float | None = None
    assign: AssignConfig = field(default_factory=AssignConfig)
    num_clients: int = 10
    clients_per_round: int = 5
    rounds: int = 5
    local_steps: int = 10  # the clients' steps per round (seed strategies bound pairs by it)
    eval_every: int = 1
    seed: int = 0
    resume: str = "false"
    logger: tuple[str, ...] = ()
    logger_group: str = ""
    run_dir: str = "outputs/flwr-run"
    evaluator: str = "client.evaluate:make_central_evaluate"
    timeout_s: float = 3600.0
    keep_checkpoints: int = 3
    max_examples_per_client: int = 10**9
    pool: int = 0
    deployed: bool = False

    def __post_init__(self) -> None:
        check(self.num_clients >= 1, "num_clients", "an integer >= 1", self.num_clients)
        check(
            1 <= self.clients_per_round <= self.num_clients,
            "clients_per_round",
            f"an integer in [1, num_clients={self.num_clients}]",
            self.clients_per_round,
        )
        check(self.rounds >= 1, "rounds", "an integer >= 1", self.rounds)
        check_choice("resume", self.resume, RESUME_MODES)
        object.__setattr__(self, "logger", parse_logger(self.logger))
        check(self.screen.min_valid_replies <= self.clients_per_round, "screen.min_valid_replies",
              f"an integer <= clients_per_round={self.clients_per_round}", self.screen.min_valid_replies)
        check(self.pool >= 0, "pool", "an integer >= 0 (0: one SuperNode per client)", self.pool)
        check(self.keep_checkpoints >= 0, "keep_checkpoints", "an integer >= 0 (0: keep all)", self.keep_checkpoints)
        check(self.timeout_s > 0, "timeout_s", "a number > 0 (seconds)", self.timeout_s)
        check(self.round_deadline_s is None or self.round_deadline_s > 0, "round_deadline_s",
              "a number of seconds > 0 (or null: no deadline)", self.round_deadline_s)
        check(self.round_deadline_s is None or self.device.active, "round_deadline_s",
              "null unless the run simulates devices (device=<profile>|mix|file)", self.round_deadline_s)
        check(self.assign.name == "fixed" or self.device.active or self.deployed, "assign",
              "fixed unless the run simulates devices (device=<profile>|mix|file|trace) or runs deployed "
              "(anther-deploy run: each node picks the first option its memory budget holds)", self.assign.name)
        check(self.eval_every >= 0, "eval_every", "an integer >= 0 (0 = only after the last round)", self.eval_every)
