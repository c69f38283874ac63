"""Process set-up around the milter: logging, the resolver thread, start and stop."""

from __future__ import annotations

import logging
import logging.handlers
import signal
import sys
import threading
from collections.abc import Callable

from spamgate import __version__
from spamgate.adapter import ListenError, serve
from spamgate.config import LogSettings, Policy
from spamgate.engine import Engine
from spamgate.resolver import Resolver
from spamgate.session import Runtime

log = logging.getLogger("spamgate")

_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def configure_logging(settings: LogSettings) -> None:
    handler: logging.Handler
    if settings.target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
    elif settings.target == "syslog":
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        # syslog adds its own time stamp and host.
        handler.setFormatter(logging.Formatter("spamgate: %(levelname)s %(message)s"))
    else:
        handler = logging.FileHandler(settings.target)
        handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger("spamgate")
    root.handlers[:] = [handler]
    root.setLevel(settings.level.value.upper())
    root.propagate = False


# libmilter stops on these: its own thread sigwait()s for them, which only works if no other
# thread can take them. Threads inherit the mask, so block them before starting any thread,
# or the kernel hands SIGTERM to (say) the resolver thread and the process dies on the spot.
LIBMILTER_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


def log_stats(runtime: Runtime, resolver: Resolver) -> None:
    for line in runtime.counters.lines():
        log.info("stats %s", line)
    stats = resolver.stats
    log.info(
        "stats resolver lookups=%d cache_hits=%d merged=%d queries_sent=%d cache_entries=%d",
        stats.lookups,
        stats.cache_hits,
        stats.merged,
        stats.queries_sent,
        len(resolver.cache),
    )


def _report_every(interval: int, stopped: threading.Event, report: Callable[[], None]) -> None:
    while not stopped.wait(interval):
        report()


def run(policy: Policy, config_path: str) -> int:
    try:
        configure_logging(policy.log)
    except OSError as error:
        print(f"spamgate: cannot log to {policy.log.target}: {error}", file=sys.stderr)
        return 1
    signal.pthread_sigmask(signal.SIG_BLOCK, LIBMILTER_SIGNALS)
    resolver = Resolver(policy.resolver)
    resolver.start()
    servers = ", ".join(str(server) for server in resolver.nameservers)
    log.info(
        "spamgate %s starting: policy %s (%s), mode=%s, %d DNS lists via %s, %d rules",
        __version__,
        config_path,
        policy.digest,
        policy.mode.value,
        len(policy.ip_lists),
        servers,
        len(policy.rules),
    )
    runtime = Runtime(Engine(policy), resolver, log=logging.getLogger("spamgate.decision").info)
    stopped = threading.Event()
    if policy.log.stats_interval:
        threading.Thread(
            target=_report_every,
            args=(policy.log.stats_interval, stopped, lambda: log_stats(runtime, resolver)),
            name="spamgate-stats",
            daemon=True,
        ).start()
    try:
        serve(runtime, policy.listen, policy.socket_mode)
    except ListenError as error:
        log.error("%s", error)
        return 1
    except Exception:
        log.exception("milter stopped with an error")
        return 1
    finally:
        stopped.set()
        resolver.stop()
        log_stats(runtime, resolver)
    log.info("spamgate stopped")
    return 0
