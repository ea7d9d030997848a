"""The progress bar's lines: never run into what follows, never a carriage return off a tty."""

from __future__ import annotations

import io

import pytest

from edgecache.transfer.progress import Progress


def test_finish_on_a_terminal_shows_everything_read_and_ends_the_line() -> None:
    out = io.StringIO()
    with Progress("preload a.tar", 20480, out=out, tty=True, interval=0) as progress:
        progress.advance(11776)  # the entries; a tar's padding and end blocks are not read
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    last = text.rpartition("\r\x1b[K")[2]
    assert "[########################] 20.0 KiB of 20.0 KiB (100%)" in last


def test_an_error_ends_the_bar_line_and_silences_late_workers() -> None:
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress("p", 100, out=out, tty=True, interval=0) as p:
        p.advance(10)
        raise KeyboardInterrupt
    assert out.getvalue().endswith("\n")
    drawn = out.getvalue()
    p.advance(50)  # a spool thread still reading after the error
    p.finish()
    assert out.getvalue() == drawn


def test_off_a_terminal_no_carriage_return_and_no_stray_newline() -> None:
    out = io.StringIO()
    with pytest.raises(ValueError), Progress("p", 100, out=out, tty=False, interval=0) as p:
        p.advance(10)
        raise ValueError
    assert "\r" not in out.getvalue()
    assert out.getvalue() == "p: 10 B of 100 B (10%), " + out.getvalue().split(", ", 1)[1]
    assert out.getvalue().count("\n") == 1  # the one progress line, nothing added


def test_unknown_total_draws_no_empty_bar() -> None:
    out = io.StringIO()
    with Progress("preload stdin", 0, out=out, tty=True, interval=0) as progress:
        progress.advance(2048)
    assert "] " not in out.getvalue() and "\x1b[Kpreload stdin 2.0 KiB, " in out.getvalue()
