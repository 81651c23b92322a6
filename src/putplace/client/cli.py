"""``ppclient``: register a host's files with a PutPlace server and upload new content.

Every flag can also be set in the config file (``--config``, default ``~/ppclient.conf``,
``flag = value`` lines, lists as ``exclude = [".git", "*.log"]``) or by the environment
variable ``PUTPLACE_<FLAG>`` (``PUTPLACE_API_KEY``, ``PUTPLACE_URL``, ...). The command
line wins over the environment, which wins over the file.

Exit codes: 0 no errors, 1 some files failed, 2 usage error, refused API key or a cache
file another run is using, 130 interrupted (Ctrl-C); the summary is printed in every case
but a usage error.

``ppclient find|locations|history|stats|duplicates|restore ...`` (the command word first)
runs that inventory command instead: see :mod:`putplace.client.inventory`.
"""

from __future__ import annotations

import socket
import sqlite3
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import configargparse

from putplace import gctune, malloctune
from putplace.client.args import (
    byte_size,
    check_connection,
    exclude,
    ip_address,
    namespace_name,
    tls_verify,
)
from putplace.client.cache import CacheBusyError, ClientCache, default_cache_path
from putplace.client.pipeline import Options, Run, default_ip
from putplace.client.progress import Reporter, Summary
from putplace.client.uploader import DEFAULT_RETRIES, DEFAULT_TIMEOUT, ApiClient, AuthError
from putplace.display import safe

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_URL = "http://localhost:8000"
DEFAULT_CONFIG = "~/ppclient.conf"
COMMANDS = ("find", "locations", "history", "stats", "duplicates", "restore")
"""Words that, first on the command line, name an inventory command instead of a PATH."""
EPILOG = """\
other commands (each has its own --help):
  ppclient find [FILTERS]                    list recorded files
  ppclient locations SHA256                  where a content is
  ppclient history --hostname H PATH         every version of one file
  ppclient stats                             totals, hosts, duplicates, growth
  ppclient duplicates                        the most wasteful duplicated contents
  ppclient restore --hostname H PREFIX --to DIR   recreate a recorded tree

A command word counts only as the first argument. To scan a directory that is
literally named like one, write ./find or --path find.
"""


def build_parser() -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(
        prog="ppclient",
        description="Register files with a PutPlace server; upload the content it lacks.",
        epilog=EPILOG,
        formatter_class=configargparse.RawDescriptionHelpFormatter,
        default_config_files=[DEFAULT_CONFIG],
        auto_env_var_prefix="PUTPLACE_",
        args_for_setting_config_path=["--config"],
        config_arg_help_message=f"config file of 'flag = value' lines (default {DEFAULT_CONFIG})",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to scan")
    p.add_argument("--path", action="append", default=[], dest="extra_paths", metavar="PATH",
                   help="a file or directory to scan (repeatable)")  # fmt: skip
    p.add_argument("--url", default=DEFAULT_URL, help="server base URL (a .../put_file URL works)")
    p.add_argument("--api-key", metavar="KEY", help="API key with write scope")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", type=exclude,
                   help="gitignore-style pattern, relative to each root (repeatable)")  # fmt: skip
    p.add_argument("--hostname", default=socket.gethostname(), help="hostname to record")
    p.add_argument("--namespace", type=namespace_name, metavar="NAME",
                   help="record into this namespace (default: the key's own)")  # fmt: skip
    p.add_argument(
        "--ip", metavar="ADDRESS", type=ip_address, help="IP address to record (default: detected)"
    )
    p.add_argument("--dry-run", action="store_true", help="scan and hash, send nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="name skipped files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ca-bundle", metavar="FILE", help="PEM CA bundle to verify the server with")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS (testing only)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="per-request timeout")  # fmt: skip
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                   help="retries of transient failures")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=Options.batch_size, metavar="N",
                   help="records per POST /put_files")  # fmt: skip
    p.add_argument("--hash-workers", type=int, default=Options.hash_workers, metavar="N",
                   help="files over 16 KiB hashed in parallel (smaller: one thread)")  # fmt: skip
    p.add_argument("--upload-workers", type=int, default=Options.upload_workers, metavar="N",
                   help="upload requests (bundles or single files) in flight at once")  # fmt: skip
    p.add_argument("--bundle-threshold", type=byte_size, default=Options.bundle_threshold,
                   metavar="SIZE",
                   help="contents up to SIZE (at most --bundle-bytes) go in bundles "
                        "(POST /bundles), larger ones alone (PUT /blobs); 0: none")  # fmt: skip
    p.add_argument("--bundle-bytes", type=byte_size, default=Options.bundle_bytes, metavar="SIZE",
                   help="most content bytes per bundle")  # fmt: skip
    p.add_argument("--bundle-files", type=int, default=Options.bundle_files, metavar="N",
                   help="most contents per bundle")  # fmt: skip
    p.add_argument("--tus-threshold", type=byte_size, default=Options.tus_threshold,
                   metavar="SIZE",
                   help="contents of SIZE or more go over tus: resumable after a dropped "
                        "connection, a server restart or a new run; 0: never")  # fmt: skip
    p.add_argument("--tus-parts", type=int, default=Options.tus_parts, metavar="N",
                   help="parallel parts for contents over tus (each at least 64 MiB)")  # fmt: skip
    p.add_argument("--cache-file", default=str(default_cache_path()), metavar="FILE",
                   help="local hash cache (SQLite)")  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="use no local cache at all")
    p.add_argument("--rehash", action="store_true", help="ignore cached hashes: read every file")
    p.add_argument("--resend", action="store_true",
                   help="send metadata even for files unchanged since the last run")  # fmt: skip
    return p


