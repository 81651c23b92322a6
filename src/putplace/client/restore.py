"""``ppclient restore``: recreate a host's recorded tree (as it is, or was) in a directory.

The records come from ``GET /files`` (one host, one path prefix, optionally ``as_of``),
a page at a time; each file's content from ``GET /download/{sha256}``, several at once.
Every file is written to a temporary name beside its final one, checked against its
SHA-256, given its recorded mode and times, then renamed into place: a file is either
restored whole and verified or not at all. Symlinks are made last, after every file.

Running it again resumes: files already there with the right size and hash are skipped,
and partial downloads left by an interrupted run are continued. What is refused, and why,
is in :mod:`putplace.client.inventory.plan` and :mod:`putplace.client.inventory.restorefs`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from putplace.client.cancel import Cancelled, check
from putplace.client.inventory import options as opt
from putplace.client.inventory.download import Sink, fetch
from putplace.client.inventory.output import print_json
from putplace.client.inventory.plan import Item, RefusedError, normal_prefix, plan
from putplace.client.inventory.reader import ReadClient
from putplace.client.inventory.restorefs import (
    Destination,
    UnsafeError,
    finish_file,
    open_temp,
    place_symlink,
    remove,
    same_file,
    set_times_and_mode,
    temp_name,
)
from putplace.client.names import wire_path
from putplace.client.progress import TransferBars
from putplace.client.uploader import ApiError, AuthError
from putplace.display import safe

DEFAULT_WORKERS = 4
EPILOG = """\
Safety: nothing is written outside DIR. Records whose path has a '..' component are
refused; no symlink inside DIR is ever followed while writing (a restored 'etc -> /etc'
cannot lead a later file to /etc); symlinks whose target is absolute or climbs out of DIR
are refused and reported. Setuid/setgid bits are restored only when running as root.

Re-running the same command resumes: files already restored (same size and SHA-256)
are skipped; partial downloads of an interrupted run are continued.

Exit codes: 0 everything restored, 1 some files failed or were refused, 2 usage error or
refused API key, 130 interrupted.

example:
  ppclient restore --hostname web-01 /srv/www --to /tmp/www --as-of 2026-11-30T12:00
