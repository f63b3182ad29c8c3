"""Peak resident memory of this process, per call where Linux allows it.

Writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's high-water mark
(``VmHWM``), so the peak of one ClientApp call can be read even in a long-lived
simulation worker. Elsewhere the process-lifetime ``ru_maxrss`` is reported.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak() -> bool:
    """Reset the peak-RSS mark; returns False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS in MiB since the last :func:`reset_peak` (or process start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0
