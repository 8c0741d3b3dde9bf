"""What the benches share: percentiles, a process's CPU time and RSS from /proc, and the
in-memory services every bench server runs with."""

from __future__ import annotations

from pathlib import Path

SERVER_SERVICES = (
    "--session_service_uri=memory://",
    "--artifact_service_uri=memory://",
    "--memory_service_uri=memory://",
    "--log_level=warning",
)
"""`adk api_server` / `adk-cancel api_server` arguments: memory services, quiet logs."""


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used, all threads (``/proc/PID/task/*/schedstat``, in ns:
    ``/proc/PID/stat`` counts 10 ms ticks, too coarse for a difference of a few percent)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def rss_kb(pid: int) -> int:
    """A process's resident set size, KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")
