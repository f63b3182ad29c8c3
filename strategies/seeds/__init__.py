"""The (seed, scalar) wire format shared by seed-based clients and strategies.

Backprop-free clients (zeroth-order MeZO steps, forward gradients) never send tensors.
Every round has a *pool* of candidate seeds, derived on both sides from
``(pool-seed, pool-round, pool-size)`` (FedKSeed keeps one pool for the whole run,
``pool-round = 0``; FwdLLM draws a fresh pool per round). The *server* decides which pool
indices each request uses: a draw seed (``zo-draw``, from which the client regenerates
them with :func:`draw_indices`) or an explicit list (``zo-assigned``: FedKSeed-Pro's
importance sampling, FwdLLM's discriminative sampling). A client replies one scalar per
perturbation, in that order, and the model change it stands for is

    delta = -lr * sum_j scalar_j * z(pool[index_j])

with ``z`` from :mod:`kernels` (the same on every device). Replies name no seeds and
carry no metric names: a 28-byte header and the scalars, fp32 or stochastically rounded
integer codes of ``zo-bits`` bits (:class:`ReplyFrame`; 100 perturbations at 4 bits are
a 78-byte frame). A round's aggregated update is a list of (seed, coefficient) pairs
applied with :func:`kernels.accumulate_`; a client that missed rounds replays the
server's history of those lists (see :class:`History`).

Modules: ``keys`` (round-config and record keys), ``pool`` (pools, draws, raw arrays),
``history`` (round updates, the catch-up history), ``frame`` (the reply frame),
``replies`` (screening, weighted aggregate); everything is re-exported here.

Tensors are always visited in sorted-name order (``sorted(state)``), the order the
element indices of ``z`` refer to on the server and on every client.
"""

from strategies.seeds.frame import FRAME_VERSION, ReplyFrame, decode_scalars, encode_scalars, frame_record
from strategies.seeds.history import History, RoundUpdate
from strategies.seeds.keys import *  # noqa: F403 - the keys are the format's vocabulary
from strategies.seeds.pool import draw_indices, draw_seed, index_dtype, ordered, pack, seed_pool, unpack
from strategies.seeds.replies import SeedReply, check_seed_reply, robust_coefficients, weighted_coefficients

__all__ = [
    "FRAME_VERSION", "History", "ReplyFrame", "RoundUpdate", "SeedReply", "check_seed_reply", "decode_scalars",
    "draw_indices", "draw_seed", "encode_scalars", "frame_record", "index_dtype", "ordered", "pack", "seed_pool",
    "unpack", "robust_coefficients", "weighted_coefficients",
]
