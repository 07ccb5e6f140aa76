"""Progress output: a redrawn bar on a terminal, a few plain lines elsewhere."""

from __future__ import annotations

import io

from schemas.progress import PLAIN_INTERVAL_S, is_terminal, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_a_few_plain_lines() -> None:
    out = io.StringIO()
    assert not is_terminal(out)
    with progress_bar(total=10_000, desc="cases", unit="case", file=out, leave=False) as bar:
        for _ in range(10_000):
            bar.update()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # far fewer lines than updates (one per PLAIN_INTERVAL_S at most, plus the first and the last), and the last
    # one says how it ended, although the caller asked not to leave the bar
    assert 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith("cases: 100%") and "10000/10000" in lines[-1]
    assert PLAIN_INTERVAL_S >= 10


def test_a_terminal_gets_the_redrawn_bar() -> None:
    out = _Terminal()
    assert is_terminal(out)
    for _ in progress_bar(range(50), desc="cases", file=out, mininterval=0):
        pass
    assert out.getvalue().count("\r") > 10


def test_a_disabled_bar_writes_nothing() -> None:
    out = io.StringIO()
    for _ in progress_bar(range(100), file=out, disable=True):
        pass
    assert out.getvalue() == ""
