"""SMTP client side of the e2e tests: XCLIENT-impersonating sends and test messages."""

from __future__ import annotations

import ipaddress
import re
import smtplib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid

from .processes import LOOPBACK

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def positive(self) -> bool:
        """2xx or 3xx: the server accepted this step."""
        return 200 <= self.code < 400


@dataclass(frozen=True)
class SendResult:
    """Every server reply of one ``send()``; a step that was not reached is None.

    ``disconnected`` is True when the server closed the connection before our QUIT.
    """

    greeting: Reply
    xclient: Reply | None
    ehlo: Reply | None
    mail: Reply | None
    rcpts: tuple[tuple[str, Reply], ...]
    data: Reply | None  # the reply to the DATA command itself (354 when accepted)
    end_of_data: Reply | None  # the reply to the final "." (the accept/reject decision)
    quit: Reply | None
    disconnected: bool
    elapsed: float  # seconds from connect to the end of the session

    @property
    def accepted_rcpts(self) -> list[str]:
        return [rcpt for rcpt, reply in self.rcpts if reply.positive]

    @property
    def queue_id(self) -> str | None:
        """Postfix's queue id from "250 2.0.0 Ok: queued as ABC123", if the message was queued."""
        if self.end_of_data is None:
            return None
        match = _QUEUED_AS.search(self.end_of_data.text)
        return match.group(1) if match else None


class _Session:
    """Records replies and stops at the first disconnect."""

    def __init__(self, client: smtplib.SMTP) -> None:
        self.client = client
        self.disconnected = False

    def step(self, command: str, args: str = "") -> Reply | None:
        return self._exchange(command, lambda: self.client.docmd(command, args))

    def data(self, message: bytes) -> Reply | None:
        def send_content() -> tuple[int, bytes]:
            self.client.send(_dot_stuff(message) + b".\r\n")
            return self.client.getreply()

        return self._exchange("end of data", send_content)

    def _exchange(self, what: str, exchange: Callable[[], tuple[int, bytes]]) -> Reply | None:
        if self.disconnected:
            return None
        try:
            code, text = exchange()
        except smtplib.SMTPServerDisconnected as exc:
            # smtplib reports a socket timeout as a disconnect; a hang must fail loudly.
            if isinstance(exc.__context__, TimeoutError):
                raise TimeoutError(f"no SMTP reply to {what} in time") from exc
            self.disconnected = True
            return None
        return Reply(code, text.decode("utf-8", "replace"))


def send(
    port: int,
    *,
    client_addr: str,
    helo: str,
    mail_from: str,
    rcpts: Sequence[str],
    message_bytes: bytes | None,
    client_name: str | None = None,
    reverse_name: str | None = None,
    host: str = LOOPBACK,
    timeout: float = 10.0,
) -> SendResult:
    """One SMTP session to Postfix, impersonating ``client_addr`` via XCLIENT.

    The session is XCLIENT, EHLO ``helo`` (Postfix restarts the session after XCLIENT, so a
    new EHLO is required; it also sets the HELO name the milter sees), MAIL FROM, every RCPT
    TO, DATA only if some recipient was accepted and ``message_bytes`` is given, then QUIT.
    A rejected XCLIENT or MAIL FROM ends the session early. Every socket operation is bounded
    by ``timeout``; a timeout raises. ``client_name`` None means "no (verified) name";
    ``reverse_name`` is the unverified PTR name (XCLIENT REVERSE_NAME), sent only if given.
    """
    xclient_args = _xclient_args(client_addr, client_name, helo)  # a bad address fails here
    if reverse_name is not None:
        xclient_args += f" REVERSE_NAME={_xtext(reverse_name)}"
    started = time.monotonic()
    client = smtplib.SMTP(timeout=timeout)
    try:
        code, text = client.connect(host, port)
        greeting = Reply(code, text.decode("utf-8", "replace"))
        session = _Session(client)
        xclient = ehlo = mail = data = end_of_data = quit_reply = None
        rcpt_replies: list[tuple[str, Reply]] = []
        if session.step("EHLO", "harness.localhost") is not None:
            xclient = session.step("XCLIENT", xclient_args)
        if xclient is not None and xclient.positive:
            ehlo = session.step("EHLO", helo)
            mail = session.step("MAIL", f"FROM:<{mail_from}>")
        if mail is not None and mail.positive:
            for rcpt in rcpts:
                reply = session.step("RCPT", f"TO:<{rcpt}>")
                if reply is None:
                    break
                rcpt_replies.append((rcpt, reply))
            if message_bytes is not None and any(r.positive for _, r in rcpt_replies):
                data = session.step("DATA")
                if data is not None and data.code == 354:
                    end_of_data = session.data(message_bytes)
        quit_reply = session.step("QUIT")
        return SendResult(
            greeting=greeting,
            xclient=xclient,
            ehlo=ehlo,
            mail=mail,
            rcpts=tuple(rcpt_replies),
            data=data,
            end_of_data=end_of_data,
            quit=quit_reply,
            disconnected=session.disconnected,
            elapsed=time.monotonic() - started,
        )
    finally:
        client.close()


def build_message(
    *,
    mail_from: str,
    to: Sequence[str],
    subject: str = "spamgate harness test",
    body: str = "Hello from the spamgate test harness.\n",
    extra_headers: Sequence[tuple[str, str]] = (),
    date: datetime | None = None,
    message_id: str | None = None,
) -> bytes:
    """A simple RFC 5322 message with CRLF line endings (non-ASCII text gets MIME-encoded)."""
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = mail_from
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = message_id or make_msgid(domain="harness.spamgate.test")
    for name, value in extra_headers:
        message[name] = value
    message.set_content(body)
    return message.as_bytes()


def _xclient_args(client_addr: str, client_name: str | None, helo: str) -> str:
    address = ipaddress.ip_address(client_addr)
    addr = f"IPV6:{address.compressed}" if address.version == 6 else address.compressed
    # [UNAVAILABLE] is XCLIENT's way to say "this client has no reverse name".
    name = client_name or "[UNAVAILABLE]"
    return " ".join(f"{k}={_xtext(v)}" for k, v in (("ADDR", addr), ("NAME", name), ("HELO", helo)))


def _xtext(value: str) -> str:
    """RFC 3461 xtext (of the UTF-8 bytes), which XCLIENT attribute values use."""
    return "".join(
        chr(b) if 33 <= b <= 126 and chr(b) not in "+=" else f"+{b:02X}" for b in value.encode()
    )


def _dot_stuff(message: bytes) -> bytes:
    """Normalize line endings to CRLF, end with CRLF and double leading dots (RFC 5321)."""
    crlf = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if not crlf.endswith(b"\r\n"):
        crlf += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", crlf)
