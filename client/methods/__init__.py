"""Local training methods; importing this package registers every built-in method."""

from client.methods import forward_grad, lora, zo_seed  # noqa: F401  (register "forward_grad", "lora", "zo_seed")
from client.methods.base import METHODS, LocalMethod, Update, build_method

__all__ = ["METHODS", "LocalMethod", "Update", "build_method"]
