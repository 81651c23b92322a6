"""``ppserver``: run the API, check the configuration, manage API keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict

from pydantic import ValidationError

from putplace.blobs import create_blob_store
from putplace.config import Settings, SettingsError, load_settings
from putplace.coordination import create_coordinator
from putplace.coordination.host import SHARED_FILE_ENV
from putplace.metadata import StoreUnavailableError, create_metadata_store
from putplace.server import keys_cli, tempdirs
from putplace.server.supervisor import SUPERVISOR_ENV
from putplace.service.maintenance import GC_MIN_AGE_SECONDS
from putplace.service.stores import open_metadata, open_stores

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppserver",
        description="PutPlace server. Settings come from PUTPLACE_* environment variables, "
        ".env and ppserver.toml (or the file named by PUTPLACE_CONFIG).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", help="bind address (PUTPLACE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (PUTPLACE_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (PUTPLACE_WORKERS)")

    commands.add_parser("check", help="validate settings and check both stores answer")

    keys_cli.add_parser(commands)

    verify = commands.add_parser("verify", help="re-hash stored blobs; quarantine corrupt ones")
    verify.add_argument("--sample", type=_positive, help="check N random blobs, not all")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    gc = commands.add_parser(
        "gc", help="list (or --delete) blobs no file references, and resumable uploads"
    )
    gc.add_argument("--delete", action="store_true", help="remove them (default: list only)")
    gc.add_argument(
        "--min-age",
        type=float,
        default=GC_MIN_AGE_SECONDS,
        metavar="SECONDS",
        help=f"only blobs stored at least this long ago (default {GC_MIN_AGE_SECONDS:g})",
    )
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        name: value
        for name in ("host", "port", "workers")
        if (value := getattr(args, name, None)) is not None
    }
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"ppserver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "serve":
            return _serve(settings, overrides)
        if args.command == "check":
            return asyncio.run(_check(settings))
        if args.command in ("verify", "gc"):
            return asyncio.run(_maintain(settings, args))
        return asyncio.run(_keys(settings, args))
    except StoreUnavailableError as exc:
        print(f"ppserver: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"ppserver: invalid --{first['loc'][0]}: {first['msg']}", file=sys.stderr)
        return EXIT_USAGE


def _serve(settings: Settings, overrides: dict[str, object]) -> int:
    import uvicorn

    from putplace.server.metrics import MULTIPROCESS_DIR

    # Worker processes build their own settings from the environment: pass overrides on.
    for name, value in overrides.items():
        os.environ[f"PUTPLACE_{name.upper()}"] = str(value)
    made: list[str] = []  # temporary directories of this run, removed when it ends
    tempdirs.sweep_orphans()  # and those of runs killed before they could remove theirs
    if settings.workers > 1:  # its workers stop if this process is killed
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
    if settings.workers > 1 and not os.environ.get(MULTIPROCESS_DIR):
        # Each worker writes its metrics here; /metrics sums them (set before they start).
        made.append(tempdirs.make("putplace-metrics-"))
        os.environ[MULTIPROCESS_DIR] = made[-1]
    if settings.workers > 1 and not settings.redis_url and not os.environ.get(SHARED_FILE_ENV):
        # Rate limits, quota reservations and key revocations, shared by the workers.
        try:
            made.append(tempdirs.make("putplace-limits-"))
        except OSError as exc:  # a helper: the workers then count alone
            print(f"ppserver: workers keep their own limits ({exc})", file=sys.stderr)
        else:
            os.environ[SHARED_FILE_ENV] = os.path.join(made[-1], "limits.sqlite3")
    if asyncio.run(_count_keys(settings)) == 0:
        print(
            "ppserver: no API keys yet. Create the first one with:\n"
            "  ppserver keys create --name admin --scope admin",
            file=sys.stderr,
        )
    try:
        uvicorn.run(
            "putplace.server.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            timeout_keep_alive=settings.keepalive_timeout_seconds,
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
            log_config=None,  # the app configures logging (text or JSON)
            access_log=False,  # the app writes one access line per request, with its id
            proxy_headers=True,
        )
    finally:  # also when uvicorn exits (a port in use); after a SIGKILL, the next serve
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


async def _count_keys(settings: Settings) -> int:
    async with open_metadata(settings) as metadata:
        return await metadata.count_api_keys()


async def _maintain(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from putplace.service.maintenance import Retention, collect_garbage, verify
    from putplace.service.resumable import sweep_uploads

    if args.command == "gc" and args.min_age < 0:
        print("ppserver: --min-age must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    async with open_stores(settings) as stores:
        if args.command == "gc":
            retention = Retention(
                keep_versions=settings.history_keep_versions,
                keep_days=settings.history_keep_days,
                history_keeps_content=settings.history_keeps_content,
            )
            gc_report = await collect_garbage(
                stores.metadata, stores.blobs, delete=args.delete,
                min_age_seconds=args.min_age, retention=retention,
            )  # fmt: skip
            uploads = await sweep_uploads(stores, delete=args.delete)
            if args.json:
                print(json.dumps({**asdict(gc_report), "uploads": asdict(uploads)}))
            elif args.delete:
                for sha in gc_report.deleted:
                    print(sha)
                for upload_id in uploads.expired + uploads.orphaned:
                    print(f"upload {upload_id} (freed)")
                freed = len(uploads.expired) + len(uploads.orphaned)
                kept = len(uploads.unfinished)
                print(f"{gc_report.history_pruned} past versions dropped, "
                      f"{len(gc_report.deleted)} blobs deleted, {freed} uploads freed, "
                      f"{kept} unfinished uploads kept", file=sys.stderr)  # fmt: skip
            else:
                for sha in gc_report.unreferenced:
                    print(sha)
                for sha in gc_report.orphaned:
                    print(f"{sha} (in the blob store, never recorded)")
                for line in uploads.unfinished:
                    print(f"upload {line} (unfinished)")
                for upload_id in uploads.expired:
                    print(f"upload {upload_id} (expired)")
                for upload_id in uploads.orphaned:
                    print(f"upload {upload_id} (staged, never recorded)")
                found = len(gc_report.unreferenced) + len(gc_report.orphaned)
                print(f"{found} blobs unreferenced, {len(uploads.unfinished)} uploads unfinished, "
                      f"{len(uploads.expired) + len(uploads.orphaned)} uploads to free "
                      "(run with --delete to remove)", file=sys.stderr)  # fmt: skip
            return 0
        with Progress(transient=True, disable=args.json or not sys.stderr.isatty()) as bar:
            task = bar.add_task("Verifying blobs", total=None)
            report = await verify(
                stores.metadata, stores.blobs, sample=args.sample,
                progress=lambda _: bar.advance(task),
            )  # fmt: skip
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}))
    else:
        for sha in report.corrupt:
            print(f"CORRUPT (quarantined): {sha}")
        for sha in report.missing:
            print(f"MISSING: {sha}")
        print(
            f"checked {report.checked} blobs: {len(report.corrupt)} corrupt, "
            f"{len(report.missing)} missing"
        )
    return 0 if report.ok else 1


async def _check(settings: Settings) -> int:
    print(f"settings: ok (database {settings.database_url}, storage {settings.storage_url})")
    metadata = create_metadata_store(settings)
    blobs = create_blob_store(settings)
    failures = 0
    for name, store in (("database", metadata), ("storage", blobs)):
        try:
            await store.open()
            ok = await store.ping()
        except Exception as exc:  # report every failure, not only the first
            ok, detail = False, str(exc)
        else:
            detail = "answers" if ok else "does not answer"
        finally:
            await store.close()
        print(f"{name}: {'ok' if ok else 'FAILED'} ({store.describe()['type']}: {detail})")
        failures += not ok
    if settings.redis_url:  # optional: the server runs without it, but was told to use it
        coordination = create_coordinator(settings)
        try:
            ok = await coordination.ping()
        finally:
            await coordination.close()
        where = coordination.describe().get("url", "")
        print(f"redis: {'ok' if ok else 'FAILED'} ({where}: "
              f"{'answers' if ok else 'does not answer'})")  # fmt: skip
        failures += not ok
    return 1 if failures else 0


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    # With Redis, a key revoked here is refused by every running server at once.
    coordination = create_coordinator(settings)
    try:
        async with open_metadata(settings) as store:
            return await keys_cli.run(store, args, coordination.announce_key_change)
    finally:
        await coordination.close()
