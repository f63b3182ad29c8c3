"""Message keys shared by the ServerApp and the ClientApp (the wire contract).

Flower's Message-API strategies use ``"arrays"``, ``"config"`` and weight replies by
``"num-examples"``; Anther keeps those names so its replies aggregate with any Flower
strategy, and adds a ``"wire"`` ConfigRecord naming the update kind and codec.
"""

ARRAYS = "arrays"  # ArrayRecord: global state down, update up
CONFIG = "config"  # ConfigRecord: round config down (server-round, proximal-mu, ...)
METRICS = "metrics"  # MetricRecord: reply metrics
WIRE = "wire"  # ConfigRecord: {KIND_KEY: "delta"|"seeds"|"activations", CODEC_KEY: codec name}
KIND_KEY = "kind"
CODEC_KEY = "codec"
ROUND_KEY = "round"  # in a reply's wire record: the server round it answers

NUM_EXAMPLES = "num-examples"  # weighting key (examples, never batches)
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
ASSIGN_LOCAL_STEPS = "assign-local-steps"  # resource-aware assignment: this client's local steps (down)
ASSIGN_BATCH_SIZE = "assign-batch-size"  # ... and its batch size
LORA_RANK = "lora-rank"  # heterogeneous ranks: the rank a client trains (down) / replies at (up)
PRUNE_LAMBDA = "lora-prune-lambda"  # HetLoRA self-pruning: the tail components' regularisation weight
PRUNE_GAMMA = "lora-prune-gamma"  # HetLoRA self-pruning: the fraction of components a client may prune

# Reply metrics every Anther client sends.
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-s"  # pure local training time
CALL_SECONDS = "call-s"  # whole handler time (load state, train, encode)
PEAK_RSS_MB = "peak-rss-mb"  # client process peak RSS during this call
FLOPS = "flops"  # floating-point operations of this call (only when the run simulates devices)
QUANTIZED = "quantized"  # 1 when those ran on a quantized (nf4/int8) backbone
PARTITION_ID = "partition-id"
CLIENT_ID = "client-id"  # a pooled simulation: the client (identity) a message is for, on any SuperNode of the pool
DEVICE = "device"  # ConfigRecord of a "hello" reply from a node started with a device profile: its DEVICE_* facts
DEVICE_NAME, DEVICE_GFLOPS, DEVICE_MEMORY_MB = "name", "gflops", "memory-mb"

def error_reason(msg) -> str:
    """The first line of a Flower error reply, as a rejection reason."""
    return f"client error: {msg.error.reason.strip().splitlines()[0] if msg.error.reason else msg.error.code}"


# Update kinds (each is one exchange in strategies/kinds/).
KIND_DELTA = "delta"
KIND_SEEDS = "seeds"
KIND_ACTIVATIONS = "activations"
KIND_SECAGG = "secagg"  # delta updates summed under secure aggregation
