"""Round-config and record keys of the seed wire format (client and server agree)."""

# Round-config keys a seed strategy sends (server authority: client and server agree).
POOL_SEED = "zo-pool-seed"
POOL_SIZE = "zo-pool-size"
POOL_ROUND = "zo-pool-round"
LR = "zo-lr"
DIST = "zo-dist"
PERTURBATIONS = "zo-perturbations"  # per local step / per batch
MAX_PAIRS = "zo-max-pairs"
BASE_ROUND = "zo-base-round"  # the global round the client must train from (t - 1)
SYNC_FROM = "zo-sync-from"  # history below starts after this round
ASK = "zo-ask"  # FwdLLM: 0 for the first request in a round, 1, 2, ... for "more"
DRAW = "zo-draw"  # per message: the seed of the client's pool draws (draw_indices)
BITS = "zo-bits"  # scalar width on the uplink: 32 (fp32) or 16/8/4/2 (stochastic rounding)
DIAG = "zo-diag"  # true: the reply adds its diagnostic metrics (peak RSS, times)
BACKEND = "zo-backend"  # kernels backend, sent only when the strategy sets one (default: auto)
# Records. Histories and assignments are ConfigRecords of raw little-endian bytes whose
# dtypes the format fixes (pool indices: index_dtype(K); coefficients: float32;
# rounds/counts: int32). A reply is one ConfigRecord holding one frame (ReplyFrame).
HISTORY = "zo-history"  # downlink, see History.to_record
ASSIGNED = "zo-assigned"  # downlink {"index": bytes}: the pool indices to use, in order
FRAME = "zo"  # reply {"f": bytes}: ReplyFrame header + packed scalars
SCALAR_BITS = (32, 16, 8, 4, 2)
