"""How many CPU threads torch trains on: ``[train] threads`` (0 = :func:`auto_threads`).

torch's default is every physical core. On a machine shared with other busy processes that
is ruinous: its intra-op threads wait on each other at every operation, and one of them
descheduled stalls the rest. On 2 cores beside one busy process, 2 threads trained the
MovieLens-100k configuration at 285 examples/s against 8,864 on 1 thread; alone, 2 threads
gave 7,500-11,800 against 8,900 on 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

__all__ = ["MAX_AUTO_THREADS", "auto_threads", "available_cpus", "torch_threads"]

_log = logging.getLogger(__name__)

# the towers are small (a few hundred wide): past this many intra-op threads they gain little
MAX_AUTO_THREADS = 8


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and ``taskset``
    narrow), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def auto_threads(processes: int = 1, cpus: int | None = None) -> int:
    """Threads for each of ``processes`` training processes on this machine: half the CPUs
    it may use (about its physical cores, where each has two hardware threads; on a shared
    machine, room for the neighbours and the data loading), shared by the processes, at
    least 1 and at most :data:`MAX_AUTO_THREADS`."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, min(MAX_AUTO_THREADS, cpus // 2 // max(1, processes)))


@contextlib.contextmanager
def torch_threads(setting: int, processes: int = 1) -> Iterator[int]:
    """Run the block on ``setting`` intra-op threads (0: :func:`auto_threads`); yields the
    count. torch's inter-op pool is set to the same where it still can be (once a process,
    before any parallel work); the intra-op count is restored afterwards."""
    n = setting or auto_threads(processes)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work began
        torch.set_num_interop_threads(n)
    _log.debug("torch on %d thread(s) (was %d)", n, before)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
