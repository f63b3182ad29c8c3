"""Client-side configuration: backbone, quantization, data, partitioning, local method.

Frozen dataclasses validated in ``__post_init__``. Built by the simulator from Hydra
config, or by the ClientApp from Flower's flat ``run_config`` (see
``strategies.runconfig``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strategies.runconfig import check, check_choice

QUANT_MODES = ("none", "int8", "nf4", "fp4")
TASKS = ("auto", "classification", "causal_lm")


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone and how to run it.

    name: registry key (tiny-llama, tiny-bert, minilm, smollm2-135m, hf).
    path: Hugging Face id or local folder, used when name == "hf".
    task: "classification" (sequence-classification head), "causal_lm" (instruction
        prompt, loss on the answer tokens, classification scored by the answer) or
        "auto" (encoders -> classification, decoders -> causal_lm).
    max_length: tokens per example after truncation.
    """

    name: str = "tiny-bert"
    path: str | None = None
    task: str = "auto"
    max_length: int = 64

    def __post_init__(self) -> None:
        check_choice("model.task", self.task, TASKS)
        check(self.max_length >= 8, "model.max_length", "an integer >= 8", self.max_length)
        if self.name == "hf":
            check(bool(self.path), "model.path", "a Hugging Face id or local folder when model.name=hf", self.path)


@dataclass(frozen=True)
class QuantConfig:
    """bitsandbytes quantization of the frozen backbone (trainable parts stay fp32)."""

    mode: str = "none"
    double_quant: bool = False

    def __post_init__(self) -> None:
        check_choice("quant.mode", self.mode, QUANT_MODES)


@dataclass(frozen=True)
class DataConfig:
    """Where examples come from.

    source: "generated" (built-in, offline), "file" (CSV/JSONL/Parquet at ``path``) or
        "hf" (a Hugging Face dataset ``hf_name``/``hf_split``).
    text_columns: columns joined with ". " into the example text.
    label_column: integer or string labels; mapped to 0..C-1 in sorted order.
    label_names: human names for labels 0..C-1 (used in prompts); default str(label).
    test_size: held-out examples for central evaluation (int) after a seeded shuffle.
    num_examples / num_classes: size of the generated dataset.
    max_examples: cap on examples read (0 = all), applied after shuffling.
    """

    source: str = "generated"
    path: str | None = None
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    label_names: tuple[str, ...] = ()
    hf_name: str | None = None
    hf_split: str = "train"
    test_size: int = 400
    num_examples: int = 2400
    num_classes: int = 4
    max_examples: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("data.source", self.source, ("generated", "file", "hf"))
        if self.source == "file":
            check(bool(self.path), "data.path", "a CSV/JSONL/Parquet file path when data.source=file", self.path)
        if self.source == "hf":
            check(bool(self.hf_name), "data.hf_name", "a dataset name when data.source=hf", self.hf_name)
        check(len(self.text_columns) >= 1, "data.text_columns", "at least one column", self.text_columns)
        check(self.test_size >= 1, "data.test_size", "an integer >= 1", self.test_size)
        check(self.num_classes >= 2, "data.num_classes", "an integer >= 2", self.num_classes)


