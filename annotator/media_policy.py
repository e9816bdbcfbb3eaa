"""What media fetching may reach: schemes, addresses, local folders, and where the Label Studio key goes.

Task data comes from whoever can write a task, so a media reference is untrusted input. The policy:

- ``http``/``https`` only (cloud URIs go through Label Studio's presign endpoint); every redirect hop
  is checked again.
- Loopback, private, link-local, multicast and reserved addresses are refused, unless the host is
  Label Studio's own (its exact origin, when the operator gave it: configured, `ls connect`, or a
  /setup behind basic auth; a /setup without authentication exempts nothing) or listed in
  ``ANNOTATOR_MEDIA_ALLOW_HOSTS`` (host names, addresses or networks; ``*`` allows every address).
  The check runs on the address actually connected to (`GuardedBackend`), so a name that resolves
  to a public address when checked and to an internal one when connecting (DNS rebinding) is
  refused too.
- Local paths from Label Studio tasks, ``/predict`` and ``/search`` are read only inside
  ``ANNOTATOR_MEDIA_ROOTS`` (and ``/data/local-files`` only inside the document root), after
  resolving ``..`` and symlinks. Paths in the operator's own imports (items without a Label Studio
  task) are trusted.
- The Label Studio key is sent only to Label Studio's exact origin (scheme, host and port).
- Refusals say "not allowed" and why, never anything learnt from the refused address.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpcore

from annotator.config import Settings
from annotator.errors import MediaError

DEFAULT_PORTS = {"http": 80, "https": 443}


class MediaNotAllowedError(MediaError):
    """The reference points where the media policy does not let us go."""


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the port filled in; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower().rstrip("."), port or DEFAULT_PORTS[scheme]


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in resolver order, once each; raises socket.gaierror."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


@dataclass(frozen=True)
class MediaPolicy:
    """Built from `Settings` by `MediaPolicy.from_settings`; ``label_studio`` is its origin."""

    label_studio: tuple[str, str, int] | None = None
    label_studio_exempt: bool = True  # its address may be internal: the operator's, not a caller's (see Settings)
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_all_addresses: bool = False
    roots: tuple[Path, ...] = field(default_factory=tuple)
    document_root: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaPolicy:
        hosts, networks, allow_all = set(), [], False
        for entry in settings.media_allow_host_list:
            if entry == "*":
                allow_all = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(
            label_studio=origin(settings.label_studio_url) if settings.label_studio_url else None,
            label_studio_exempt=settings.label_studio_trusted,
            allow_hosts=frozenset(hosts), allow_networks=tuple(networks), allow_all_addresses=allow_all,
            roots=tuple(p.resolve() for p in settings.media_root_list),
            document_root=settings.local_files_document_root.resolve() if settings.local_files_document_root else None,
        )

    # --- URLs ------------------------------------------------------------------------------------

    def is_label_studio(self, url: str) -> bool:
        """Whether ``url`` is on Label Studio's exact origin: only there does its key go."""
        return self.label_studio is not None and origin(url) == self.label_studio

    def check_url(self, url: str, ref: str) -> None:
        """Refuse schemes other than http(s); the address is checked when connecting."""
        if origin(url) is None:
            raise MediaNotAllowedError(ref, "not allowed: only http and https URLs are fetched")

    def check_host(self, url: str, ref: str) -> None:
        """Resolve ``url``'s host and refuse it unless every address it has is allowed: for a URL
        we are about to hand to a client that does not connect through `GuardedBackend` (the
        Label Studio SDK), told to us by an unauthenticated caller."""
        self.check_url(url, ref)
        _, host, port = origin(url)
        if self.allow_all_addresses or host in self.allow_hosts:
            return  # the operator's word: no need to resolve it
        for address in resolve(host, port):
            self.check_address(host, port, address, ref)

    def check_address(self, host: str, port: int, address: str, ref: str) -> None:
        """Refuse connecting to an internal ``address`` (that ``host`` resolved to) unless allowed."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not _internal(ip) or self.allow_all_addresses:
            return
        host = host.lower().rstrip(".")
        if host in self.allow_hosts or any(ip in net for net in self.allow_networks):
            return
        if self.label_studio_exempt and self.label_studio is not None and (host, port) == self.label_studio[1:]:
            return
        raise MediaNotAllowedError(ref, f"not allowed: {host} is a private, loopback or link-local address "
                                        "(list it in ANNOTATOR_MEDIA_ALLOW_HOSTS to allow it)")

    # --- local files -----------------------------------------------------------------------------

    def check_local(self, path: Path, ref: str, *, trusted: bool) -> Path:
        """The resolved path, if an untrusted reference may read it (inside a media root)."""
        resolved = path.resolve()
        if trusted:
            return resolved
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise MediaNotAllowedError(ref, "not allowed: local paths in tasks are read only inside "
                                            "ANNOTATOR_MEDIA_ROOTS")
        return resolved

    def local_files_path(self, relative: str, ref: str) -> Path:
        """Label Studio's ``/data/local-files/?d=<relative>`` inside the document root, or refused."""
        if self.document_root is None:
            raise MediaNotAllowedError(ref, "not allowed: no local-files document root is configured")
        resolved = (self.document_root / relative.lstrip("/")).resolve()
        if not resolved.is_relative_to(self.document_root):
            raise MediaNotAllowedError(ref, "not allowed: the path leaves LOCAL_FILES_DOCUMENT_ROOT")
        return resolved


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's network backend, resolving host names itself and connecting only to addresses the
    policy allows: the check and the connection use the same address. Its refusal names only the
    host; the fetcher puts the item's reference back into the message."""

    def __init__(self, policy: MediaPolicy):
        self.policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        try:
            addresses = resolve(host, port)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        for address in addresses:  # every address the name has must be allowed, not only the first
            self.policy.check_address(host, port, address, ref=host)
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")
