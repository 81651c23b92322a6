"""Counting what a run did, and showing it: a rich progress bar and a final summary."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import TYPE_CHECKING, Self

from putplace.display import safe

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

# rich is imported when a bar or a message is first shown, not at start-up: it was 28 ms
# of the client's 150-190 ms of imports (``-X importtime``), paid before by every run, even
# one without a terminal (cron) that shows nothing but its summary.


@dataclass
class Summary:
    """What a run did. Updated from several threads through :meth:`add`."""

    files_seen: int = 0
    metadata_sent: int = 0
    unchanged: int = 0
    content_uploaded: int = 0
    bytes_uploaded: int = 0
    already_on_server: int = 0
    skipped: int = 0
    deleted_on_server: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def lines(self) -> list[tuple[str, int]]:
        labels = {
            "files_seen": "Files seen",
            "metadata_sent": "New metadata sent",
            "unchanged": "Unchanged since last run (not re-sent)",
            "content_uploaded": "Content uploaded (files)",
            "bytes_uploaded": "Bytes uploaded",
            "already_on_server": "Content already on server",
            "skipped": "Skipped (sockets, FIFOs, devices)",
            "deleted_on_server": "Gone since last run (marked deleted)",
            "errors": "Errors",
        }
        return [(labels[f.name], getattr(self, f.name)) for f in fields(self) if f.name in labels]


class TransferBars:
    """Two bars on stderr, files and bytes (shown on a terminal only), and a console
    whose messages never garble them; a context manager that starts and stops them."""

    def __init__(self, *, enabled: bool, files_total: int | None, bytes_label: str) -> None:
        self._console: Console | None = None
        self._console_lock = threading.Lock()
        self._progress: Progress | None = None
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._files = self._progress.add_task("Files", total=files_total)
            self._bytes = self._progress.add_task(bytes_label, total=0)

    @property
    def console(self) -> Console:
        """Messages on stderr, printed above the bars while they show; one console for
        every thread (made on first use, under a lock)."""
        with self._console_lock:
            if self._console is None:
                from rich.console import Console

                self._console = Console(stderr=True, highlight=False)
            return self._console

    def __enter__(self) -> Self:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress:
            self._progress.stop()


class Reporter(TransferBars):
    """What a run shows: progress, and messages about files."""

    def __init__(self, summary: Summary, *, enabled: bool, verbose: bool) -> None:
        super().__init__(enabled=enabled, files_total=None, bytes_label="Upload")
        self.summary = summary
        self.verbose = verbose

    def file_done(self, count: int = 1) -> None:
        if self._progress:
            self._progress.advance(self._files, count)

    def upload_queued(self, size: int) -> None:
        if self._progress:
            task = self._progress.tasks[self._bytes]
            self._progress.update(self._bytes, total=(task.total or 0) + size)

    def upload_progress(self, count: int) -> None:
        """Bytes handed to the connection (the bar only: the summary counts completed
        uploads, so bytes re-sent by a retry are not counted twice)."""
        if self._progress:
            self._progress.advance(self._bytes, count)

    def error(self, path: str, message: str) -> None:
        self.summary.add(errors=1)
        self._say("[red]error[/]", path, message)

    def warn(self, path: str, message: str) -> None:
        """Something a user should know about *path* that the run got over."""
        self._say("[yellow]warning[/]", path, message)

    def _say(self, label: str, path: str, message: str) -> None:
        from rich.markup import escape

        # Markup escaped for rich, then control characters for the terminal: the path and
        # the message (which may quote the server) name what others chose.
        shown = f"{escape(safe(path))}: {escape(safe(message))}"
        self.console.print(f"{label}: {shown}", soft_wrap=True)

    def skip(self, path: str, kind: str) -> None:
        self.summary.add(skipped=1)
        if self.verbose:
            self.console.print(f"skipped {kind}: {safe(path)}", markup=False, soft_wrap=True)

    def info(self, message: str) -> None:
        if self.verbose:
            self.console.print(message, markup=False, soft_wrap=True)

    def print_summary(self, title: str = "Summary") -> None:
        # Plain lines (fixed labels and numbers): no need to import rich for them.
        lines = [f"{title}:"]
        lines += [f"  {label + ':':<40} {value:>12,}" for label, value in self.summary.lines()]
        try:
            # Flushed now, as rich did: messages on stderr after it come after it.
            print("\n".join(lines), flush=True)
        except BrokenPipeError:
            # The reader went away (``ppclient ... | head``): exit 1 quietly, as rich did,
            # without Python's "Exception ignored" when it flushes stdout again at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
