"""Which blocks each part of a split model holds (light: no torch, so configs are
checked before anything heavy is imported). See :mod:`client.split_model`."""

from __future__ import annotations

from dataclasses import dataclass

from strategies.runconfig import ConfigError

FRONT, MIDDLE, BACK = "front", "middle", "back"
CLIENT_PARTS = {False: (FRONT,), True: (FRONT, BACK)}  # u_shaped -> the client's parts
SERVER_PARTS = {False: (MIDDLE, BACK), True: (MIDDLE,)}


@dataclass(frozen=True)
class SplitPlan:
    """Which blocks each part holds (see the module docstring)."""

    depth: int
    cut: int
    tail: int = 0  # U-shaped: blocks kept by the client at the end, with the head

    def __post_init__(self) -> None:
        if not 1 <= self.cut <= self.depth - 1:
            raise ConfigError(f"method.cut: expected an integer in [1, {self.depth - 1}] (the model has "
                              f"{self.depth} blocks), got {self.cut}")
        if self.tail and self.cut + self.tail > self.depth - 1:
            raise ConfigError(
                f"method.cut + method.tail must leave the server at least one of the model's {self.depth} blocks "
                f"(cut={self.cut}, tail={self.tail})")

    @property
    def u_shaped(self) -> bool:
        return self.tail > 0

    def blocks(self, part: str) -> range:
        return {FRONT: range(0, self.cut), MIDDLE: range(self.cut, self.depth - self.tail),
                BACK: range(self.depth - self.tail, self.depth)}[part]

    def held(self, parts: tuple[str, ...]) -> list[int]:
        return sorted(i for p in parts for i in self.blocks(p))
