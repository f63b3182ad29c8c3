"""Hold a process to a memory budget with a cgroup (Linux), as a device's own memory would.

cgroup v2 (``/sys/fs/cgroup/<group>/memory.max``, with the memory controller enabled for
the parent) or v1 (``/sys/fs/cgroup/memory/<group>/memory.limit_in_bytes``), whichever is
mounted and writable (root, or a delegated subtree); swap is not allowed past the cap where
the kernel offers the knob. Where neither is writable the cap is not enforced and
:func:`cap` says why: the client's pre-flight estimate (:mod:`client.budget`) still refuses
calls the budget cannot hold. ``RLIMIT_AS`` is not an option for torch: a worker that holds
365 MiB resident has reserved 2 GB of address space.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _v2_dir() -> Path | None:
    if not (ROOT / "cgroup.controllers").exists():
        return None
    own = Path("/proc/self/cgroup").read_text().strip().splitlines()[-1].split(":", 2)[-1]
    return ROOT / own.lstrip("/")


def _group_dir(name: str) -> tuple[Path, str, str | None]:
    """(directory, limit file, swap limit file) of group ``name``."""
    v2 = _v2_dir()
    if v2 is not None:
        parent = v2.parent if (v2 / "cgroup.procs").exists() and v2 != ROOT else v2
        return parent / name, "memory.max", "memory.swap.max"
    return ROOT / "memory" / name, "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"


def cap(pid: int, mb: float, name: str) -> str:
    """Put ``pid`` in cgroup ``name`` limited to ``mb`` MiB; return what was done (or why not)."""
    try:
        group, limit, swap = _group_dir(name)
        group.mkdir(exist_ok=True)
        (group / limit).write_text(str(int(mb * 2**20)))
        if swap and (group / swap).exists():
            try:
                (group / swap).write_text("0" if limit == "memory.max" else str(int(mb * 2**20)))
            except OSError:
                pass
        (group / "cgroup.procs").write_text(str(pid))
        return f"held to {mb:.0f} MiB by cgroup {group}"
    except OSError as err:
        return (f"not held to {mb:.0f} MiB ({err.strerror or err}: no writable cgroup memory controller here); "
                "the pre-flight estimate still refuses calls over the budget")


def release(name: str) -> None:
    """Remove the (empty) group ``name``; nothing if it is absent or still has processes."""
    try:
        _group_dir(name)[0].rmdir()
    except OSError:
        pass


def peak_mb(name: str) -> float | None:
    """The group's peak memory use so far (MiB), where the kernel reports it."""
    group = _group_dir(name)[0]
    for f in ("memory.peak", "memory.max_usage_in_bytes"):
        try:
            return int((group / f).read_text()) / 2**20
        except (OSError, ValueError):
            continue
    return None
