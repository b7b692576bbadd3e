"""How mdist shows long work to a person: rich progress and tables on a terminal, plain lines otherwise.

The commands in `mdist.cli` decide what to show; this module decides how.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import click
from rich.markup import escape


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def byte_progress(description: str, *, quiet: bool = False):
    """A rich progress bar on stderr for long byte-counting work (hidden when quiet)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = stderr_console()
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )


def once(say: Callable[[str], None]) -> Callable[[str], None]:
    """`say`, but each distinct line only the first time: a command that reads one folder twice
    (digest reads the release, then re-encodes it for a GGUF) would otherwise say the same note twice."""
    said: set[str] = set()

    def say_once(line: str) -> None:
        if line not in said:
            said.add(line)
            say(line)

    return say_once


STATUS_STYLE = {"ok": "green", "mismatch": "bold red", "missing": "bold red", "refused": "bold red",
                 "unexpected": "yellow", "not checkable": "yellow", "derived": "cyan", "stale": "yellow"}


def print_verify_report(outcome: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    report = outcome["report"]
    if report["manifest"] is None:
        console.print("[bold red]NOT verified[/bold red]: no known release matches this folder's file names, "
                      "sizes and published content; use --manifest")
        if report.get("closest"):
            shown = "; ".join(report["differences"][:5]) or "no single file differs"
            console.print(f"closest: {escape(report['closest'])}; {escape(shown)}")
        for line in outcome.get("notes", []):
            console.print(escape(line))
        return
    how = "recognised as" if report["identified"] else "checked against"
    console.print(f"{how} [bold]{escape(report['manifest'])}[/bold]")
    table = Table("file", "status", "detail")
    for row in report["files"]:
        style = STATUS_STYLE.get(row["status"], "")
        detail = row["detail"]
        if row["status"] == "mismatch" and row["expected"]:
            detail += f"\n  expected {row['expected']}\n  actual   {row['actual']}"
        table.add_row(escape(printable(row["path"])), f"[{style}]{row['status']}[/{style}]", escape(detail))
    console.print(table)
    for line in outcome.get("notes", []):
        console.print(escape(line))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.get("counts", {}).items()))
    if not outcome["ok"]:
        verdict = "[bold red]NOT verified[/bold red]"
    elif report.get("fully_checked", True):
        verdict = "[green]verified[/green]"
    else:  # nothing failed, but the publisher gave no value to check some files against
        verdict = (f"[yellow]verified only in part[/yellow]: {', '.join(escape(p) for p in report['not_checked'])} "
                   f"could not be checked (nothing published to compare with)")
    console.print(f"{verdict} ({escape(counts)})" if counts else verdict)


def printable(text: str) -> str:
    """A file name as it can be shown: control characters and lone surrogates escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.encode("utf-8", "surrogateescape")
                   .decode("utf-8", "backslashreplace"))


class TransferReporter:
    """Progress for long transfers: a rich bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, \
            TransferSpeedColumn

        self.console = stderr_console()
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TextColumn("{task.fields[peers]}"), TimeRemainingColumn(),
                            console=self.console, disable=not self.live, transient=False)
        self.task = None
        self.last_line = 0.0

    def __enter__(self) -> "TransferReporter":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, p) -> None:
        swarm = f"{p.peers} {'peer' if p.peers == 1 else 'peers'}" if p.source == "bittorrent" else p.source
        if self.task is None:
            self.task = self.bar.add_task(p.name or "metadata", total=p.total or None, peers=swarm)
        self.bar.update(self.task, description=escape(f"{p.name or 'metadata'} [{p.state}]"), total=p.total or None,
                        completed=p.done, peers=swarm)
        now = time.monotonic()
        if not self.live and not self.quiet and now - self.last_line >= 5:
            self.last_line = now
            percent = f"{100 * p.done / p.total:.1f}%" if p.total else "?"
            checks = f", {p.hash_failures} hash failures" if p.source == "bittorrent" else ""
            click.echo(f"{p.name or 'metadata'}: {p.state} {percent} of {p.total / 1e6:.1f} MB, "
                       f"{p.download_rate / 1e6:.1f} MB/s, {swarm}{checks}", err=True)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)  # stderr: --json stays clean


class RichDemoUI:
    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self.streaming = False

    def step(self, step) -> None:
        from rich.panel import Panel

        if self.streaming:
            self.console.print()
            self.streaming = False
        body = f"[green]✓[/green] {step.proves}\n[dim]{step.seconds:.2f}s[/dim]"
        self.console.print(Panel(body, title=f"[bold]{step.title}[/bold]", title_align="left", expand=False))

    def text(self, delta: str) -> None:
        if not self.streaming:
            self.console.print("[bold]generated:[/bold]")
            self.streaming = True
        sys.stdout.write(delta)
        sys.stdout.flush()

    def note(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
