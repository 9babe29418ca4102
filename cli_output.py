"""How the ``attnmap`` commands report: results on stdout, progress and errors on stderr.

Every error is one line in one form, ``error: ...``: a failed input of a batch (the batch goes
on), a typed library error (exit code 1; a conflict of parameters is a usage error naming the
flags, exit code 2), click's own usage errors, and an unexpected exception (a bug: one line
saying how to see it). With ``attnmap --debug`` a typed error's traceback and the chain of
causes behind it come first, and a bug is re-raised. A closed stdout (``attnmap explain ...
--json | head -1``) ends the run without a word (exit code 1, as click has it).
"""

from __future__ import annotations

import sys
import traceback
import time
from typing import Any

import click

from attnmap.cli_options import debug, flag
from attnmap.runtime.core.errors import AttnmapError, OptionConflict, RunConflictError

__all__ = ["Command", "Group", "LineUsageError", "err", "fail", "out", "status"]


class StatusLine:
    """One line on stderr that rewrites itself (a progress bar); other output ends it first.

    Redrawn at most :attr:`interval` seconds apart: a video explained at hundreds of frames a
    second would otherwise write its bar hundreds of times a second, and a terminal that is not
    read (a paused one, a pty in a test) fills and blocks the run on a write. The last text
    given is always drawn before the line ends, so a finished bar shows its 100%.
    """

    interval = 0.1

    def __init__(self) -> None:
        self.open = False  # the line is on stderr without its newline yet
        self._shown = -float("inf")
        self._pending: str | None = None  # a text given too soon after the last one drawn

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self.open and now - self._shown < self.interval:
            self._pending = text
            return
        self._draw(text)
        self._shown = now

    def _draw(self, text: str) -> None:
        # \x1b[K clears what a longer previous line left on the right (stderr is a terminal here)
        click.echo(f"\r{text}\x1b[K", err=True, nl=False)
        self.open, self._pending = True, None

    def end(self) -> None:
        if self._pending is not None:
            self._draw(self._pending)
        if self.open:
            click.echo("", err=True)
            self.open = False


status = StatusLine()


def out(msg: str) -> None:
    status.end()
    click.echo(msg)


def err(msg: str) -> None:
    status.end()
    click.echo(msg, err=True)


def fail(source: str, reason: str) -> None:
    """One failed input of a batch: one line, the batch goes on."""
    err(f"error: {source}: {reason}" if source not in reason else f"error: {reason}")


class LineUsageError(click.ClickException):
    """A bad value as one line with its suggestion (click's UsageError adds two lines of usage); exit 2."""

    exit_code = 2


class Command(click.Command):
    """A command whose library errors are one-line click errors, never a traceback.

    A typed error is exit code 1 (a conflict of parameters exit 2, naming the flags); with
    ``--debug`` its traceback and the chain of causes behind it are printed first. An
    unexpected exception (a bug) is one line too, saying how to see it; ``--debug`` re-raises it.
    Ctrl-C or SIGTERM ends with one line on what was written and the shell's exit code for the
    signal (130, 143).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, BrokenPipeError):
            raise
        except AttnmapError as exc:
            if debug():
                traceback.print_exception(exc, file=sys.stderr)
            if isinstance(exc, OptionConflict):
                raise click.UsageError(exc.text(flag), ctx=ctx) from exc
            if isinstance(exc, RunConflictError):  # the way out, in flags
                raise click.ClickException(f"{exc.conflict}; add --overwrite to replace them, or choose another "
                                           "--out") from exc
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt as exc:
            status.end()
            summary = getattr(exc, "summary", "")
            click.echo(f"interrupted ({getattr(exc, 'signal_name', 'SIGINT')})" + (f": {summary}" if summary else ""),
                       err=True)
            raise click.exceptions.Exit(getattr(exc, "exit_code", 130)) from exc
        except Exception as exc:  # noqa: BLE001 - a bug: one line unless --debug
            if debug():
                raise
            raise click.ClickException(f"unexpected {type(exc).__name__}: {exc} (this is a bug in attnmap; "
                                       "run with `attnmap --debug ...` for the traceback)") from exc


class Group(click.Group):
    """The ``attnmap`` group: every error in one form (``error: ...``); a closed stdout (click
    stops quietly on EPIPE) ends the run without a word."""

    command_class = Command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            status.end()
            if type(exc).show not in (click.ClickException.show, click.UsageError.show):
                exc.show()  # click's own forms (a bare `attnmap` shows its help)
            else:
                ctx = getattr(exc, "ctx", None)
                if isinstance(exc, click.UsageError) and ctx is not None:
                    click.echo(f"{ctx.get_usage()}\nTry '{ctx.command_path} --help' for help.\n", err=True)
                click.echo(f"error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except click.exceptions.Abort:
            err("Aborted!")
            code = 1
        sys.exit(code if isinstance(code, int) else 0)
