"""The main thread's wait for a signal (shell/daemon.py), which must never mistake one.

Python 3.11's `signal.sigtimedwait` returns a signal that never came when its wait is
interrupted (EINTR) after its deadline: it then reads a siginfo the kernel never wrote. A
profiler that stops the threads with ptrace, as py-spy does hundreds of times a second,
interrupts the wait all the time, and the daemon read signal numbers such as 535302704 and
stopped (issue 13: `make bench`'s profile stopped the daemon it measured). libc's
sigtimedwait says which signal it took by its return value, and that is what is read here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
from collections.abc import Iterable

_SIGSET_BYTES = 128  # glibc's sigset_t: 1024 bits
_SIGINFO_BYTES = 128  # siginfo_t


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


# CDLL, not PyDLL: the wait lets go of the interpreter lock.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.sigtimedwait.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_Timespec)]
_libc.sigtimedwait.restype = ctypes.c_int


def wait_for_signal(signals: Iterable[signal.Signals], timeout: float) -> signal.Signals | None:
    """The first of `signals` (blocked in the calling thread) to be pending within `timeout`
    seconds, taken; None when none came, or when the wait was interrupted (the caller waits
    again: an interrupted wait took no signal)."""
    sigset = ctypes.create_string_buffer(_SIGSET_BYTES)
    _libc.sigemptyset(sigset)
    for number in signals:
        _libc.sigaddset(sigset, int(number))
    info = ctypes.create_string_buffer(_SIGINFO_BYTES)
    seconds = max(0.0, timeout)
    wait = _Timespec(int(seconds), int((seconds - int(seconds)) * 1_000_000_000))
    taken = _libc.sigtimedwait(sigset, info, ctypes.byref(wait))
    if taken > 0:
        return signal.Signals(taken)
    error = ctypes.get_errno()
    if error in (errno.EAGAIN, errno.EINTR):
        return None
    raise OSError(error, os.strerror(error))
