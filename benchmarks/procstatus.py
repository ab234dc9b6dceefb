"""/proc/self/status fields for the benchmarks' peak-memory figures (Linux).

A step's own peak is VmHWM (the process's peak resident set) after the step minus VmRSS before
it; each benchmark runs the step in a fresh interpreter so that the peak belongs to it.
"""


def status_kib(field: str) -> int:
    """A /proc/self/status field in KiB (VmHWM, VmRSS, ...)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")
