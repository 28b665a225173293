"""The server's settings: one frozen object, filled from ``VCSTREAM_*`` environment variables and
``vcstream serve`` flags (flags win). Every field names its variable and help text in one place (its
``field`` metadata), so the environment, the flags and the docs cannot drift apart."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vcstream.engines.registry import ENGINE_NAMES
from vcstream.engines.settings import parse_pairs
from vcstream.errors import ConfigurationError
from vcstream.media.candidates import parse_port_range

ENGINE_CHOICES = ("auto", *ENGINE_NAMES)
#: engines that need no GPU, for the sessions a full primary engine turns away
OVERFLOW_ENGINES = ("world", "passthrough")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
AUTH_MODES = ("open", "required")
#: HS256 with a shorter secret can be brute-forced offline from any token
MIN_TOKEN_SECRET_BYTES = 32
_ORIGIN = re.compile(r"^https?://[^/\s]+$")
_ICE_URL = re.compile(r"^(stun|stuns|turn|turns):[^\s,]+$")


def text(value: str) -> str:
    return value


def optional_text(value: str) -> str | None:
    return value or None


def path(value: str) -> Path:
    return Path(value).expanduser()


def optional_int(value: str) -> int | None:
    return int(value) if value else None


def optional_float(value: str) -> float | None:
    return float(value) if value else None


def switch(value: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not on or off (1/0, true/false, yes/no, on/off)")


def port_range(value: str) -> tuple[int, int]:
    """``"40000-40099"`` -> ``(40000, 40099)``."""
    return parse_port_range(value)


def ip_address(value: str) -> str:
    """An IPv4 or IPv6 address, normalised (``"203.0.113.7"``); a host name is refused."""
    return str(ipaddress.ip_address(value.strip()))


def comma_list(value: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)


def byte_size(value: str) -> int:
    """``"10485760"``, ``"512k"``, ``"10M"``, ``"10MiB"``, ``"1G"``: binary multiples (k = 1024)."""
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size (e.g. 10485760, 512k, 10M)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])


def _meta(env: str, parse: Callable[[str], Any], help: str, *, flag: bool = True) -> dict[str, Any]:
    """A settings field's environment variable, its parser (also the flag's ``type``) and help
    text. ``flag=False`` keeps a field off the command line (secrets would show in ``ps``)."""
    return {"env": env, "parse": parse, "help": help, "flag": flag}


@dataclass(frozen=True)
class ServiceSettings:
    """Everything ``vcstream serve`` can be told, with its environment variable.

    Network:
      ``host`` (VCSTREAM_HOST, default 0.0.0.0) and ``port`` (VCSTREAM_PORT, 8080; 0 picks a free
      port). ``tls_cert``/``tls_key`` (VCSTREAM_TLS_CERT, VCSTREAM_TLS_KEY): serve HTTPS. Browsers
      only grant the microphone to secure pages, so a client on another machine of the LAN needs
      HTTPS (or a TLS-terminating proxy); http://localhost works without it.
    Engine:
      ``engine`` (VCSTREAM_ENGINE): ``auto`` (Seed-VC when its weights are in the cache AND a CUDA GPU
      is present, else the CPU engine ``world``), or ``seedvc``, ``world``, ``passthrough``.
      ``device`` (VCSTREAM_DEVICE, auto|cpu|cuda|cuda:N) and ``model_cache`` (VCSTREAM_MODEL_CACHE,
      the Hugging Face cache holding Seed-VC's weights; unset = the hub's default cache). The server
      never downloads weights and never runs Seed-VC with random weights.
      ``block_time`` (VCSTREAM_BLOCK_TIME, seconds of audio per inference block; unset = the engine's
      default: 0.18 s Seed-VC, 0.1 s world) and ``engine_settings`` (VCSTREAM_ENGINE_SETTINGS,
      ``NAME=VALUE,...``: defaults of the engine's other session settings, e.g.
      ``diffusion_steps=8,cfg_rate=0.5``); both are checked against the engine's declared settings
      when it is loaded, and the server refuses to start on a value the engine does not take.
      ``max_sessions`` (VCSTREAM_MAX_SESSIONS; unset = measured: the capacity file's figure when
      ``capacity_file`` (VCSTREAM_CAPACITY_FILE, written by ``vcstream bench capacity --write``) was
      measured for this engine and device, else a probe of the engine at start-up).
      ``call_choices`` (VCSTREAM_CALL_CHOICES, ``NAME=V|V,...``, e.g. ``block_time=0.18|0.3``): the
      values a caller may pick for a per-call setting, so calls share batch shapes; unset = Seed-VC's
      presets on a GPU (block 0.18/0.3 s, 4/10 steps) and any allowed value elsewhere; ``free`` =
      any allowed value everywhere.
      ``overflow_engine`` (VCSTREAM_OVERFLOW_ENGINE, world or passthrough; unset = none): once the
      engine is full, new sessions run on this CPU engine instead of being refused (the page and
      /api/info say so).
    Storage:
      ``data_dir`` (VCSTREAM_DATA_DIR, ./var). ``database_url`` (VCSTREAM_DATABASE_URL, an SQLAlchemy
      URL; unset = SQLite file ``<data_dir>/vcstream.db``; e.g. ``postgresql+psycopg://...`` for
      several replicas sharing one library: records and recordings are both in the database).
      ``voices_dir`` (VCSTREAM_VOICES_DIR, unset = ``<data_dir>/voices``): where versions before
      schema revision 0002 kept the recordings as files; read only by the upgrade that moves them
      into the database. ``voice_cache_size`` (VCSTREAM_VOICE_CACHE_SIZE, 64): voices whose engine
      features each replica keeps in memory (least recently used dropped first).
      ``max_upload_bytes`` (VCSTREAM_MAX_UPLOAD_BYTES, 10M; accepts k/M/G suffixes).
      ``max_uploads`` (VCSTREAM_MAX_UPLOADS, 4): voice uploads one process reads and decodes at once;
      one more waits up to 2 s for a place, then is answered 503 with Retry-After.
    WebRTC:
      ``webrtc_latency_ms`` (VCSTREAM_WEBRTC_LATENCY_MS, 20): webrtcbin's jitter buffer latency, the
      longest a gap holds the packets behind it (see ``PeerConfig.latency_ms``).
      ``stun_urls`` (VCSTREAM_STUN_URLS, comma-separated ``stun:host:port``; default none: on a LAN or
      loopback host candidates connect directly, and no request leaves the network). ``turn_urls``
      (VCSTREAM_TURN_URLS, comma-separated ``turn:``/``turns:`` URLs) with ``turn_secret``
      (VCSTREAM_TURN_SECRET, environment only: the shared secret for time-limited TURN credentials,
      as coturn's ``use-auth-secret``) and ``turn_ttl_s`` (VCSTREAM_TURN_TTL_S, 86400).
    Hardening (see ``vcstream.service.connection_guard``):
      ``max_connections`` (VCSTREAM_MAX_CONNECTIONS, 1000): open HTTP/WebSocket connections; beyond
      it a new connection is answered 503 before anything of it is read, and closed.
      ``header_timeout_s`` (VCSTREAM_HEADER_TIMEOUT_S, 10): time a connection gets to send a
      request's headers (from connecting, or from the previous response); a body must then arrive at
      64 KiB/s at least.
      ``trusted_proxies`` (VCSTREAM_TRUSTED_PROXIES, comma-separated addresses or networks, e.g.
      ``127.0.0.1,10.0.0.0/8``; default none): balancers whose X-Forwarded-For is believed, so that
      per-address limits see the client behind them.
      ``ice_port_range`` (VCSTREAM_ICE_PORT_RANGE, ``FIRST-LAST`` e.g. ``40000-40099``; unset = any
      port): the UDP ports of the server's host candidates, one per call, so a firewall, NAT or
      container publishes a known range. ``announced_address`` (VCSTREAM_ANNOUNCED_ADDRESS, an IP;
      unset = none): the public address that forwards to this server; its host candidates carry
      it instead of the address they were gathered on (behind NAT, in a container or a pod).
    Quality:
      ``live_quality`` (VCSTREAM_LIVE_QUALITY, on; ``0`` turns it off): estimate each call's speaker
      similarity to its voice on a low-priority thread (``vcstream.quality.live``): the ``stats``
      message's ``voice_similarity``/``own_voice_similarity`` and ``vcstream_call_voice_similarity``.
    Tenants (see ``vcstream.service.tenancy``):
      ``auth`` (VCSTREAM_AUTH, ``open`` or ``required``; default open): open is one local library that
      anyone who reaches the server uses (what ``scripts/run.sh`` starts); required is a paid service:
      the REST API takes an API key or an access token (``Authorization: Bearer``) and a call's
      ``hello`` an access token. ``token_secret`` (VCSTREAM_TOKEN_SECRET, environment only, at least
      32 bytes, the same on every replica): signs access tokens; required with ``auth=required``.
      ``plans_file`` (VCSTREAM_PLANS_FILE, JSON; unset = the built-in free and unlimited plans).
      ``allowed_origins`` (VCSTREAM_ALLOWED_ORIGINS, comma-separated ``https://host[:port]``; unset =
      the server's own origin only): pages that may open a signalling WebSocket (a browser sends its
      cookies and the page's origin, so another site could otherwise open calls as its visitor).
      ``replica_name`` (VCSTREAM_REPLICA_NAME, unset = the host name): names this replica in the
      call records (a pod's name).
    Process:
      ``shutdown_grace_s`` (VCSTREAM_SHUTDOWN_GRACE_S, 30): on SIGTERM the server reports not ready
      and refuses new sessions, then waits this long for running sessions to end before closing them.
      ``log_level`` (VCSTREAM_LOG_LEVEL, INFO).

    Empty environment variables count as unset.
    """

    host: str = field(default="0.0.0.0", metadata=_meta("VCSTREAM_HOST", text, "address to listen on"))
    port: int = field(default=8080, metadata=_meta("VCSTREAM_PORT", int, "TCP port (0 picks a free one)"))
    tls_cert: Path | None = field(
        default=None, metadata=_meta("VCSTREAM_TLS_CERT", path, "PEM certificate: serve HTTPS")
    )
    tls_key: Path | None = field(
        default=None, metadata=_meta("VCSTREAM_TLS_KEY", path, "PEM private key of --tls-cert")
    )
    engine: str = field(
        default="auto",
        metadata=_meta(
            "VCSTREAM_ENGINE",
            text,
            f"{', '.join(ENGINE_CHOICES)} (auto: seedvc with weights+GPU, else world)",
        ),
    )
    device: str = field(
        default="auto", metadata=_meta("VCSTREAM_DEVICE", text, "seedvc device: auto, cpu, cuda, cuda:N")
    )
    model_cache: Path | None = field(
        default=None,
        metadata=_meta("VCSTREAM_MODEL_CACHE", path, "Hugging Face cache folder holding Seed-VC's weights"),
    )
    block_time: float | None = field(
        default=None,
        metadata=_meta(
            "VCSTREAM_BLOCK_TIME", optional_float, "seconds per inference block (default: the engine's)"
        ),
    )
    engine_settings: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "VCSTREAM_ENGINE_SETTINGS",
            comma_list,
            "default session settings, NAME=VALUE,... (e.g. diffusion_steps=8; checked by the engine)",
        ),
    )
    max_sessions: int | None = field(
        default=None,
        metadata=_meta(
            "VCSTREAM_MAX_SESSIONS", optional_int, "concurrent sessions (default: measured at start-up)"
        ),
    )
    call_choices: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "VCSTREAM_CALL_CHOICES",
            comma_list,
            "per-call values callers may pick, NAME=V|V,... (default: the engine's presets on a GPU; free)",
        ),
    )
    capacity_file: Path | None = field(
        default=None,
        metadata=_meta(
            "VCSTREAM_CAPACITY_FILE", path, "sessions measured by vcstream bench capacity --write"
        ),
    )
    overflow_engine: str | None = field(
        default=None,
        metadata=_meta(
            "VCSTREAM_OVERFLOW_ENGINE", optional_text, "CPU engine for sessions once the engine is full"
        ),
    )
    data_dir: Path = field(
        default=Path("var"),
        metadata=_meta("VCSTREAM_DATA_DIR", path, "folder of the default SQLite database"),
    )
    database_url: str | None = field(
        default=None,
        metadata=_meta("VCSTREAM_DATABASE_URL", optional_text, "SQLAlchemy URL (default sqlite in data dir)"),
    )
    voices_dir: Path | None = field(
        default=None,
        metadata=_meta(
            "VCSTREAM_VOICES_DIR",
            path,
            "recordings of versions before schema 0002, moved into the database by `vcstream db upgrade` "
            "(default <data dir>/voices)",
        ),
    )
    voice_cache_size: int = field(
        default=64,
        metadata=_meta("VCSTREAM_VOICE_CACHE_SIZE", int, "voices whose engine features stay in memory (LRU)"),
    )
    max_upload_bytes: int = field(
        default=10 << 20,
        metadata=_meta("VCSTREAM_MAX_UPLOAD_BYTES", byte_size, "largest reference upload (e.g. 10M)"),
    )
    max_uploads: int = field(
        default=4,
        metadata=_meta("VCSTREAM_MAX_UPLOADS", int, "voice uploads handled at once (beyond: 503)"),
    )
    webrtc_latency_ms: int = field(
        default=20,  # PeerConfig.latency_ms says why
        metadata=_meta("VCSTREAM_WEBRTC_LATENCY_MS", int, "webrtcbin jitter latency"),
    )
    stun_urls: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "VCSTREAM_STUN_URLS", comma_list, "comma-separated stun: URLs (default none: LAN/loopback)"
        ),
    )
    turn_urls: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "VCSTREAM_TURN_URLS", comma_list, "comma-separated turn:/turns: URLs (need VCSTREAM_TURN_SECRET)"
        ),
    )
    turn_secret: str | None = field(
        default=None,
        repr=False,
        metadata=_meta("VCSTREAM_TURN_SECRET", optional_text, "TURN shared secret", flag=False),
    )
    turn_ttl_s: int = field(
        default=86400, metadata=_meta("VCSTREAM_TURN_TTL_S", int, "lifetime of TURN credentials, seconds")
    )
    max_connections: int = field(
        default=1000,
        metadata=_meta("VCSTREAM_MAX_CONNECTIONS", int, "open HTTP/WebSocket connections (beyond: 503)"),
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata=_meta("VCSTREAM_HEADER_TIMEOUT_S", float, "seconds to send request headers (bodies: rate)"),
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "VCSTREAM_TRUSTED_PROXIES",
            comma_list,
            "addresses/networks whose X-Forwarded-For is believed (e.g. 127.0.0.1,10.0.0.0/8)",
        ),
    )
    ice_port_range: tuple[int, int] | None = field(
        default=None,
        metadata=_meta("VCSTREAM_ICE_PORT_RANGE", port_range, "UDP ports for ICE, FIRST-LAST (default any)"),
    )
    announced_address: str | None = field(
        default=None,
        metadata=_meta(
            "VCSTREAM_ANNOUNCED_ADDRESS", ip_address, "public IP host candidates are rewritten to (NAT)"
        ),
    )
    live_quality: bool = field(
        default=True,
        metadata=_meta(
            "VCSTREAM_LIVE_QUALITY", switch, "estimate each call's speaker similarity to its voice (1/0)"
        ),
    )
    auth: str = field(
        default="open",
        metadata=_meta(
            "VCSTREAM_AUTH", text, "open (one local library, no keys) or required (API keys, tokens)"
        ),
    )
    token_secret: str | None = field(
        default=None,
        metadata=_meta(
            "VCSTREAM_TOKEN_SECRET", optional_text, "signs access tokens (>= 32 bytes)", flag=False
        ),
    )
    plans_file: Path | None = field(
        default=None,
        metadata=_meta("VCSTREAM_PLANS_FILE", path, "JSON file of plans (default: free, unlimited)"),
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "VCSTREAM_ALLOWED_ORIGINS", comma_list, "origins whose pages may open calls (default: own)"
        ),
    )
    replica_name: str = field(
        default_factory=socket.gethostname,
        metadata=_meta(
            "VCSTREAM_REPLICA_NAME", text, "this replica's name in call records (default: host name)"
        ),
    )
    shutdown_grace_s: float = field(
        default=30.0,
        metadata=_meta("VCSTREAM_SHUTDOWN_GRACE_S", float, "seconds to let sessions finish after SIGTERM"),
    )
    log_level: str = field(
        default="INFO", metadata=_meta("VCSTREAM_LOG_LEVEL", text, "DEBUG, INFO, WARNING or ERROR")
    )

    def __post_init__(self) -> None:
        for name in (
            "tls_cert",
            "tls_key",
            "model_cache",
            "data_dir",
            "voices_dir",
            "capacity_file",
            "plans_file",
        ):
            value = getattr(self, name)
            if isinstance(value, str):  # built directly with strings: keep the declared types
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "log_level", self.log_level.upper())
        problems = list(self._problems())
        if problems:
            raise ConfigurationError("invalid server settings: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        found: list[str] = []
        if not 0 <= self.port <= 65535:
            found.append(f"port {self.port} is not 0-65535")
        if self.engine not in ENGINE_CHOICES:
            found.append(f"engine {self.engine!r} is not one of {', '.join(ENGINE_CHOICES)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            found.append("tls_cert and tls_key go together")
        if self.max_sessions is not None and self.max_sessions < 1:
            found.append(f"max_sessions must be at least 1, got {self.max_sessions}")
        if self.overflow_engine is not None and self.overflow_engine not in OVERFLOW_ENGINES:
            choices = ", ".join(OVERFLOW_ENGINES)
            found.append(f"overflow_engine {self.overflow_engine!r} is not one of {choices}")
        if self.voice_cache_size < 1:
            found.append(f"voice_cache_size must be at least 1, got {self.voice_cache_size}")
        if self.max_upload_bytes < 1024:
            found.append(f"max_upload_bytes {self.max_upload_bytes} is below 1 KiB")
        if self.max_uploads < 1:
            found.append(f"max_uploads must be at least 1, got {self.max_uploads}")
        if self.webrtc_latency_ms < 0:
            found.append("webrtc_latency_ms cannot be negative")
        if self.shutdown_grace_s < 0:
            found.append("shutdown_grace_s cannot be negative")
        if self.max_connections < 1:
            found.append(f"max_connections must be at least 1, got {self.max_connections}")
        if self.header_timeout_s <= 0:
            found.append("header_timeout_s must be positive")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                found.append(f"trusted proxy {proxy!r} is not an address or network")
        if self.turn_ttl_s <= 0:
            found.append("turn_ttl_s must be positive")
        for url in (*self.stun_urls, *self.turn_urls):
            if not _ICE_URL.match(url):
                found.append(f"ICE server URL {url!r} must start with stun:, stuns:, turn: or turns:")
        if self.ice_port_range is not None:
            first, last = self.ice_port_range
            if not 1 <= first <= last <= 65535:
                found.append(f"ice_port_range {first}-{last} must satisfy 1 <= first <= last <= 65535")
            elif self.max_sessions is not None and last - first + 1 < self.max_sessions:
                found.append(
                    f"ice_port_range {first}-{last} has {last - first + 1} ports for {self.max_sessions} "
                    "sessions (one UDP port per call)"
                )
        if self.announced_address is not None:
            try:
                ipaddress.ip_address(self.announced_address)
            except ValueError:
                found.append(f"announced_address {self.announced_address!r} is not an IP address")
        if self.turn_urls and not self.turn_secret:
            found.append("turn_urls need turn_secret (VCSTREAM_TURN_SECRET) for TURN credentials")
        if self.auth not in AUTH_MODES:
            found.append(f"auth {self.auth!r} is not one of {', '.join(AUTH_MODES)}")
        if self.auth == "required" and len((self.token_secret or "").encode()) < MIN_TOKEN_SECRET_BYTES:
            found.append(
                f"auth=required needs VCSTREAM_TOKEN_SECRET of at least {MIN_TOKEN_SECRET_BYTES} bytes "
                "(the same on every replica), e.g. from `openssl rand -base64 48`"
            )
        for origin in self.allowed_origins:
            if not _ORIGIN.match(origin):
                found.append(f"allowed origin {origin!r} must look like https://host[:port]")
        if self.log_level not in _LOG_LEVELS:
            found.append(f"log_level {self.log_level!r} is not one of {', '.join(_LOG_LEVELS)}")
        return found

    def session_overrides(self) -> dict[str, object]:
        """The operator's session defaults by name (``block_time`` and ``engine_settings``); the
        engine checks them when it is loaded."""
        overrides: dict[str, object] = dict(parse_pairs(self.engine_settings))
        if self.block_time is not None:
            overrides["block_time"] = self.block_time
        return overrides

    @property
    def effective_database_url(self) -> str:
        """``database_url``, or the SQLite file in ``data_dir`` (an absolute path: the URL must not
        depend on the working directory of whoever opens it)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'vcstream.db').resolve()}"

    @property
    def effective_voices_dir(self) -> Path:
        return self.voices_dir if self.voices_dir is not None else self.data_dir / "voices"

    @property
    def log_level_number(self) -> int:
        return int(logging.getLevelName(self.log_level))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServiceSettings:
        """Settings from ``VCSTREAM_*`` variables of ``environ`` (default ``os.environ``), then
        ``overrides`` by field name on top (None values are ignored, so unset flags can be passed
        through). Raises ConfigurationError naming the variable that does not parse."""
        env = os.environ if environ is None else environ
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigurationError(f"unknown server settings {unknown}")
        values: dict[str, Any] = {}
        for name, spec in known.items():
            raw = env.get(spec.metadata["env"], "").strip()
            if not raw:
                continue
            try:
                values[name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigurationError(f"{spec.metadata['env']}={raw!r} is invalid: {exc}") from exc
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)


def add_settings_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per setting (``--max-upload-bytes`` for ``max_upload_bytes``...), default unset so
    that the environment applies unless the flag is given. ``only``: just these settings."""
    group = parser.add_argument_group("server settings (each flag overrides its VCSTREAM_* variable)")
    for spec in fields(ServiceSettings):
        if not spec.metadata["flag"] or (only is not None and spec.name not in only):
            continue
        default = spec.default if spec.default not in (None, ()) else "unset"
        group.add_argument(
            "--" + spec.name.replace("_", "-"),
            dest=spec.name,
            type=spec.metadata["parse"],
            default=None,
            metavar=spec.name.upper(),
            help=f"{spec.metadata['help']} [env {spec.metadata['env']}; default {default}]",
        )


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServiceSettings:
    """Settings from the environment with the flags that were given on top."""
    overrides = {spec.name: getattr(args, spec.name, None) for spec in fields(ServiceSettings)}
    return ServiceSettings.from_env(environ, **overrides)
