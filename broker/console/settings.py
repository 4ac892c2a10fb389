"""The console's settings: the ``console`` section of a node settings file.

The console is OFF unless the node settings have a ``console`` section: a node started for a
machine-to-machine integration should not open a second listener nobody asked for, and several
nodes on one host (the dev federation) would fight over one default port. ``"console": {}``
turns it on with the defaults below (loopback, port 8471). Serving beyond loopback needs
``tls_cert``/``tls_key`` (then the session cookie is ``Secure``) unless ``allow_plain_http``
says a TLS-terminating proxy stands in front.

What it must never do: read files other than the ones it names, or the environment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.errors import ConfigError

DEFAULT_CONSOLE_PORT: Final = 8471
HANDLING_LEVELS: Final = ("H0", "H1", "H2", "H3")
_KEYS: Final = frozenset(
    {
        "host",
        "port",
        "public_url",
        "tls_cert",
        "tls_key",
        "allow_plain_http",
        "idle_minutes",
        "absolute_hours",
        "lockout_attempts",
        "lockout_minutes",
        "four_eyes",
        "smtp",
        "time_zone",
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class FourEyes:
    """Which drafts wait for a supervisor's release before they are sealed."""

    handling_at_least: str = "H3"
    tlp: tuple[str, ...] = ("RED",)
    types: tuple[str, ...] = ("alert.person",)

    def needs_release(self, *, handling: str, tlp: str, message_type: str) -> bool:
        """True when any one of the three conditions holds (handling, TLP, type)."""
        level = HANDLING_LEVELS.index(self.handling_at_least)
        high = handling in HANDLING_LEVELS and HANDLING_LEVELS.index(handling) >= level
        return high or tlp in self.tlp or message_type in self.types


@dataclass(frozen=True, kw_only=True, slots=True)
class SmtpSettings:
    """Where e-mail notices go out (they carry type, handling code and a link, no content)."""

    host: str
    port: int = 25
    sender: str = "casebridge@localhost"
    starttls: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsoleSettings:
    """The console's listener, session limits, lockout, four-eyes rule and mail."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_CONSOLE_PORT
    public_url: str | None = None  # how people reach it (links in e-mail); default from host
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plain_http: bool = False
    idle_minutes: int = 30
    absolute_hours: int = 10
    lockout_attempts: int = 5
    lockout_minutes: int = 15
    four_eyes: FourEyes = field(default_factory=FourEyes)
    smtp: SmtpSettings | None = None
    time_zone: str = "UTC"  # for people whose account names none

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _int(raw: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"settings: console.{name} must be an integer {low}-{high}")
    return value


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"settings: {what} must be a list of strings")
    return tuple(value)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_console(raw: object, base: Path) -> ConsoleSettings | None:
    """The ``console`` section (None when absent: no console). Paths resolve against ``base``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("settings: console must be an object")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"settings: unknown members {unknown} in console")
    host = raw.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ConfigError("settings: console.host must be a host name or address")
    tls_cert = (base / raw["tls_cert"]).resolve() if raw.get("tls_cert") else None
    tls_key = (base / raw["tls_key"]).resolve() if raw.get("tls_key") else None
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("settings: console.tls_cert and console.tls_key go together")
    plain = raw.get("allow_plain_http", False)
    if not isinstance(plain, bool):
        raise ConfigError("settings: console.allow_plain_http must be true or false")
    if tls_cert is None and not plain and not _loopback(host):
        # Passwords and session cookies must not cross a network in clear text.
        raise ConfigError(
            "settings: a console beyond loopback needs tls_cert/tls_key "
            "(or allow_plain_http behind a TLS proxy)"
        )
    four = raw.get("four_eyes", {})
    if not isinstance(four, dict) or set(four) - {"handling_at_least", "tlp", "types"}:
        raise ConfigError("settings: console.four_eyes takes handling_at_least, tlp, types")
    level = four.get("handling_at_least", "H3")
    if level not in HANDLING_LEVELS:
        raise ConfigError("settings: console.four_eyes.handling_at_least must be H0-H3")
    smtp_raw = raw.get("smtp")
    smtp = None
    if smtp_raw is not None:
        if not isinstance(smtp_raw, dict) or set(smtp_raw) - {"host", "port", "from", "starttls"}:
            raise ConfigError("settings: console.smtp takes host, port, from, starttls")
        if not isinstance(smtp_raw.get("host"), str):
            raise ConfigError("settings: console.smtp.host must be a host name")
        smtp = SmtpSettings(
            host=smtp_raw["host"],
            port=_int(smtp_raw, "port", 25, 1, 65535),
            sender=str(smtp_raw.get("from", "casebridge@localhost")),
            starttls=bool(smtp_raw.get("starttls", False)),
        )
    public_url = raw.get("public_url")
    if public_url is not None and not (
        isinstance(public_url, str) and public_url.startswith(("http://", "https://"))
    ):
        raise ConfigError("settings: console.public_url must be an http(s) URL")
    zone = raw.get("time_zone", "UTC")
    if not isinstance(zone, str):
        raise ConfigError("settings: console.time_zone must be an IANA zone name")
    return ConsoleSettings(
        host=host,
        port=_int(raw, "port", DEFAULT_CONSOLE_PORT, 0, 65535),
        public_url=public_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_plain_http=plain,
        idle_minutes=_int(raw, "idle_minutes", 30, 1, 24 * 60),
        absolute_hours=_int(raw, "absolute_hours", 10, 1, 7 * 24),
        lockout_attempts=_int(raw, "lockout_attempts", 5, 1, 100),
        lockout_minutes=_int(raw, "lockout_minutes", 15, 1, 24 * 60),
        four_eyes=FourEyes(
            handling_at_least=level,
            tlp=_strings(four.get("tlp", ["RED"]), "console.four_eyes.tlp"),
            types=_strings(four.get("types", ["alert.person"]), "console.four_eyes.types"),
        ),
        smtp=smtp,
        time_zone=zone,
    )
