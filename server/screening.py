"""Round-level screening: what the loop checks beyond each update kind's own screening.

Per reply, before its kind decodes it: it answers a request of this exchange (its
``reply_to`` is one of the messages sent, from the node that message went to) and its
serialized payload is within ``screen.max_reply_mb``. Per round, after decoding: an
update whose norm exceeds ``screen.norm_bound`` times the median norm of the round's
accepted updates is rejected (a finite but huge update, e.g. every value 1e30, never
reaches the average; the kinds measure the norm: a delta against the state its client
was sent, a seed reply by its scalars, with a bound 100x wider since those follow each
client's own gradient norm). A round with fewer than
``screen.min_valid_replies`` accepted updates asks further clients, at most
``screen.max_resamples`` times; if it still has too few, the run stops with an error and
keeps the checkpoint of the last completed round.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from strategies.runconfig import check

if TYPE_CHECKING:
    from flwr.app import Message

MB = 1 << 20


@dataclass(frozen=True)
class ScreenConfig:
    """Screening limits (``screen.*``).

    max_reply_mb: largest serialized reply accepted; 0: automatic (for updates that
        carry the trainable state: twice its fp32 size plus 1 MiB; otherwise no limit).
    norm_bound: an update whose norm exceeds this many times the round's median update
        norm is rejected; 0 disables the bound.
    min_valid_replies: fewest accepted updates a round aggregates; below it further
        clients are sampled.
    max_resamples: how many times a round may sample further clients before the run
        stops with an error.
    """

    max_reply_mb: float = 0.0
    norm_bound: float = 10.0
    min_valid_replies: int = 1
    max_resamples: int = 3

    def __post_init__(self) -> None:
        check(self.max_reply_mb >= 0, "screen.max_reply_mb", "a number >= 0 (0: automatic)", self.max_reply_mb)
        check(self.norm_bound == 0 or self.norm_bound >= 1, "screen.norm_bound",
              "0 (off) or a number >= 1 (times the round's median update norm)", self.norm_bound)
        check(self.min_valid_replies >= 1, "screen.min_valid_replies", "an integer >= 1", self.min_valid_replies)
        check(self.max_resamples >= 0, "screen.max_resamples", "an integer >= 0", self.max_resamples)


class RoundFailed(RuntimeError):
    """A round could not gather enough valid updates; the last checkpoint is kept."""


def reply_limit_bytes(cfg: ScreenConfig, state: Mapping[str, np.ndarray]) -> int | None:
    """The largest reply accepted, in bytes (None: no limit)."""
    if cfg.max_reply_mb > 0:
        return int(cfg.max_reply_mb * MB)
    if not state:
        return None
    return 2 * sum(int(np.prod(v.shape)) * 4 for v in state.values()) + MB


def transport_reason(reply: Message, pending: Collection[str], sent_to: Mapping[str, int]) -> str | None:
    """Why a pulled reply is not an answer to one of the ``pending`` messages (``sent_to``:
    message id -> destination node); None when it is."""
    meta = reply.metadata
    if meta.reply_to_message_id not in pending:
        return "reply answers no pending request of this exchange (stale or replayed)"
    if sent_to.get(meta.reply_to_message_id) != meta.src_node_id:
        return f"reply to a request sent to node {sent_to.get(meta.reply_to_message_id)} came from node {meta.src_node_id}"
    return None


def size_reason(size: int, limit: int | None) -> str | None:
    """Why a reply of ``size`` serialized bytes is too large; None when it is not."""
    if limit is not None and size > limit:
        return f"reply of {size / MB:.2f} MiB exceeds the limit of {limit / MB:.2f} MiB (screen.max_reply_mb)"
    return None


def norm_outliers(norms: Mapping[int, float], bound: float) -> dict[int, str]:
    """``key -> reason`` for every norm above ``bound`` x the median of ``norms`` (or not
    finite); the median of the finite ones, so a single non-finite norm cannot move it."""
    if bound <= 0 or not norms:
        return {}
    finite = [v for v in norms.values() if np.isfinite(v)]
    median = float(np.median(finite)) if finite else 0.0
    out = {}
    for key, value in norms.items():
        if not np.isfinite(value):
            out[key] = "update norm is not finite"
        elif value > bound * median:
            out[key] = (f"update norm {value:.4g} exceeds {bound:g} x the round's median {median:.4g} "
                        "(screen.norm_bound)")
    return out


def common_metrics(replies: list[Message], key: str) -> list:
    """Keep in every reply's ``key`` MetricRecord only the keys all replies share (Flower's
    strategies refuse to aggregate records with different keys, so one client's extra or
    missing metric would cost the round); returns the records as they came."""
    from flwr.app import MetricRecord

    records = [r.content.metric_records.get(key) for r in replies]
    shared = set.intersection(*(set(m.keys()) for m in records)) if records and all(records) else set()
    for reply, record in zip(replies, records):
        if record is not None and set(record.keys()) != shared:
            reply.content[key] = MetricRecord({k: record[k] for k in record.keys() if k in shared})
    return records
