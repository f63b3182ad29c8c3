"""What method configs need to know about a backbone, without loading it (light: no
torch). The offline backbones' facts are listed here, so a config is checked before
anything heavy is imported; a hub model is checked by each method when it loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFacts:
    """depth: transformer blocks; hidden: model width; context: max positions;
    biases: whether its Linear layers carry bias terms; decoder: causal attention."""

    name: str
    depth: int
    hidden: int
    context: int
    biases: bool
    decoder: bool

    def task(self, task: str) -> str:
        """``model.task`` resolved: "auto" is classification for encoders, causal LM for decoders."""
        return task if task != "auto" else ("causal_lm" if self.decoder else "classification")


_TINY_CONTEXT = 512  # the tiny models' position table is max(512, model.max_length)

KNOWN = {
    "minilm": ModelFacts("minilm", depth=6, hidden=384, context=512, biases=True, decoder=False),
    "smollm2-135m": ModelFacts("smollm2-135m", depth=30, hidden=576, context=8192, biases=False, decoder=True),
    "tiny-topics": ModelFacts("tiny-topics", depth=1, hidden=64, context=_TINY_CONTEXT, biases=True, decoder=False),
}


def known_facts(model: Any) -> ModelFacts | None:
    """Facts of an offline backbone from its ``ModelConfig`` (None for hub models)."""
    if model.name in ("tiny-bert", "tiny-llama"):
        decoder = model.name == "tiny-llama"
        return ModelFacts(model.name, depth=model.layers or 2, hidden=64, context=max(_TINY_CONTEXT, model.max_length),
                          biases=not decoder, decoder=decoder)
    return KNOWN.get(model.name)
