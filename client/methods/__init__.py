"""Local training methods; importing this package registers every built-in method."""

from client.methods import lora  # noqa: F401  (registers "lora")
from client.methods.base import METHODS, LocalMethod, Update, build_method

__all__ = ["METHODS", "LocalMethod", "Update", "build_method"]
