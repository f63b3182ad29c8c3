"""Client-side configuration: backbone, quantization, data, partitioning, local method.

Frozen dataclasses validated in ``__post_init__``. Built by the simulator from Hydra
config, or by the ClientApp from Flower's flat ``run_config`` (see
``strategies.runconfig``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from strategies.adversary import AttackConfig
from strategies.codecs import CodecConfig
from strategies.dp import DPConfig
from strategies.population import DeviceConfig
from strategies.plugins import import_string
from strategies.runconfig import check, check_choice

QUANT_MODES = ("none", "int8", "nf4", "fp4")
TASKS = ("auto", "classification", "causal_lm")
DATA_SOURCES = ("generated", "file", "hf")  # loaders: client/data.py
BACKBONE_NAMES = ("tiny-llama", "tiny-bert", "tiny-topics", "minilm", "smollm2-135m", "hf")  # loaders: client/backbones.py


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone and how to run it.

    name: registry key (tiny-llama, tiny-bert, tiny-topics, minilm, smollm2-135m, hf).
    path: Hugging Face id or local folder, used when name == "hf".
    task: "classification" (sequence-classification head), "causal_lm" (instruction
        prompt, loss on the answer tokens, classification scored by the answer) or
        "auto" (encoders -> classification, decoders -> causal_lm).
    max_length: tokens per example after truncation.
    layers: blocks of the random ``tiny-bert`` / ``tiny-llama`` models (0: their 2).
    """

    name: str = "minilm"
    path: str | None = None
    task: str = "auto"
    max_length: int = 64
    layers: int = 0

    def __post_init__(self) -> None:
        check_choice("model", self.name, BACKBONE_NAMES)
        check_choice("model.task", self.task, TASKS)
        check(self.max_length >= 8, "model.max_length", "an integer >= 8", self.max_length)
        check(self.layers >= 0, "model.layers", "an integer >= 0", self.layers)
        check(self.layers == 0 or self.name in ("tiny-bert", "tiny-llama"), "model.layers",
              "0 unless model=tiny-bert or tiny-llama (pretrained models keep their depth)", self.layers)
        if self.name == "hf":
            check(bool(self.path), "model.path", "a Hugging Face id or local folder when model=hf", self.path)


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
        check_choice("data.source", self.source, DATA_SOURCES)
        if self.source == "file":
            check(bool(self.path), "data.path", "a CSV/JSONL/Parquet file path when data.source=file", self.path)
        if self.source == "hf":
            check(bool(self.hf_name), "data.hf_name", "a dataset name when data.source=hf", self.hf_name)
        check(len(self.text_columns) >= 1, "data.text_columns", "at least one column", self.text_columns)
        check(self.test_size >= 1, "data.test_size", "an integer >= 1", self.test_size)
        check(self.num_classes >= 2, "data.num_classes", "an integer >= 2", self.num_classes)


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is divided among ``num_clients``; ``name`` picks the
    scheme, whose own config class (``client/partitioners.py``) holds its settings."""

    name: str = "dirichlet"
    hint: ClassVar[str] = "change the partition settings"

    def build(self, num_clients: int, seed: int, num_examples: int) -> Any:
        """The flwr-datasets partitioner (no dataset attached)."""
        raise NotImplementedError


@dataclass(frozen=True)
class MethodConfig:
    """The local training method; ``name`` picks it (``client.methods.METHODS``), and
    its own config class (in its file under ``client/methods/``) holds its settings."""

    name: str = "lora"

    def steps(self, local_steps: int, num_examples: int, batch_size: int) -> int:
        """Local steps of one round on ``num_examples`` examples (default: ``local_steps``)."""
        return local_steps

    def prune(self) -> Any:
        """What a client leaves out of the backbone (``client.backbones.Prune``; None:
        it loads the whole model)."""
        return None

    def check_backbone(self, facts: Any, model: Any) -> None:
        """Raise ConfigError when these settings do not fit the backbone
        (``client.model_facts.ModelFacts``) and its ``ModelConfig``; called before
        anything loads. Default: nothing to check."""

    def evaluation_method(self) -> "MethodConfig":
        """The method whose model central evaluation loads the global state into (default:
        this one; split training: LoRA on the whole model)."""
        return self


def _default(path: str) -> Any:
    return lambda: import_string(path)()


@dataclass(frozen=True)
class ClientConfig:
    """Everything a ClientApp needs, as read from run_config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(
        default_factory=_default("client.partitioners:DirichletConfig"), metadata={"registry": "client.partitioners:PARTITIONERS"}
    )
    method: MethodConfig = field(
        default_factory=_default("client.methods.lora:LoraConfig"), metadata={"registry": "client.methods:METHODS"}
    )
    codec: CodecConfig = field(default_factory=CodecConfig, metadata={"registry": "strategies.codecs:CODECS"})
    attack: AttackConfig = field(default_factory=AttackConfig, metadata={"registry": "strategies.adversary:ATTACKS"})
    dp: DPConfig = field(default_factory=DPConfig, metadata={"registry": "strategies.dp:DP"})
    device: DeviceConfig = field(default_factory=DeviceConfig)  # simulated devices: count FLOPs for the server's clock
    num_clients: int = 10
    local_steps: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.num_clients >= 1, "num_clients", "an integer >= 1", self.num_clients)
        check(self.local_steps >= 1, "local_steps", "an integer >= 1", self.local_steps)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.lr > 0, "lr", "a number > 0", self.lr)
