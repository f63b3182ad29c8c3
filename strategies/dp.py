"""Client-level differential privacy (``dp=server|client``) as a wrapper over any delta
strategy (seed strategies: :mod:`strategies.seeds.private`), with Flower's RDP accountant (Google's ``dp-accounting``) under the run's
actual sampling.

Per round (DP-FedAvg, McMahan et al. 2018): every update ``d_i = state_i - global`` is
clipped to L2 norm ``dp.clip``; the server adds Gaussian noise of standard deviation
``noise_multiplier * clip`` to their sum and divides by the configured round size
``clients_per_round`` (a fixed denominator, so one client's presence changes the result
by at most ``clip / clients_per_round``); the inner strategy (FedAvg, FedAdam, ...) then
applies that noisy mean as if it were one reply. Updates are weighted uniformly, not by
examples: example counts are the clients' word and would break the bound.

``dp=server``: the server clips (a trusted aggregator sees raw updates).
``dp=client``: the clients clip their own updates before they are encoded, and the server
rejects a reply whose update exceeds the clip by more than the codec's rounding (5%),
then clips again, so the bound holds whatever a client sends; noise is still added by
the server, as in Flower's client-side fixed clipping. Neither is local DP: the server
must add the noise honestly.

Accounting: each round is one sampled Gaussian release with the run's sampling (a fixed
number of clients drawn without replacement from ``num_clients``; replace-one
neighbouring datasets, as dp-accounting's sampling-without-replacement RDP needs), the
sample size being the clients actually asked that round (re-sampled ones included).
``epsilon`` (at ``dp.delta``) joins every metrics row. With ``dp.target_epsilon`` the
noise multiplier is the smallest that keeps the whole run's epsilon at or below it.

The noise comes from a generator keyed by the run seed and round (reproducible runs,
the same after a crash and resume); this protects against anyone who does not know the
seed. ``dp.secret_noise=true`` keys it with a secret drawn from the OS at the run's start
instead, kept only in the server's checkpoint (deployments).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from strategies import wire
from strategies.plugins import Registry
from strategies.runconfig import ConfigError, check

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord

log = logging.getLogger("anther.server")
CLIENT_CLIP_SLACK = 1.05  # dp=client: a reply may exceed the clip by the codec's rounding


@dataclass(frozen=True)
class DPConfig:
    """``dp.name``: none, server or client (see the module docstring).

    clip: the L2 bound of one client's update. noise_multiplier: the noise's standard
    deviation in units of ``clip``; or target_epsilon > 0: the smallest multiplier whose
    whole run stays within it (then noise_multiplier is ignored). delta: the delta of
    the reported epsilon. secret_noise: key the noise with an OS secret (deployments).
    """

    name: str = "none"
    clip: float = 1.0
    noise_multiplier: float = 1.0
    target_epsilon: float = 0.0
    delta: float = 1e-5
    secret_noise: bool = False

    def __post_init__(self) -> None:
        check(self.clip > 0, "dp.clip", "a number > 0", self.clip)
        check(self.noise_multiplier >= 0, "dp.noise_multiplier", "a number >= 0", self.noise_multiplier)
        check(self.target_epsilon >= 0, "dp.target_epsilon", "a number >= 0 (0: use dp.noise_multiplier)",
              self.target_epsilon)
        check(0 < self.delta < 1, "dp.delta", "a number in (0, 1)", self.delta)


DP = Registry("dp", DPConfig)
for _name in ("none", "server", "client"):
    DP.add(_name, DPConfig, "strategies.dp:DPStrategy")


def _accountant(num_clients: int, delta: float) -> Any:
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting warns per RDP order it leaves out
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    try:
        return RdpAccountant(PrivacyConfig(target_delta=delta, population_size=num_clients,
                                           neighboring_relation=NeighboringRelation.REPLACE_ONE,
                                           sampling_method=SamplingMethod.WITHOUT_REPLACEMENT))
    except ImportError as err:
        raise ConfigError(f"dp accounting needs the 'dp-accounting' package (pip install dp-accounting): {err}") from err


def epsilon(noise_multiplier: float, samples: list[int], num_clients: int, delta: float) -> float:
    """The RDP epsilon at ``delta`` after rounds that asked ``samples[r]`` clients each."""
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    if noise_multiplier <= 0:
        return float("inf")
    acc = _accountant(num_clients, delta)
    for size, count in Counter(min(s, num_clients) for s in samples).items():  # RDP composes by addition: order-free
        acc.compose(GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=size,
                                         population_size=num_clients), count)
    return acc.get_epsilon(delta) if samples else 0.0


def noise_for(target: float, rounds: int, per_round: int, num_clients: int, delta: float) -> float:
    """The smallest noise multiplier (to 1e-3 relative) whose ``rounds`` rounds of
    ``per_round`` clients stay within epsilon ``target``."""
    lo, hi = 0.0, 1.0
    while epsilon(hi, [per_round] * rounds, num_clients, delta) > target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ConfigError(f"dp.target_epsilon={target}: no noise multiplier up to 1e4 reaches it")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon(mid, [per_round] * rounds, num_clients, delta) > target else (lo, mid)
    return hi


def clip_update(update: dict[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """``update`` scaled to L2 norm at most ``clip`` (float64), and its norm before."""
    norm = float(np.sqrt(sum(float(np.vdot(v, v)) for v in update.values())))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in update.items()}, norm


def noise_to_signal(sigma: float, parameters: int, per_round: int) -> float:
    """Norm of the Gaussian noise on a round's mean update, in units of ``dp.clip``
    (``sigma * clip * sqrt(parameters) / per_round``): the signal, the mean of clipped
    updates, is at most 1 in those units, so a ratio far above 1 drowns it."""
    return sigma * math.sqrt(parameters) / per_round


class DPStrategy:
    """A delta strategy (``inner``) that receives the clipped, noised mean of the round's
    updates; every other attribute is the inner strategy's."""

    def __init__(self, inner: Any, cfg: DPConfig, num_clients: int, clients_per_round: int, seed: int,
                 rounds: int) -> None:
        self.inner, self.cfg = inner, cfg
        self.num_clients, self.per_round, self.seed, self.rounds = num_clients, clients_per_round, seed, rounds
        self.sigma = (noise_for(cfg.target_epsilon, rounds, clients_per_round, num_clients, cfg.delta)
                      if cfg.target_epsilon > 0 else cfg.noise_multiplier)
        self.samples: list[int] = []  # clients asked per aggregated round (the accountant's history)
        self.key = secrets.randbits(63) if cfg.secret_noise else seed
        self._global: dict[str, np.ndarray] = {}
        self._round, self._asked = None, set()
        log.info("dp=%s: clip %g, noise multiplier %.4g (%s), delta %g", cfg.name, cfg.clip, self.sigma,
                 f"for epsilon {cfg.target_epsilon} over {rounds} rounds" if cfg.target_epsilon > 0 else "as set",
                 cfg.delta)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any) -> Iterable[Message]:
        if server_round != self._round:
            self._round, self._asked = server_round, set()
        self._asked.update(grid.get_node_ids())
        first = not self._global
        self._global = {k: a.numpy() for k, a in arrays.items()}
        if first:
            ratio = noise_to_signal(self.sigma, sum(v.size for v in self._global.values()), self.per_round)
            run_ratio = ratio / math.sqrt(max(self.rounds, 1))
            log.info("dp: the noise added to a round's mean update has norm ~%.3g x dp.clip, its signal at most "
                     "1 x dp.clip (sigma x sqrt(parameters) / clients_per_round); over %d rounds the noise adds up "
                     "to ~%.3g x what a steady signal adds up to%s", ratio, self.rounds, run_ratio,
                     "; expect little or no learning: fewer trained parameters (e.g. method=head) or more clients "
                     "per round, from a larger population, lower it" if run_ratio > 1 else "")
        return self.inner.configure_train(server_round, arrays, config, grid)

    def check_clipped(self, update_norm: float) -> str | None:
        """dp=client: why an update's norm shows its client did not clip (None: it did)."""
        if self.cfg.name == "client" and update_norm > CLIENT_CLIP_SLACK * self.cfg.clip:
            return f"update norm {update_norm:.4g} exceeds dp.clip={self.cfg.clip:g}: dp=client needs clipped updates"
        return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

        replies = list(replies)
        if not replies:
            return None, None
        keys = sorted(self._global)
        total = {k: np.zeros(self._global[k].shape, np.float64) for k in keys}
        for reply in replies:
            arrays = reply.content[wire.ARRAYS]
            clipped, _ = clip_update({k: arrays[k].numpy().astype(np.float64) - self._global[k] for k in keys}, self.cfg.clip)
            for k in keys:
                total[k] += clipped[k]
        rng = np.random.default_rng([self.key & 0xFFFFFFFF, self.key >> 32, server_round, 0xD9])
        std = self.sigma * self.cfg.clip
        noisy = {k: (self._global[k] + (total[k] + rng.normal(0.0, std, total[k].shape)) / self.per_round).astype(np.float32)
                 for k in keys}
        content = RecordDict({wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in noisy.items()}),
                              wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: sum(
                                  int(r.content[wire.METRICS][wire.NUM_EXAMPLES]) for r in replies)})})
        arrays, metrics = self.inner.aggregate_train(server_round, [Message(content, reply_to=replies[0])])
        self.samples.append(max(len(self._asked), len(replies)))
        eps = epsilon(self.sigma, self.samples, self.num_clients, self.cfg.delta)
        out = dict(metrics or {})
        out.update({"epsilon": eps, "dp-noise-multiplier": self.sigma})
        return arrays, MetricRecord(out)

    def state_dict(self) -> dict[str, np.ndarray]:
        from strategies.state import get_strategy_state

        return {**get_strategy_state(self.inner), "dp/samples": np.asarray(self.samples, dtype=np.int64),
                "dp/key": np.asarray([self.key], dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        from strategies.state import set_strategy_state

        self.samples = [int(v) for v in state.get("dp/samples", np.zeros(0, np.int64))]
        if "dp/key" in state:
            self.key = int(state["dp/key"][0])
        set_strategy_state(self.inner, {k: v for k, v in state.items() if not k.startswith("dp/")})


def wrap(strategy: Any, cfg: DPConfig, num_clients: int, clients_per_round: int, seed: int, rounds: int) -> Any:
    """``strategy`` behind client-level DP (as it is with ``dp=none``); a seed strategy
    clips and noises its per-seed coefficients itself (:mod:`strategies.seeds.private`)."""
    if cfg.name == "none":
        return strategy
    if getattr(strategy, "update_kind", "delta") == wire.KIND_SEEDS:
        from strategies.seeds.private import SeedPrivacy

        sigma = (noise_for(cfg.target_epsilon, rounds, clients_per_round, num_clients, cfg.delta)
                 if cfg.target_epsilon > 0 else cfg.noise_multiplier)
        key = secrets.randbits(63) if cfg.secret_noise else seed
        strategy.privacy = SeedPrivacy(cfg, sigma, num_clients, clients_per_round, key)
        return strategy
    return DPStrategy(strategy, cfg, num_clients, clients_per_round, seed, rounds)