"""


@dataclass
class Totals:
    """What a restore did; updated from worker threads through :meth:`add`."""

    files_restored: int = 0
    bytes_restored: int = 0
    skipped: int = 0
    symlinks_created: int = 0
    errors: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    LABELS = {
        "files_restored": "Files restored",
        "bytes_restored": "Bytes restored",
        "skipped": "Skipped (already matching)",
        "symlinks_created": "Symlinks created",
        "errors": "Errors",
    }

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def failed(self, filepath: str, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.failures.append({"filepath": filepath, "error": message})

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            counts: dict[str, Any] = {name: getattr(self, name) for name in self.LABELS}
            return {**counts, "failures": list(self.failures)}


class Display(TransferBars):
    """Progress bars and messages of a restore, on stderr."""

    def __init__(self, *, enabled: bool) -> None:
        super().__init__(enabled=enabled, files_total=0, bytes_label="Download")

    def queued(self, size: int) -> None:
        if self._progress:
            files, data = self._progress.tasks[self._files], self._progress.tasks[self._bytes]
            self._progress.update(self._files, total=(files.total or 0) + 1)
            self._progress.update(self._bytes, total=(data.total or 0) + size)

    def file_done(self, size: int, downloaded: int) -> None:
        """One file finished; *size* bytes it was queued with, *downloaded* already shown."""
        if self._progress:
            self._progress.advance(self._files, 1)
            self._progress.advance(self._bytes, max(size - downloaded, 0))

    def downloaded(self, count: int) -> None:
        if self._progress:
            self._progress.advance(self._bytes, count)

    def say(self, text: str) -> None:
        """*text* must already be safe (see :func:`safe`): it is printed as it is."""
        self.console.print(text, markup=False, soft_wrap=True)


class MismatchError(Exception):
    """The downloaded bytes are not the recorded content."""


class Restorer:
    """Restores the records of one listing into one :class:`Destination`."""

    def __init__(
        self,
        client: ReadClient,
        destination: Destination,
        prefix: str,
        display: Display,
        *,
        workers: int,
        stop: threading.Event,
    ) -> None:
        self.client = client
        self.destination = destination
        self.prefix = prefix
        self.display = display
        self.workers = workers
        self.stop = stop
        self.totals = Totals()
        self.privileged = hasattr(os, "geteuid") and os.geteuid() == 0
        self.seen = 0

    def error(self, filepath: str, message: str, kind: str = "error") -> None:
        self.totals.failed(filepath, message)
        self.display.say(f"{kind}: {safe(filepath)}: {safe(message)}")

    def run(self, pages: Iterable[list[dict[str, Any]]]) -> None:
        """Restore every file of *pages* (a few workers at a time), then the symlinks.
        Raises ``AuthError`` at once if the key stops working, ``Cancelled`` when stopped."""
        links: list[Item] = []
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ppclient-restore")
        pending: set[Future[None]] = set()
        try:
            for page in pages:
                for record in page:
                    self.seen += 1
                    item = self._plan(record)
                    if item is None:
                        continue
                    if item.link_target is not None:
                        links.append(item)
                        continue
                    self.display.queued(item.size)
                    pending.add(pool.submit(self.restore_file, item))
                    if len(pending) >= self.workers * 4:  # bounded: pages may be endless
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        _raise_first(done)
            done, pending = wait(pending)
            _raise_first(done)
        except BaseException:
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        for link in links:
            check(self.stop)
            self.restore_link(link)

    def _plan(self, record: dict[str, Any]) -> Item | None:
        try:
            return plan(record, self.prefix)
        except RefusedError as exc:
            self.error(str(record.get("filepath")), str(exc), "refused")
            return None

    def restore_file(self, item: Item) -> None:
        """Restore one regular file; failures are counted and reported, not raised
        (but a refused key or a stop is)."""
        check(self.stop)
        shown: list[int] = [0]

        def progress(count: int) -> None:
            shown[0] += count
            self.display.downloaded(count)

        try:
            with self.destination.parent(item.parts) as parent:
                restored = self._restore_in(parent, item, progress)
            self.totals.add(**restored)
        except (AuthError, Cancelled):
            raise
        except (ApiError, MismatchError, UnsafeError) as exc:
            self.error(item.filepath, getattr(exc, "detail", None) or str(exc))
        except OSError as exc:
            self.error(item.filepath, exc.strerror or str(exc))
        finally:
            self.display.file_done(item.size, shown[0])

    def _restore_in(
        self, parent: int, item: Item, progress: Callable[[int], None]
    ) -> dict[str, int]:
        name = item.parts[-1]
        if same_file(parent, name, item.size, item.sha256, self.stop):
            set_times_and_mode(parent, name, item.mode, item.mtime, item.atime, self.privileged)
            return {"skipped": 1}
        if not item.has_content and item.size:
            raise MismatchError("the server does not hold this content")
        fd, resumed = open_temp(parent, name)
        keep = False
        try:
            sink = Sink(fd)
            if resumed:
                sink.load(self.stop)
            fetch(self.client, item.sha256, item.size, sink, progress, self.stop)
            if not sink.holds(item.size, item.sha256) and resumed:
                sink.reset()  # the leftover was not a start of this content: start over
                fetch(self.client, item.sha256, item.size, sink, progress, self.stop)
            if not sink.holds(item.size, item.sha256):
                raise MismatchError(
                    f"the downloaded content does not match the record ({sink.size} bytes, "
                    f"SHA-256 {sink.hasher.hexdigest()}; expected {item.size} bytes, "
                    f"{item.sha256}); nothing written"
                )
            finish_file(fd, parent, name, item.mode, item.mtime, item.atime, self.privileged)
            keep = True  # renamed: there is no temporary file any more
        except (Cancelled, KeyboardInterrupt):
            keep = True  # a partial file for the next run to resume
            raise
        finally:
            os.close(fd)
            if not keep:
                remove(parent, temp_name(name))
        return {"files_restored": 1, "bytes_restored": item.size}

    def restore_link(self, item: Item) -> None:
        assert item.link_target is not None
        try:
            with self.destination.parent(item.parts) as parent:
                made = place_symlink(
                    parent, item.parts[-1], item.link_target, item.mtime, item.atime
                )
            self.totals.add(**({"symlinks_created": 1} if made else {"skipped": 1}))
        except UnsafeError as exc:
            self.error(item.filepath, str(exc))
        except OSError as exc:
            self.error(item.filepath, exc.strerror or str(exc))


def _raise_first(done: Iterable[Future[None]]) -> None:
    for future in done:
        future.result()


def build_parser() -> Any:
    p = opt.base_parser(
        "restore",
        "Recreate a host's recorded files under PATH_PREFIX in a local directory.",
        EPILOG,
    )
    p.add_argument("prefix", metavar="PATH_PREFIX",
                   help="the recorded directory (or file) to restore")  # fmt: skip
    p.add_argument("--hostname", required=True, metavar="HOST", help="the host it was on")
    p.add_argument("--to", required=True, metavar="DIR",
                   help="where to recreate it: PATH_PREFIX/a/b becomes DIR/a/b")  # fmt: skip
    p.add_argument("--as-of", type=opt.point_in_time, metavar="TIME",
                   help="as it was at TIME (ISO 8601, Unix seconds, or an age: 7d)")  # fmt: skip
    p.add_argument("--workers", type=opt.positive, default=DEFAULT_WORKERS, metavar="N",
                   help=f"files downloaded at once (default {DEFAULT_WORKERS})")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    opt.check_shared(parser, args)
    try:
        prefix = normal_prefix(args.prefix)
    except RefusedError as exc:
        parser.error(safe(str(exc)))
    params = [("hostname", args.hostname), ("path_prefix", wire_path(prefix)), ("sort", "path")]
    if args.as_of is not None:
        params.append(("as_of", args.as_of))
    stop = threading.Event()
    display = Display(enabled=not args.no_progress and not args.json)

    def body() -> int:
        with (
            opt.make_client(args, pool_size=args.workers + 2, stop=stop) as client,
            Destination(args.to) as destination,
        ):
            restorer = Restorer(
                client, destination, prefix, display, workers=args.workers, stop=stop
            )
            try:
                with display:
                    restorer.run(client.pages("/files", params))
            except (KeyboardInterrupt, Cancelled):
                _report(restorer.totals, args.json, "Interrupted; partial downloads are kept")
                return opt.EXIT_INTERRUPTED
            if restorer.seen == 0:
                opt.fail(f"nothing is recorded under {safe(prefix)} on {safe(args.hostname)}")
                return opt.EXIT_ERRORS
            _report(restorer.totals, args.json)
            return opt.EXIT_ERRORS if restorer.totals.errors else opt.EXIT_OK

    try:
        return opt.run(body)
    except OSError as exc:  # the destination itself cannot be made or opened
        opt.fail(f"cannot use {safe(args.to)}: {exc.strerror or exc}")
        return opt.EXIT_ERRORS


def _report(totals: Totals, as_json: bool, title: str = "Summary") -> None:
    if as_json:
        print_json(totals.as_dict())
        return
    print(f"{title}:")
    for name, label in Totals.LABELS.items():
        print(f"  {label + ':':<40} {getattr(totals, name):>12,}")
    sys.stdout.flush()
