"""``ppclient``: register a host's files with a PutPlace server and upload new content.

Every flag can also be set in the config file (``--config``, default ``~/ppclient.conf``,
``key = value`` lines) or by environment variable ``PUTPLACE_<FLAG>``; the command line
wins over the environment, which wins over the file.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import configargparse

from putplace.client.api import ApiClient, AuthError
from putplace.client.cache import ClientCache, default_cache_path
from putplace.client.pipeline import Options, Run, default_ip
from putplace.client.progress import Reporter, Summary

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(
        prog="ppclient",
        description="Register files with a PutPlace server; upload content it lacks.",
        default_config_files=["~/ppclient.conf"],
        auto_env_var_prefix="PUTPLACE_",
        add_env_var_help=False,
        args_for_setting_config_path=["--config"],
        config_arg_help_message="config file (default ~/ppclient.conf)",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to scan")
    p.add_argument(
        "--path",
        action="append",
        default=[],
        dest="extra_paths",
        help="a file or directory to scan (repeatable)",
    )
    p.add_argument("--url", default="http://localhost:8000", help="server base URL")
    p.add_argument("--api-key", help="API key (env PUTPLACE_API_KEY)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="gitignore-style pattern to skip (repeatable)",
    )
    p.add_argument("--hostname", default=socket.gethostname(), help="hostname to record")
    p.add_argument("--ip", default=None, help="IP address to record (default: detected)")
    p.add_argument("--dry-run", action="store_true", help="scan and hash, send nothing")
    p.add_argument("--verbose", action="store_true", help="name skipped files and more")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ca-bundle", help="CA certificates to verify the server with (PEM)")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=5, help="retries of transient failures")
    p.add_argument("--batch-size", type=int, default=500, help="records per /put_files")
    p.add_argument(
        "--hash-workers", type=int, default=Options.hash_workers, help="files hashed in parallel"
    )
    p.add_argument("--upload-workers", type=int, default=4, help="uploads in parallel")
    p.add_argument(
        "--cache-file", default=str(default_cache_path()), help="local hash cache (SQLite)"
    )
    p.add_argument("--no-cache", action="store_true", help="use no hash cache at all")
    p.add_argument("--rehash", action="store_true", help="ignore cached hashes: read every file")
    p.add_argument(
        "--resend",
        action="store_true",
        help="send metadata even for files unchanged since the last run",
    )
    return p


def _check(args: configargparse.Namespace, parser: configargparse.ArgumentParser) -> None:
    if not args.paths:
        parser.error("give at least one PATH (or --path PATH)")
    if not args.dry_run and not args.api_key:
        parser.error("an API key is needed: --api-key or PUTPLACE_API_KEY")
    for name in ("batch_size", "hash_workers", "upload_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.retries < 0 or args.timeout <= 0:
        parser.error("--retries must be >= 0 and --timeout > 0")
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must start with http:// or https://, not {args.url!r}")
    if args.ca_bundle and not os.path.isfile(args.ca_bundle):
        parser.error(f"--ca-bundle: no such file: {args.ca_bundle}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.paths = [*args.paths, *args.extra_paths]
    _check(args, parser)
    options = Options(
        paths=args.paths,
        excludes=args.exclude,
        hostname=args.hostname,
        ip_address=args.ip or default_ip(),
        batch_size=args.batch_size,
        hash_workers=args.hash_workers,
        upload_workers=args.upload_workers,
        dry_run=args.dry_run,
        rehash=args.rehash,
        resend=args.resend,
    )
    summary = Summary()
    reporter = Reporter(summary, enabled=not args.no_progress, verbose=args.verbose)
    cache = ClientCache(None if args.no_cache else Path(args.cache_file).expanduser())
    api = None
    if not args.dry_run:
        verify: bool | str = False if args.insecure else (args.ca_bundle or True)
        api = ApiClient(
            args.url,
            args.api_key,
            timeout=args.timeout,
            retries=args.retries,
            verify=verify,
            pool_size=args.upload_workers + 2,
        )
    try:
        with reporter:
            Run(options, api, cache, reporter).execute()
    except KeyboardInterrupt:
        reporter.print_summary("Interrupted; summary so far")
        return EXIT_INTERRUPTED
    except AuthError as exc:
        print(
            f"ppclient: the server refused the API key ({exc.status}): {exc.detail}",
            file=sys.stderr,
        )
        reporter.print_summary("Stopped")
        return EXIT_USAGE
    finally:
        cache.close()
        if api is not None:
            api.close()
    reporter.print_summary()
    return EXIT_ERRORS if summary.errors else EXIT_OK
