"""Talking to systemd: readiness, status, reload and the watchdog (sd_notify(3)).

The protocol is small enough not to need libsystemd or a Python binding: one datagram of
newline-separated `KEY=VALUE` assignments to the AF_UNIX socket named by $NOTIFY_SOCKET.
Outside systemd (a terminal, the tests, `make run`) the variable is unset and every call
here is a no-op, so the daemon calls it unconditionally.

With `NotifyAccess=main` systemd accepts messages only from the service's main PID. The
kernel stamps each datagram with the sender's process id (SCM_CREDENTIALS, which systemd asks
for), and every thread of a process shares that id, so the watchdog thread may send too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("spamgate")

# A datagram to a congested manager must not stall the caller: sd_notify(3) blocks, we bound
# it. systemd reads its notify socket promptly; a second is far beyond any normal delay.
SEND_TIMEOUT = 1.0


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=...", ...) to systemd; True if the datagram went out.

    False, doing nothing, when $NOTIFY_SOCKET is unset (not started by systemd, or a service
    type that does not listen). Never raises: a failure to notify must not take the milter
    down; it is logged at debug level and reported as False.
    """
    address = _socket_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None or not fields:
        return False
    # One assignment per line (sd_notify(3)): a newline inside a value, e.g. in a STATUS built
    # from an error message, would smuggle in another assignment, so fold it away.
    message = "\n".join(" ".join(field.splitlines()) for field in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(message)
    except OSError as error:
        log.debug("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), error)
        return False
    return True


def _socket_address(value: str) -> str | None:
    """$NOTIFY_SOCKET as a socket address: an absolute path, or "@name" (abstract namespace).

    sd_notify(3) accepts exactly these two AF_UNIX forms (systemd 254 added "vsock:", which a
    milter on the same host never sees); anything else is ignored rather than guessed at.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Linux abstract socket: the leading NUL replaces the "@"; Python passes it through.
        return "\0" + value[1:]
    if value:
        log.debug("ignoring NOTIFY_SOCKET=%r: not a path or an abstract socket name", value)
    return None


def ready(status: str) -> bool:
    """Start-up is complete (Type=notify): the milter socket accepts connections."""
    return notify("READY=1", f"STATUS={status}")


def reloading() -> bool:
    """A reload started; send `ready()` when it is done (or has failed and the old policy runs).

    MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) tell this reload from an earlier
    one (sd_notify(3)); older managers ignore the unknown field.
    """
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")


def stopping() -> bool:
    """Shutdown has begun: systemd shows "deactivating" instead of suspecting a crash."""
    return notify("STOPPING=1", "STATUS=stopping")


def watchdog_interval() -> float | None:
    """Seconds between keep-alives, or None when systemd does not watch this process.

    sd_watchdog_enabled(3): $WATCHDOG_USEC is the service's WatchdogSec= in microseconds, and
    if $WATCHDOG_PID is set the watchdog is meant for that process only (a child inheriting
    the environment must not ping on the parent's behalf). It recommends pinging at half the
    interval, which leaves room for one late wake-up.
    """
    usec_text = os.environ.get("WATCHDOG_USEC", "")
    pid_text = os.environ.get("WATCHDOG_PID", "")
    try:
        usec = int(usec_text)
        if pid_text and int(pid_text) != os.getpid():
            return None
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


class Watchdog:
    """Sends WATCHDOG=1 every `interval` seconds for as long as `healthy()` says so.

    The point of a watchdog is to notice a daemon that is alive but no longer working, so a
    keep-alive is sent only after the check passes: if the check fails (or raises, or the
    thread itself dies) the pings stop and systemd kills and restarts the service after
    WatchdogSec= (Restart=on-failure). A check that recovers in time resumes the pings.
    `healthy` runs on the watchdog thread and should answer well within `interval`.
    """

    def __init__(
        self,
        interval: float,
        healthy: Callable[[], bool],
        send: Callable[[str], bool] = notify,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive, got {interval}")
        self.interval = interval
        self._healthy = healthy
        self._send = send
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spamgate-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pinging; waits at most `timeout` seconds for a health check in progress."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        was_healthy = True
        # Ping first, then wait: systemd's timer starts when the service becomes active, and
        # an immediate ping confirms the wiring without eating into the first interval.
        while not self._stopped.is_set():
            is_healthy = self._check()
            if is_healthy:
                self._send("WATCHDOG=1")
                if not was_healthy:
                    log.warning("watchdog: health check passes again; keep-alives resumed")
            elif was_healthy:
                log.error(
                    "watchdog: health check failed; keep-alives stopped, "
                    "systemd restarts the service unless it recovers"
                )
            was_healthy = is_healthy
            self._stopped.wait(self.interval)

    def _check(self) -> bool:
        try:
            return bool(self._healthy())
        except Exception:
            log.exception("watchdog: health check raised")
            return False


def start_watchdog(healthy: Callable[[], bool]) -> Watchdog | None:
    """Start a Watchdog if systemd asked for one (WatchdogSec=), else None."""
    interval = watchdog_interval()
    if interval is None:
        return None
    watchdog = Watchdog(interval, healthy)
    watchdog.start()
    log.info("watchdog: keep-alive every %.1f s", interval)
    return watchdog
