"""Terminal rendering shared by the CLI and the demo (rich).

* Tables never cut an id, a timestamp or an owner: columns marked ``whole`` are
  as wide as their longest value and never fold. When the whole columns do not
  fit the terminal, each row is printed as a block of ``name value`` pairs
  (``name: value``) packed onto lines instead, never splitting a value, so it can be copied.
* Data is printed as :class:`rich.text.Text`, never read as rich markup.
* Progress is shown only when stdout and stderr are interactive terminals, on
  stderr, and erased when done; piped output stays free of it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .metrics import MetricsReport

Cell = Union[str, Text]

# A column that may wrap (free text) keeps at least this many cells.
MIN_WRAP_WIDTH = 16


def stdout_console() -> Console:
    """The console for results; reads ``COLUMNS`` and the terminal when made."""
    return Console(highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def quiet_console() -> Console:
    """A console that keeps what it is given to itself (``--json`` runs)."""
    return Console(file=io.StringIO(), highlight=False, soft_wrap=True, width=200)


def interactive() -> bool:
    """Whether progress may be shown: stdout and stderr are both interactive
    terminals (rich's rules: a TTY, not ``TERM=dumb``; ``TTY_INTERACTIVE=0|1``
    overrides)."""
    return stdout_console().is_interactive and stderr_console().is_interactive


def progress_console() -> Console | None:
    """The console progress is drawn on (stderr), or None when piped."""
    return stderr_console() if interactive() else None


def progress(console: Console | None, *columns: ProgressColumn | str) -> Progress:
    """A transient progress display, disabled (prints nothing) without a console."""
    if not columns:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    return Progress(*columns, console=console or quiet_console(), transient=True, disable=console is None)


@dataclass(frozen=True)
class Column:
    """``whole``: ids, timestamps, owners, numbers; never cut or folded.
    Otherwise free text that may wrap when space is short."""

    name: str
    whole: bool = True
    justify: Literal["left", "right"] = "left"


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def _widths(columns: Sequence[Column], rows: Sequence[Sequence[Text]]) -> list[int]:
    widths = []
    for i, column in enumerate(columns):
        longest = max([cell_len(column.name)] + [max((cell_len(line) for line in row[i].plain.split("\n")), default=0)
                                                 for row in rows])
        widths.append(longest if column.whole else min(longest, max(MIN_WRAP_WIDTH, cell_len(column.name))))
    return widths


def table_width(widths: Sequence[int]) -> int:
    """Width of a rich table with edges, one cell of padding each side."""
    return sum(w + 2 for w in widths) + len(widths) + 1


def print_rows(console: Console, title: str, columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> None:
    """A table if its whole columns fit the console's width, else one block per row."""
    cells = [[_text(c) for c in row] for row in rows]
    widths = _widths(columns, cells)
    if not cells or table_width(widths) <= console.width:
        table = Table(title=title, box=box.HEAVY_HEAD, title_justify="left")
        for column, width in zip(columns, widths):
            if column.whole:
                table.add_column(column.name, justify=column.justify, no_wrap=True, min_width=width)
            else:
                table.add_column(column.name, justify=column.justify, overflow="fold")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    plural = "" if len(cells) == 1 else "s"
    console.print(Text(f"{title}: {len(cells)} row{plural}, one block each (a table would not fit in "
                       f"{console.width} columns)", style="italic"), soft_wrap=False)
    for row in cells:
        for line, may_wrap in pack_pairs([(c.name, value, c.whole) for c, value in zip(columns, row)],
                                         console.width):
            # Only free text longer than a line is wrapped by rich; an id never is.
            console.print(line, soft_wrap=not may_wrap)


def pack_pairs(pairs: Sequence[tuple[str, Text, bool]], width: int,
               indent: int = 2) -> list[tuple[Text, bool]]:
    """``name: value`` pairs packed onto lines of at most ``width`` cells; a pair
    is never split across lines by the packing (one longer than a line stands
    alone), later lines are indented. Each line comes with whether it may be
    wrapped: only a lone free-text pair longer than the line."""
    lines: list[tuple[Text, bool]] = []
    line, alone = Text(), True
    for name, value, whole in pairs:
        pair = Text(f"{name}:", style="dim") + Text(" ") + value
        if line.plain.strip() and cell_len(line.plain) + 2 + cell_len(pair.plain) > width:
            lines.append((line, alone))
            line = Text(" " * indent)
        if line.plain.strip():
            line, alone = line + Text("  ") + pair, False
        else:
            line, alone = line + pair, not whole
    if line.plain.strip():
        lines.append((line, alone))
    return [(text, may_wrap and cell_len(text.plain) > width) for text, may_wrap in lines]


def print_metrics(console: Console, report: MetricsReport, *, title: str | None = None) -> None:
    """The seven metrics with thresholds and state, then ``METRICS_ALERT=0|1``."""
    rows: list[list[Cell]] = [
        [v.definition.key, f"{v.value:g}", f"{v.threshold:g}",
         Text("ALERT", style="bold red") if v.alert else Text("ok")]
        for v in report.values
    ]
    print_rows(console, title or f"leasestore metrics, last {report.window_minutes:g} min",
               [Column("metric"), Column("value", justify="right"), Column("threshold", justify="right"),
                Column("state")], rows)
    console.print(f"METRICS_ALERT={int(report.alert)}", markup=False)
