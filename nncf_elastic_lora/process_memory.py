"""This process's resident memory from ``/proc/self`` (Linux), without torch: the benchmark worker
reads it in a process that loads only OpenVINO."""

from __future__ import annotations

import resource


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM) to its current RSS; False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_mib(field: str) -> float | None:
    """A memory line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak RSS: since the last :func:`reset_peak_rss`, else since it started."""
    peak = status_mib("VmHWM")
    if peak is not None:
        return int(peak * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
