"""The daemon's settings: the one reading of an endpoint (`listen`, `metrics.listen`,
`resolver.nameservers`)."""

from __future__ import annotations

import pytest

from spamgate.core.settings import ListenAddress, MetricsSettings, Nameserver, parse_endpoint

NAMESERVER = {"notation": "IP, IP:PORT or [IPv6]:PORT", "subject": "nameserver", "default_port": 53}
METRICS = {"notation": "HOST:PORT", "subject": "metrics host"}
MILTER = {"notation": "inet:PORT@HOST", "subject": "listen host", "milter": True}


@pytest.mark.parametrize(
    ("text", "how", "expected"),
    [
        pytest.param("127.0.0.1", NAMESERVER, ("127.0.0.1", 53), id="ipv4-default-port"),
        pytest.param("127.0.0.1:5353", NAMESERVER, ("127.0.0.1", 5353), id="ipv4-port"),
        pytest.param("::1", NAMESERVER, ("::1", 53), id="ipv6-default-port"),
        pytest.param("2001:db8::53", NAMESERVER, ("2001:db8::53", 53), id="ipv6-no-brackets"),
        pytest.param("[::1]", NAMESERVER, ("::1", 53), id="ipv6-brackets-default-port"),
        pytest.param("[::1]:5353", NAMESERVER, ("::1", 5353), id="ipv6-brackets-port"),
        pytest.param("127.0.0.1:9464", METRICS, ("127.0.0.1", 9464), id="metrics-ipv4"),
        pytest.param("[::1]:9464", METRICS, ("::1", 9464), id="metrics-ipv6"),
        # As before: with a port required, the last colon starts the port.
        pytest.param("::1:9464", METRICS, ("::1", 9464), id="metrics-ipv6-no-brackets"),
        pytest.param("8894@127.0.0.1", MILTER, ("127.0.0.1", 8894), id="milter-ipv4"),
        pytest.param("8894@[::1]", MILTER, ("::1", 8894), id="milter-ipv6-brackets"),
        pytest.param("8894@::", MILTER, ("::", 8894), id="milter-ipv6"),
    ],
)
def test_endpoint(text: str, how: dict[str, object], expected: tuple[str, int]) -> None:
    assert parse_endpoint(text, **how) == expected  # type: ignore[arg-type]  # the kwargs above


@pytest.mark.parametrize(
    ("text", "how", "message"),
    [
        pytest.param(
            "127.0.0.1:0",
            NAMESERVER,
            "expected IP, IP:PORT or [IPv6]:PORT with a port 1-65535, got '127.0.0.1:0'",
            id="port-0",
        ),
        pytest.param(
            "[::1]x",
            NAMESERVER,
            "expected IP, IP:PORT or [IPv6]:PORT with a port 1-65535, got '[::1]x'",
            id="junk-after-brackets",
        ),
        pytest.param(
            "[::1",
            NAMESERVER,
            "expected IP, IP:PORT or [IPv6]:PORT with a port 1-65535, got '[::1'",
            id="unclosed-bracket",
        ),
        pytest.param(
            "dns.google",
            NAMESERVER,
            "nameserver must be an IP address, got 'dns.google'",
            id="name",
        ),
        pytest.param(
            "127.0.0.1",
            METRICS,
            "expected HOST:PORT with a port 1-65535, got '127.0.0.1'",
            id="metrics-without-port",
        ),
        pytest.param(
            "[::1]", METRICS, "expected HOST:PORT with a port 1-65535, got '[::1]'", id="no-port"
        ),
        pytest.param(
            "localhost:9464",
            METRICS,
            "metrics host must be an IP address, got 'localhost'",
            id="metrics-name",
        ),
        pytest.param(
            "8894", MILTER, "expected inet:PORT@HOST with a port 1-65535, got '8894'", id="no-at"
        ),
        pytest.param(
            "65536@127.0.0.1",
            MILTER,
            "expected inet:PORT@HOST with a port 1-65535, got '65536@127.0.0.1'",
            id="port-too-big",
        ),
    ],
)
def test_bad_endpoint(text: str, how: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_endpoint(text, **how)  # type: ignore[arg-type]  # the kwargs above
    assert str(raised.value) == message


def test_the_three_settings_read_endpoints_alike() -> None:
    assert ListenAddress.from_config("inet6:8894@[::1]") == ListenAddress("inet6", "::1", 8894)
    assert Nameserver.from_config("[::1]:5353") == Nameserver("::1", 5353)
    assert MetricsSettings(listen="[::1]:9464").address() == ("::1", 9464)
    with pytest.raises(ValueError, match=r"^listen host must be an IP address, got ''$"):
        ListenAddress.from_config("inet:8894@")
