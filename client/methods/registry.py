"""The method registry, light to import: names -> config class, import path, update kind.

Built-in methods are listed here by import path, so validating a config never imports
torch; a method is imported when a client builds it. A method of your own registers
itself with :func:`register` in its own file (then its module is imported to validate).
"""

from __future__ import annotations

from typing import Any, Callable

from client.config import MethodConfig
from client.methods.configs import (AdapterConfig, BitFitConfig, ForwardGradConfig, HeadConfig, IA3Config, LoraConfig,
                                    PrefixConfig, PromptConfig, SplitConfig, ZoSeedConfig)
from strategies.plugins import Registry

METHODS = Registry("method", MethodConfig)
METHODS.add("lora", LoraConfig, "client.methods.lora:LoraMethod", kind="delta")
METHODS.add("zo_seed", ZoSeedConfig, "client.methods.zo_seed:ZoSeedMethod", kind="seeds")
METHODS.add("forward_grad", ForwardGradConfig, "client.methods.forward_grad:ForwardGradMethod", kind="seeds")
METHODS.add("split", SplitConfig, "client.methods.split:SplitMethod", kind="activations")
METHODS.add("prompt", PromptConfig, "client.methods.peft_tuners:PromptMethod", kind="delta")
METHODS.add("prefix", PrefixConfig, "client.methods.prefix:PrefixMethod", kind="delta")
METHODS.add("adapter", AdapterConfig, "client.methods.adapter:AdapterMethod", kind="delta")
METHODS.add("ia3", IA3Config, "client.methods.peft_tuners:IA3Method", kind="delta")
METHODS.add("bitfit", BitFitConfig, "client.methods.bitfit:BitFitMethod", kind="delta")
METHODS.add("head", HeadConfig, "client.methods.head:HeadMethod", kind="delta")


def register(name: str, config: type[MethodConfig]) -> Callable[[Any], Any]:
    """Class decorator adding a method, its config class and its update kind to :data:`METHODS`."""

    def deco(factory: Any) -> Any:
        METHODS.add(name, config, factory, kind=factory.kind)
        return factory

    return deco


def build_method(name: str, backbone: Any, cfg: Any) -> Any:
    """Instantiate registered method ``name`` on ``backbone`` with the client config."""
    return METHODS[name].resolve()(backbone, cfg)
