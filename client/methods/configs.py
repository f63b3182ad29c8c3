"""The built-in methods' config classes: light to import (no torch), so a whole run's
config is validated before any heavy import. Each method's file imports its class from
here; :mod:`client.methods.registry` pairs it with the method by import path.
"""

from __future__ import annotations

from dataclasses import dataclass

from client.config import MethodConfig
from strategies.runconfig import ConfigError, check, check_choice


RANK_ASSIGNMENTS = ("cycle", "random", "by_device")


@dataclass(frozen=True)
class LoraFields(MethodConfig):
    """Where LoRA goes (shared by every method that trains or perturbs LoRA).

    r, lora_alpha, dropout: rank, scale numerator (scale = lora_alpha / r) and dropout.
    target_modules: adapted Linear layers; empty picks the architecture's defaults.
    lora_layers: LoRA on the top ``lora_layers`` transformer layers only (0 = all).
    rank_choices: heterogeneous ranks (HetLoRA, FLoRA, FlexLoRA): each client trains one
        of these ranks, ``r`` being the global model's (at least the largest); empty:
        every client trains rank ``r``. Every client scales by ``lora_alpha / r``, so the
        first ``k`` rank components mean the same on every device.
    rank_assignment: which client trains which rank: "cycle" (client i gets
        ``rank_choices[i % n]``), "random" (drawn once per client from the run's seed) or
        "by_device" (the simulated device population's classes ordered by compute, slowest
        on the smallest rank, fastest on the largest: :func:`client.ranks.device_ranks`).
    """

    r: int = 8
    lora_alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()
    lora_layers: int = 0
    rank_choices: tuple[int, ...] = ()
    rank_assignment: str = "cycle"

    def __post_init__(self) -> None:
        check(self.r >= 1, "method.r", "an integer >= 1", self.r)
        check(0.0 <= self.dropout < 1.0, "method.dropout", "a number in [0, 1)", self.dropout)
        check(self.lora_layers >= 0, "method.lora_layers", "an integer >= 0 (0 = every layer)", self.lora_layers)
        check(all(isinstance(k, int) and k >= 1 for k in self.rank_choices), "method.rank_choices",
              "integers >= 1", list(self.rank_choices))
        check(not self.rank_choices or max(self.rank_choices) <= self.r, "method.r",
              f"at least the largest of method.rank_choices ({max(self.rank_choices, default=0)}): it is the global "
              "model's rank", self.r)
        check_choice("method.rank_assignment", self.rank_assignment, RANK_ASSIGNMENTS)

    def check_backbone(self, facts, model) -> None:
        check(self.r <= facts.hidden, "method.r", f"at most {facts.hidden} ({facts.name}'s width)", self.r)


@dataclass(frozen=True)
class BackpropFields(MethodConfig):
    """The optimizer of every backprop method (LoRA, prompts, adapters, IA3, BitFit, split).

    optimizer: adamw | sgd; momentum and weight_decay apply as in torch.optim.
    grad_clip: max global grad-norm (0 disables).
    local_epochs: if > 0, train this many passes over the local data instead of
        ``local_steps`` steps.
    gradient_checkpointing: recompute activations in backward (less memory, ~30% more
        compute); for memory-bound devices.
    """

    optimizer: str = "adamw"
    momentum: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    local_epochs: int = 0
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_choice("method.optimizer", self.optimizer, ("adamw", "sgd"))
        check(self.grad_clip >= 0, "method.grad_clip", "a number >= 0", self.grad_clip)
        check(self.local_epochs >= 0, "method.local_epochs", "an integer >= 0", self.local_epochs)

    def steps(self, local_steps: int, num_examples: int, batch_size: int) -> int:
        if self.local_epochs > 0:
            return self.local_epochs * -(-num_examples // batch_size)
        return local_steps


@dataclass(frozen=True)
class LoraConfig(BackpropFields, LoraFields):
    """Backprop LoRA (see :class:`LoraFields`) and its optimizer (:class:`BackpropFields`)."""

    name: str = "lora"

    def __post_init__(self) -> None:
        LoraFields.__post_init__(self)
        BackpropFields.__post_init__(self)


@dataclass(frozen=True)
class SeededConfig(LoraFields):
    """What backprop-free methods perturb, and how far. The round's shared settings
    (learning rate, perturbations, dist, seed pool, kernels backend) belong to the seed
    strategy, which sends them every round.

    zo_eps: perturbation scale of the central difference (L(w+eps z) - L(w-eps z)) / 2eps.
    zo_params: "peft" (LoRA + head, any backbone incl. nf4/int8), "head" (the task head
        only: a zeroth-order linear probe) or "all" (every parameter of an unquantized
        backbone, as in MeZO/FedKSeed). With ``lora_layers`` the frozen lower layers' output
        is reused across the perturbed evaluations of a batch (``prefix_cache.py``).
    """

    zo_eps: float = 1e-3
    zo_params: str = "peft"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.zo_eps > 0, "method.zo_eps", "a number > 0", self.zo_eps)
        check(not self.rank_choices, "method.rank_choices", "empty: heterogeneous ranks are for method=lora",
              list(self.rank_choices))
        check_choice("method.zo_params", self.zo_params, ("peft", "head", "all"))