PARTITIONERS = ("iid", "dirichlet", "dirichlet_clients", "pathological", "shard", "size")


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is divided among ``num_clients`` (flwr-datasets).

    iid; dirichlet (alpha: each client's label mix ~ Dir(alpha), equal sizes);
    dirichlet_clients (alpha, min_partition_size, self_balancing: each class spread
    over clients ~ Dir(alpha), sizes vary); pathological
    (classes_per_client); shard (shards_per_client, shard_size); size
    (size_distribution: linear | square | exponential).
    """

    name: str = "iid"
    alpha: float = 0.5
    min_partition_size: int = 1
    self_balancing: bool = False
    classes_per_client: int = 2
    shards_per_client: int = 2
    shard_size: int | None = None
    size_distribution: str = "linear"

    def __post_init__(self) -> None:
        check_choice("partition.name", self.name, PARTITIONERS)
        check(self.alpha > 0, "partition.alpha", "a number > 0", self.alpha)
        check(self.classes_per_client >= 1, "partition.classes_per_client", "an integer >= 1", self.classes_per_client)
        check(self.shards_per_client >= 1, "partition.shards_per_client", "an integer >= 1", self.shards_per_client)
        check(self.min_partition_size >= 0, "partition.min_partition_size", "an integer >= 0", self.min_partition_size)
        check_choice("partition.size_distribution", self.size_distribution, ("linear", "square", "exponential"))


@dataclass(frozen=True)
class MethodConfig:
    """Local training method and its optimizer.

    name: registry key of ``client.methods`` (lora, ...).
    r, lora_alpha, dropout, target_modules: LoRA hyper-parameters; empty target_modules
        picks the architecture's defaults.
    optimizer: adamw | sgd; momentum and weight_decay apply as in torch.optim.
    grad_clip: max global grad-norm (0 disables).
    local_epochs: if > 0, train this many passes over the local data instead of
        ``local_steps`` steps.
    gradient_checkpointing: recompute activations in backward (less memory, ~30% more
        compute); for memory-bound devices.

    Backprop-free methods (zo_seed, forward_grad); a seed strategy's round config
    (learning rate, dist, perturbations, seed pool) overrides the defaults here:
    zo_eps: perturbation scale of the central difference (L(w+eps z) - L(w-eps z)) / 2eps.
    zo_params: "peft" (LoRA + head, any backbone incl. nf4/int8), "head" (the task head
        only: a zeroth-order linear probe) or "all" (every parameter of an unquantized
        backbone, as in MeZO/FedKSeed).
    lora_layers: LoRA on the top ``lora_layers`` transformer layers only (0 = all).
        Seed methods then reuse the frozen lower layers' output across the perturbed
        evaluations of a batch (``client/methods/prefix_cache.py``).
    perturbations: perturbations per step (zo_seed) or per batch (forward_grad).
    dist: gaussian | rademacher. kernel_backend: auto | torch | numba.
    fg_mode: forward_grad's directional derivative: "jvp" (exact, torch.func.jvp) or
        "fd" (central finite difference, as FwdLLM's code does). jvp needs quant=none.
    jvp_chunk: tangents evaluated together by one vmapped jvp: 1 keeps memory at
        inference level (+ one tangent); larger is ~2x faster on CPU but holds that many
        tangent activations at once.
    """

    name: str = "lora"
    r: int = 8
    lora_alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()
    optimizer: str = "adamw"
    momentum: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    local_epochs: int = 0
    gradient_checkpointing: bool = False
    lora_layers: int = 0
    zo_eps: float = 1e-3
    zo_params: str = "peft"
    perturbations: int = 1
    dist: str = "gaussian"
    kernel_backend: str = "auto"
    fg_mode: str = "fd"
    jvp_chunk: int = 1

    def __post_init__(self) -> None:
        from kernels import BACKENDS, DISTS

        check(self.zo_eps > 0, "method.zo_eps", "a number > 0", self.zo_eps)
        check_choice("method.zo_params", self.zo_params, ("peft", "head", "all"))
        check(self.lora_layers >= 0, "method.lora_layers", "an integer >= 0 (0 = every layer)", self.lora_layers)
        check(self.perturbations >= 1, "method.perturbations", "an integer >= 1", self.perturbations)
        check_choice("method.dist", self.dist, DISTS)
        check_choice("method.kernel_backend", self.kernel_backend, ("auto", *BACKENDS))
        check_choice("method.fg_mode", self.fg_mode, ("jvp", "fd"))
        check(self.jvp_chunk >= 1, "method.jvp_chunk", "an integer >= 1", self.jvp_chunk)
        check(self.r >= 1, "method.r", "an integer >= 1", self.r)
        check(0.0 <= self.dropout < 1.0, "method.dropout", "a number in [0, 1)", self.dropout)
        check_choice("method.optimizer", self.optimizer, ("adamw", "sgd"))
        check(self.grad_clip >= 0, "method.grad_clip", "a number >= 0", self.grad_clip)
        check(self.local_epochs >= 0, "method.local_epochs", "an integer >= 0", self.local_epochs)


@dataclass(frozen=True)
class ClientConfig:
    """Everything a ClientApp needs, as read from run_config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    codec: str = "fp32"
    num_clients: int = 10
    local_steps: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.num_clients >= 1, "num_clients", "an integer >= 1", self.num_clients)
        check(self.local_steps >= 1, "local_steps", "an integer >= 1", self.local_steps)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.lr > 0, "lr", "a number > 0", self.lr)
