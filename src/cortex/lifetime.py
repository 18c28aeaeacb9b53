"""Child processes that end with their parent: the local neuron with the gateway,
engine processes with their neuron. Linux's PR_SET_PDEATHSIG has the kernel signal the
child when its parent dies, however it dies (SIGKILL included); elsewhere, nothing."""

from __future__ import annotations

import contextlib
import ctypes
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