@dataclass(frozen=True)
class ZoSeedConfig(SeededConfig):
    """MeZO steps (see :class:`~client.methods.seeded.SeededConfig`)."""

    name: str = "zo_seed"


@dataclass(frozen=True)
class ForwardGradConfig(SeededConfig):
    """Forward gradients (see :class:`~client.methods.seeded.SeededConfig`).

    zo_eps: the central difference's scale in ``fd`` mode (FwdLLM's h).
    fg_mode: "jvp" (exact, torch.func.jvp; quant=none) or "fd" (central difference).
    jvp_chunk: tangents evaluated together by one vmapped jvp: 1 keeps memory at
        inference level (+ one tangent); larger is ~2x faster on CPU but holds that many
        tangent activations at once.
    """

    name: str = "forward_grad"
    zo_eps: float = 1e-2
    fg_mode: str = "fd"
    jvp_chunk: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("method.fg_mode", self.fg_mode, ("jvp", "fd"))
        check(self.jvp_chunk >= 1, "method.jvp_chunk", "an integer >= 1", self.jvp_chunk)


@dataclass(frozen=True)
class SplitConfig(LoraConfig):
    """Split training (SplitFed; SplitLoRA): LoRA on the client's first blocks, the rest
    of the model on the server (``client/split_model.py``).

    cut: blocks the client runs after the embeddings, in ``[1, depth - 1]``.
    u_shaped: the client also keeps the last ``tail`` blocks and the head, so labels
        never leave it (two exchanges per step instead of one).
    activation_codec: fp32 | fp16 | bf16 | int8 (per-row scale), for activations up and
        their gradients down (``strategies/activation_codec.py``).
    The optimizer settings apply to both sides (each part clips its own gradients).
    """

    name: str = "split"
    cut: int = 2
    u_shaped: bool = False
    tail: int = 1
    activation_codec: str = "fp32"

    def __post_init__(self) -> None:
        super().__post_init__()
        from strategies.activation_codec import ACTIVATION_CODECS

        check(self.cut >= 1, "method.cut", "an integer >= 1 (blocks on the client)", self.cut)
        check(self.tail >= 1, "method.tail", "an integer >= 1 (blocks the U-shaped client keeps at the end)", self.tail)
        check_choice("method.activation_codec", self.activation_codec, ACTIVATION_CODECS)
        check(not self.rank_choices, "method.rank_choices", "empty: heterogeneous ranks are for method=lora",
              list(self.rank_choices))
        check(not self.gradient_checkpointing, "method.gradient_checkpointing",
              "false for method=split (each part already recomputes its forward)", self.gradient_checkpointing)

    @property
    def tail_blocks(self) -> int:
        return self.tail if self.u_shaped else 0

    def check_backbone(self, facts, model) -> None:
        super().check_backbone(facts, model)
        from client.split_plan import SplitPlan

        SplitPlan(facts.depth, self.cut, self.tail_blocks)

    def prune(self):
        from client.split_model import CLIENT_PARTS, pruner

        return pruner(self.cut, self.tail_blocks, CLIENT_PARTS[self.u_shaped])

    def evaluation_method(self) -> LoraConfig:
        fields = {f: getattr(self, f) for f in LoraConfig.__dataclass_fields__ if f != "name"}
        return LoraConfig(**fields)


PROMPT_INITS = ("text", "vocab", "random")


