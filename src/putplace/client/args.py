"""Command-line values every ``ppclient`` command shares: sizes, the connection options'
checks, and the TLS verification they ask for."""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
from typing import Any

import configargparse

from putplace.digest import NAMESPACE_RE
from putplace.patterns import checked_exclude

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def byte_size(text: str) -> int:
    """``4096``, ``512K``, ``8M``, ``8MiB``, ``1G``, ``2T`` (binary units) in bytes."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (value[:-1], value[-1]) if value[-1:] in _UNITS else (value, "")
    try:
        size = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise configargparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None
    if not math.isfinite(size) or size < 0:
        raise configargparse.ArgumentTypeError(f"not a size in bytes: {text!r}")
    return int(size)


def exclude(text: str) -> str:
    """A gitignore-style pattern the walk can match."""
    try:
        return checked_exclude(text)
    except ValueError as exc:
        raise configargparse.ArgumentTypeError(str(exc)) from None


def ip_address(text: str) -> str:
    """An IPv4 or IPv6 address (the server refuses records with anything else)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise configargparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def namespace_name(text: str) -> str:
    """A namespace name, as the server accepts it."""
    if NAMESPACE_RE.fullmatch(text) is None:
        raise configargparse.ArgumentTypeError(
            f"not a namespace name (lowercase letters, digits, '.', '_', '-'): {text!r}"
        )
    return text


def check_connection(parser: Any, args: Any) -> None:
    """``parser.error`` (exit 2) for a wrong ``--url``, ``--timeout``, ``--retries``,
    ``--ca-bundle`` or ``--insecure``."""
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0")
    if args.retries < 0:
        parser.error("--retries must be 0 or more")
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must start with http:// or https://, not {args.url!r}")
    if args.ca_bundle and not os.path.isfile(os.path.expanduser(args.ca_bundle)):
        parser.error(f"--ca-bundle: no such file: {args.ca_bundle}")
    if args.ca_bundle and args.insecure:
        parser.error("--ca-bundle and --insecure contradict each other")


def tls_verify(args: Any) -> bool | ssl.SSLContext:
    """What to verify the server's certificate with."""
    if args.insecure or args.url.startswith("http://"):
        return False  # no TLS to verify; skips loading the CA bundle (~0.3 s at start-up)
    if args.ca_bundle:
        return ssl.create_default_context(cafile=os.path.expanduser(args.ca_bundle))
    return True
