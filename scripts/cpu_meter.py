"""Where a benchmark phase's CPU went: this machine's processes and containers, in CPU seconds.

Best effort, for the benchmarks only: it reads cgroup v1 ``cpuacct`` (the Docker engine's
``cgroupfs`` driver keeps every container under ``/sys/fs/cgroup/cpuacct/docker``, whose total
still counts containers that have exited) and ``/proc/<pid>/stat``. Where those are not there,
``CpuMeter.available`` is false and the benchmark prints no breakdown.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping
from pathlib import Path

_CPUACCT = Path("/sys/fs/cgroup/cpuacct")
_TICKS = os.sysconf("SC_CLK_TCK")
_ENGINE = ("dockerd", "containerd")


def _cgroup_seconds(path: Path) -> float:
    try:
        return int((path / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return 0.0


def _process_seconds(pid: int) -> float:
    """User + system CPU of a process (also one that exited, until it is reaped) and of its
    children it waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(value) for value in fields[11:15]) / _TICKS


def _waited_seconds(pid: int) -> float:
    """How long the process's main thread was ready to run but waited for a CPU (the
    kernel's schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _engine_seconds() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name in _ENGINE:
                total += _process_seconds(int(entry.name))
    return total


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds between ``start`` and ``stop``: the whole machine, all containers, some
    named containers, some named processes, the engine's daemons, and this process."""

    def __init__(
        self,
        containers: Mapping[str, str] | None = None,
        processes: Mapping[str, int] | None = None,
    ) -> None:
        self.available = (_CPUACCT / "docker" / "cpuacct.usage").exists()
        self._containers = dict(containers or {})
        self._processes = dict(processes or {})
        self._began: dict[str, float] = {}
        self._began_at = 0.0
        self.spent: dict[str, float] = {}
        self.wall = 0.0  # seconds between start and stop

    def _read(self) -> dict[str, float]:
        now = {
            "machine": _cgroup_seconds(_CPUACCT),
            "containers": _cgroup_seconds(_CPUACCT / "docker"),
            "engine": _engine_seconds(),
            "benchmark": _own_seconds(),
        }
        for name, container_id in self._containers.items():
            now[name] = _cgroup_seconds(_CPUACCT / "docker" / container_id)
        for name, pid in self._processes.items():
            now[name] = _process_seconds(pid)
            now[f"{name} waited"] = _waited_seconds(pid)
        return now

    def start(self) -> None:
        self._began = self._read()
        self._began_at = time.monotonic()

    def stop(self) -> None:
        now = self._read()
        self.spent = {name: now[name] - self._began.get(name, 0.0) for name in now}
        self.wall = time.monotonic() - self._began_at

    def parts(self) -> dict[str, float]:
        """CPU seconds by part. Session containers are all containers but the named ones;
        named processes count by the name before their ``:`` (``gateway:0`` and ``gateway:1``
        as ``gateway``); ``other`` is the rest of the machine."""
        spent = self.spent
        named = {name: spent[name] for name in self._containers}
        outside: dict[str, float] = {}
        for name in [*self._processes, "engine", "benchmark"]:
            group = name.split(":", 1)[0]
            outside[group] = outside.get(group, 0.0) + spent[name]
        return {
            "session containers": spent["containers"] - sum(named.values()),
            **named,
            **outside,
            "other": spent["machine"] - spent["containers"] - sum(outside.values()),
        }

    def summary(self, sessions: int) -> str:
        """One line: CPU seconds per session, by part."""
        shown = ", ".join(f"{name} {value / sessions:.2f}" for name, value in self.parts().items())
        return f"CPU s per session: {shown} (machine {self.spent['machine'] / sessions:.2f})"

    def cores(self) -> str:
        """One line: the CPU cores each part kept busy between ``start`` and ``stop``."""
        wall = self.wall
        shown = ", ".join(f"{name} {value / wall:.2f}" for name, value in self.parts().items())
        return f"cores busy: {shown} (machine {self.spent['machine'] / wall:.2f})"

    def waited(self, process: str) -> float:
        """The share of the time between ``start`` and ``stop`` that a named process's main
        thread (a gateway's event loop) spent ready to run but waiting for a CPU: on a
        machine short of CPU, a wait the process's own latency figures include."""
        return self.spent[f"{process} waited"] / self.wall