@dataclass(frozen=True)
class VirtualTokenFields(BackpropFields):
    """Learned virtual tokens (prompt and prefix tuning).

    num_virtual_tokens: how many; they count against the model's context with the input.
    init: "text" (the embeddings, or for prefixes the keys and values, of ``init_text``'s
        tokens, repeated to length), "vocab" (prompts only: embeddings of random vocabulary
        tokens) or "random" (normal noise).
    init_text: the text of ``init: text``.
    """

    num_virtual_tokens: int = 20
    init: str = "text"
    init_text: str = "Classify the topic of this news text:"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_virtual_tokens >= 1, "method.num_virtual_tokens", "an integer >= 1", self.num_virtual_tokens)
        check(self.init != "text" or bool(self.init_text.strip()), "method.init_text",
              "a non-empty text (method.init=text)", self.init_text)

    def check_backbone(self, facts, model) -> None:
        check_context(self.num_virtual_tokens, model.max_length, facts.context, facts.name)


def check_context(virtual: int, max_length: int, context: int, model_name: str) -> None:
    """Virtual tokens + the input must fit the model's positions."""
    check(virtual + max_length <= context, "method.num_virtual_tokens",
          f"at most {context - max_length} ({model_name} has {context} positions and model.max_length={max_length} "
          f"of them go to the input)", virtual)


@dataclass(frozen=True)
class PromptConfig(VirtualTokenFields):
    """Prompt tuning (Lester et al., 2021) through PEFT: ``num_virtual_tokens`` learned
    input embeddings prepended to every input (+ the trainable head)."""

    name: str = "prompt"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("method.init", self.init, PROMPT_INITS)


@dataclass(frozen=True)
class PrefixConfig(VirtualTokenFields):
    """Prefix tuning (Li & Liang, 2021): learned keys and values prepended in every
    attention layer (``client/methods/prefix.py``; + the trainable head)."""

    name: str = "prefix"
    num_virtual_tokens: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("method.init", self.init, ("text", "random"))


ADAPTER_PLACEMENTS = ("houlsby", "pfeiffer")


@dataclass(frozen=True)
class AdapterConfig(BackpropFields):
    """Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021; FedAdapter, Cai
    et al., 2022), ``client/methods/adapter.py``.

    adapter_dim: bottleneck width.
    adapter_layers: adapters in the top N blocks only (0 = every block).
    placement: "houlsby" (after the attention and the feed-forward sublayer) or
        "pfeiffer" (after the feed-forward sublayer only).
    """

    name: str = "adapter"
    adapter_dim: int = 16
    adapter_layers: int = 0
    placement: str = "houlsby"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.adapter_dim >= 1, "method.adapter_dim", "an integer >= 1", self.adapter_dim)
        check(self.adapter_layers >= 0, "method.adapter_layers", "an integer >= 0 (0 = every block)",
              self.adapter_layers)
        check_choice("method.placement", self.placement, ADAPTER_PLACEMENTS)

    def check_backbone(self, facts, model) -> None:
        check(self.adapter_layers <= facts.depth, "method.adapter_layers",
              f"at most {facts.depth} ({facts.name} has {facts.depth} blocks)", self.adapter_layers)


@dataclass(frozen=True)
class IA3Config(BackpropFields):
    """IA3 (Liu et al., 2022) through PEFT: learned vectors rescaling the keys, values and
    feed-forward activations (+ the trainable head).

    target_modules / feedforward_modules: empty picks PEFT's defaults for the architecture.
    """

    name: str = "ia3"
    target_modules: tuple[str, ...] = ()
    feedforward_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check(set(self.feedforward_modules) <= set(self.target_modules) or not self.target_modules,
              "method.feedforward_modules", "a subset of method.target_modules", self.feedforward_modules)


@dataclass(frozen=True)
class BitFitConfig(BackpropFields):
    """BitFit (Ben Zaken et al., 2022): only the backbone's bias terms and the head train."""

    name: str = "bitfit"

    def check_backbone(self, facts, model) -> None:
        if not facts.biases:
            raise ConfigError(no_biases(facts.name))


@dataclass(frozen=True)
class HeadConfig(BackpropFields):
    """Linear probing: the backbone frozen, only the classification head trains (the
    baseline of PEFT comparisons, and the smallest update DP noise has to cover)."""

    name: str = "head"

    def check_backbone(self, facts, model) -> None:
        if facts.task(getattr(model, "task", "auto")) == "causal_lm":
            raise ConfigError(no_head(facts.name))


def no_head(model_name: str) -> str:
    return (f"method=head trains a classification head, and {model_name} runs as a causal LM here (its output "
            "layer is tied to the input embeddings): set model.task=classification, or use method=lora, ia3 or adapter")


def no_biases(model_name: str) -> str:
    return (f"method=bitfit trains a backbone's bias terms, and {model_name} has none (its Linear layers and "
            "norms are bias-free): use method=lora, ia3 or adapter")
