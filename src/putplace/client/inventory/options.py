"""What every inventory command shares: connection options, value parsers, exit codes.

The connection options (and ``--namespace``, the one to read) are read like the upload
command's (command line, then the environment variable ``PUTPLACE_<FLAG>``, then the
config file, ``~/ppclient.conf`` by default). Only those options may come from the
environment or the file: a ``hostname = web-01`` line meant for uploads, or
``PUTPLACE_HOSTNAME``, must not quietly turn into a ``--hostname`` filter of ``find``.
Other keys of the file are ignored.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import configargparse

from putplace.client.args import check_connection, namespace_name, tls_verify
from putplace.client.inventory.reader import ConnectFailedError, ReadClient
from putplace.client.uploader import DEFAULT_RETRIES, DEFAULT_TIMEOUT, ApiError, AuthError
from putplace.digest import is_sha256_hex
from putplace.display import safe

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_URL = "http://localhost:8000"
DEFAULT_CONFIG = "~/ppclient.conf"
USAGE_STATUSES = frozenset({400, 401, 403, 422})
"""Refusals that mean the command or the key is wrong (exit 2), not the data (exit 1)."""
SHARED = frozenset({"url", "api_key", "ca_bundle", "insecure", "timeout", "retries", "namespace"})
"""The options that may also come from the environment and the config file."""


class _Parser(configargparse.ArgumentParser):  # type: ignore[misc]
    """Config-file keys only for the shared options (see the module docstring)."""

    def get_possible_config_keys(self, action: Any) -> list[str]:
        if action.dest not in SHARED:
            return []
        keys: list[str] = super().get_possible_config_keys(action)
        return keys


def base_parser(command: str, description: str, epilog: str | None = None) -> Any:
    """A parser for ``ppclient COMMAND`` holding the shared options."""
    p = _Parser(
        prog=f"ppclient {command}",
        description=description,
        epilog=epilog,
        formatter_class=configargparse.RawDescriptionHelpFormatter,
        default_config_files=[DEFAULT_CONFIG],
        ignore_unknown_config_file_keys=True,
        add_config_file_help=False,  # its text says every flag may be set there: not so
        args_for_setting_config_path=["--config"],
        config_arg_help_message=f"config file of 'flag = value' lines (default {DEFAULT_CONFIG})",
    )
    shared = p.add_argument_group(
        "server",
        "These may also be set in the config file (url = ...) or the environment.",
    )
    shared.add_argument("--url", default=DEFAULT_URL, env_var="PUTPLACE_URL",
                        help=f"server base URL (default {DEFAULT_URL})")  # fmt: skip
    shared.add_argument("--api-key", metavar="KEY", env_var="PUTPLACE_API_KEY",
                        help="API key with read scope")  # fmt: skip
    shared.add_argument("--ca-bundle", metavar="FILE", env_var="PUTPLACE_CA_BUNDLE",
                        help="PEM CA bundle to verify the server with")  # fmt: skip
    shared.add_argument("--insecure", action="store_true", env_var="PUTPLACE_INSECURE",
                        help="do not verify TLS (testing only)")  # fmt: skip
    shared.add_argument("--namespace", type=namespace_name, metavar="NAME",
                        env_var="PUTPLACE_NAMESPACE",
                        help="read only this namespace (default: all the key reads)")  # fmt: skip
    shared.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        env_var="PUTPLACE_TIMEOUT", help="per-request timeout")  # fmt: skip
    shared.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                        env_var="PUTPLACE_RETRIES",
                        help="retries of transient failures")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="print JSON for scripts instead of a table")  # fmt: skip
    return p


def check_shared(parser: Any, args: Any) -> None:
    """Validate the shared options; ``parser.error`` (exit 2) when one is wrong."""
    if not args.api_key:
        parser.error("an API key is needed: --api-key or PUTPLACE_API_KEY")
    check_connection(parser, args)


def make_client(
    args: Any, *, pool_size: int = 4, stop: threading.Event | None = None
) -> ReadClient:
    return ReadClient(
        args.url, args.api_key, timeout=args.timeout, retries=args.retries,
        verify=tls_verify(args),
        pool_size=pool_size, stop=stop, namespace=args.namespace,
    )  # fmt: skip


def fail(message: str) -> None:
    print(f"ppclient: {message}", file=sys.stderr)


def run(body: Callable[[], int]) -> int:
    """Run a command body, turning refusals and failures into a message and exit code."""
    # A failure's detail may quote the server, or what a proxy answered: shown literally.
    try:
        return body()
    except AuthError as exc:
        fail(f"the server refused the API key (HTTP {exc.status}): {safe(exc.detail)}")
        return EXIT_USAGE
    except ConnectFailedError as exc:
        fail(safe(exc.detail))
        return EXIT_ERRORS
    except ApiError as exc:
        detail = safe(exc.detail)
        fail(detail if exc.status is None else f"{detail} (HTTP {exc.status})")
        return EXIT_USAGE if exc.status in USAGE_STATUSES else EXIT_ERRORS
    except KeyboardInterrupt:
        fail("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `ppclient find ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


# --- value parsers (argparse ``type=``) -------------------------------------------------

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])(?:\s*ago)?", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def point_in_time(text: str, now: Callable[[], datetime] = datetime.now) -> str:
    """A time for the server, as Unix seconds: given as Unix seconds, ISO 8601
    (``2026-11-30``, ``2026-11-30T12:00``, ``...Z``, ``...+02:00``; without a zone it is
    local time) or an age (``90m``, ``36h``, ``7d``, ``2w``, optionally with ``ago``)."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds):
        return repr(seconds)
    if match := _AGO.fullmatch(value):
        age = timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2).lower()])
        return repr((now().astimezone() - age).timestamp())
    try:
        when = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise configargparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601, Unix seconds, or an age such as 7d)"
        ) from None
    return repr(when.astimezone().timestamp())  # naive: astimezone() takes it as local


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise configargparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise configargparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def sha256_arg(text: str) -> str:
    value = text.strip().lower()
    if not is_sha256_hex(value):
        raise configargparse.ArgumentTypeError(f"not a SHA-256 (64 hex digits): {text!r}")
    return value