def parse_args(argv: Sequence[str] | None) -> configargparse.Namespace:
    """Parse and validate; exits with status 2 (argparse's usage error) when invalid."""
    parser = build_parser()
    # PATHs may also come after options (``ppclient /a --exclude x /b``): argparse leaves
    # those over, so take them as paths and reject only what looks like an option.
    args, rest = parser.parse_known_args(argv)
    if "--" in rest:  # everything after "--" is a path, even "-name"
        split = rest.index("--")
        rest, verbatim = rest[:split], rest[split + 1 :]
    else:
        verbatim = []
    unknown = [arg for arg in rest if arg.startswith("-")]
    rest += verbatim
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.paths = [*args.paths, *rest, *args.extra_paths]
    if not args.paths:
        parser.error("give at least one PATH (or --path PATH)")
    if not args.dry_run and not args.api_key:
        parser.error("an API key is needed: --api-key or PUTPLACE_API_KEY (or use --dry-run)")
    for name in ("batch_size", "hash_workers", "upload_workers", "bundle_files", "bundle_bytes",
                 "tus_parts"):  # fmt: skip
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    check_connection(parser, args)
    return args


def _options(args: configargparse.Namespace) -> Options:
    return Options(
        paths=args.paths,
        excludes=args.exclude,
        hostname=args.hostname,
        ip_address=args.ip or default_ip(),
        batch_size=args.batch_size,
        hash_workers=args.hash_workers,
        upload_workers=args.upload_workers,
        bundle_threshold=min(args.bundle_threshold, args.bundle_bytes),
        bundle_bytes=args.bundle_bytes,
        bundle_files=args.bundle_files,
        tus_threshold=args.tus_threshold,
        tus_parts=args.tus_parts,
        dry_run=args.dry_run,
        rehash=args.rehash,
        resend=args.resend,
    )


def _api(args: configargparse.Namespace, stop: threading.Event) -> ApiClient | None:
    if args.dry_run:
        return None
    return ApiClient(
        args.url,
        args.api_key,
        timeout=args.timeout,
        retries=args.retries,
        verify=tls_verify(args),
        # Upload workers' parts, as many large files sent while hashed, and registration.
        pool_size=args.upload_workers * (args.tus_parts + 1) + 2,
        stop=stop,
        namespace=args.namespace,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ppclient``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        from putplace.client.inventory.commands import dispatch  # not needed for uploads

        return dispatch(argv[0], argv[1:])
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    malloctune.one_arena()  # before the run's threads start
    try:
        cache = ClientCache(None if args.no_cache else Path(args.cache_file).expanduser())
    except CacheBusyError as exc:
        print(f"ppclient: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, sqlite3.Error) as exc:
        print(f"ppclient: cannot open the cache {args.cache_file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    summary = Summary()
    reporter = Reporter(summary, enabled=not args.no_progress, verbose=args.verbose)
    stop = threading.Event()
    api = _api(args, stop)
    gctune.settle()
    try:
        with reporter:
            Run(_options(args), api, cache, reporter, stop).execute()
    except KeyboardInterrupt:
        reporter.print_summary("Interrupted; summary so far")
        return EXIT_INTERRUPTED
    except AuthError as exc:
        print(
            f"ppclient: the server refused the API key (HTTP {exc.status}): {safe(exc.detail)}",
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
