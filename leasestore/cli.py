"""The ``leasestore`` command.

Every command finds the database by the library's rules (``--db``, then
``LEASESTORE_DATABASE_URL``, then ``ORCH_DB_PATH``, then the default file); an
empty ``--db`` (or variable) is refused, never read as "the default".
Errors print one line on stderr and exit non-zero; there are no tracebacks
unless ``LEASESTORE_DEBUG=1``.

Every command that prints a result takes ``--json`` (one JSON document on
stdout). Tables never cut ids, timestamps or owners (see
:mod:`leasestore.console`); long operations show progress on a terminal only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Optional

import typer
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

from . import errors
from .console import (Column, print_metrics, print_rows, progress, progress_console, quiet_console, stderr_console,
                      stdout_console)
from .metrics import DEFAULT_WINDOW_MINUTES, compute_metrics, record_alerts
from .states import DeadLetterStatus, ReleaseOutcome
from .settings import not_empty
from .store import DEFAULT_LEASE_TTL, LeaseStore
from .types import ClockStatus, LeaseRef, QueueSettings, RecoveryReport

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="A lease store for AI agents: claim, heartbeat, release, recover.")
dead_letters_app = typer.Typer(no_args_is_help=True, help="List, requeue or resolve dead letters.")
phase3_app = typer.Typer(no_args_is_help=True, help="Phase-3 contention and regression runs (locust).")
queue_app = typer.Typer(no_args_is_help=True, help="Show or change a queue's stored settings.")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(queue_app, name="queue")
app.add_typer(phase3_app, name="phase3")

# Remade by main() for every invocation, so COLUMNS and the terminal are read then.
out = stdout_console()
err = stderr_console()

DbOption = Annotated[Optional[str], typer.Option("--db", help="SQLite path or SQLAlchemy URL (overrides LEASESTORE_DATABASE_URL and ORCH_DB_PATH).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output (one document on stdout).")]


class Scenario(str, Enum):
    """The phase-3 scenarios (``loadtest.names.SCENARIOS``)."""

    DRAIN = "drain"
    HOT = "hot"
    STALL = "stall"


class _State:
    db: str | None = None


state = _State()


@app.callback()
def _root(db: DbOption = None) -> None:
    state.db = db


def _db(db: str | None) -> str | None:
    """The command's ``--db``, else the one before the command; ``--db ''`` (a
    script's unset variable) is refused rather than read as "the default"."""
    value = db if db is not None else state.db
    if value is not None:
        not_empty(value, "--db is empty")
    return value


def _open(db: str | None, *, create: bool = False) -> LeaseStore:
    return LeaseStore(_db(db), init=create)


def _parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InvalidArgument(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise errors.InvalidArgument(f"{what} is nested too deeply") from None


def _emit_json(value: Any) -> None:
    # Plain print: rich would wrap long lines and break machine readers.
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _ts(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


@app.command("init-db")
def init_db(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Create or upgrade the schema (safe to run again)."""
    with _open(db, create=True) as store:
        version = store.init_db()
        url = store.url.render_as_string(hide_password=True)
    if as_json:
        _emit_json({"schema_version": version, "url": url})
    else:
        out.print(f"schema version {version} ready at {url}", markup=False)


@app.command()
def enqueue(
    queue: str,
    payload: Annotated[Optional[str], typer.Option(help="Task payload as JSON.")] = None,
    task_id: Annotated[Optional[str], typer.Option("--id", help="Task id (default: random).")] = None,
    dedupe_key: Annotated[Optional[str], typer.Option(help="A second enqueue with this key returns the first task.")] = None,
    max_attempts: Annotated[Optional[int], typer.Option(help="Attempts before the task is dead-lettered (default: the queue's setting, else 3).")] = None,
    delay: Annotated[float, typer.Option(help="Seconds before the task becomes available.")] = 0.0,
    priority: Annotated[int, typer.Option(help="Higher priorities are claimed first, then the oldest.")] = 0,
    lock_delay: Annotated[Optional[float], typer.Option(help="Seconds after an unreleased lease's expiry before another owner may lease the task (default: the queue's setting, else 0).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a task to a queue."""
    value = _parse_json(payload, "payload")
    with _open(db) as store:
        result = store.enqueue(queue, value, task_id=task_id, dedupe_key=dedupe_key,
                               max_attempts=max_attempts, delay=delay, priority=priority, lock_delay=lock_delay)
    if as_json:
        _emit_json({"task_id": result.task_id, "created": result.created})
    else:
        out.print(f"{'enqueued' if result.created else 'exists'} {result.task_id}", markup=False)


@app.command()
def claim(
    queue: Annotated[Optional[str], typer.Argument(help="Queue to take the next task from.")] = None,
    owner: Annotated[str, typer.Option(help="Who claims (an agent identity).")] = "",
    task_id: Annotated[Optional[str], typer.Option("--task-id", help="Claim this task instead of the next one.")] = None,
    ttl: Annotated[Optional[float], typer.Option(help=f"Lease time to live, seconds (default: the queue's setting, else {DEFAULT_LEASE_TTL:g}).")] = None,
    additional: Annotated[bool, typer.Option(help="Take another task even if the owner holds one.")] = False,
    wait: Annotated[Optional[float], typer.Option(help="Wait up to this many seconds for a task to arrive.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lease a task. Prints the secret lease token needed to heartbeat or release.

    Exit code 0 when leased or resumed, 3 when busy, 4 when there is no task,
    5 when held back by a lock-delay (the output says until when).
    """
    with _open(db) as store:
        result = store.claim_task(queue, owner, task_id=task_id, ttl=ttl, additional=additional, wait=wait)
    lease = result.lease
    data: dict[str, Any] = {"status": result.status.value, "task_id": result.task_id}
    if lease is not None:
        data.update(task_id=lease.task_id, queue=lease.queue, owner=lease.owner, token=lease.token,
                    fencing_token=lease.fencing_token, expires_at=lease.expires_at,
                    attempt=lease.attempt, max_attempts=lease.max_attempts, payload=lease.payload,
                    checkpoint=lease.checkpoint, took_over=lease.took_over)
    elif result.holder is not None:
        data["holder"] = result.holder
    if result.held_until is not None:
        data["held_until"] = result.held_until
    if as_json:
        _emit_json(data)
    elif lease is not None:
        out.print(f"{result.status.value} {lease.task_id} fence={lease.fencing_token} attempt={lease.attempt}/{lease.max_attempts} expires={_ts(lease.expires_at)}", markup=False)
        out.print(f"token={lease.token}", markup=False)
        if lease.checkpoint is not None:
            out.print(f"checkpoint={json.dumps(lease.checkpoint)}", markup=False)
    elif result.held_until is not None:
        out.print(" ".join(filter(None, (result.status.value, result.task_id, "until", _ts(result.held_until)))),
                  markup=False)
    else:
        out.print(result.status.value + (f" (held by {result.holder})" if result.holder else ""), markup=False)
    if result.lease is None:
        raise typer.Exit(3 if result.busy else 5 if result.lock_delayed else 4)


TokenOption = Annotated[str, typer.Option(help="The lease token printed by claim.")]
FenceOption = Annotated[int, typer.Option("--fence", help="The fencing token printed by claim.")]


@app.command()
def heartbeat(
    task_id: str,
    token: TokenOption,
    fence: FenceOption,
    ttl: Annotated[float, typer.Option(help="New time to live, seconds.")] = DEFAULT_LEASE_TTL,
    checkpoint: Annotated[Optional[str], typer.Option(help="Progress to store, as JSON.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Extend a lease (and store a checkpoint)."""
    kwargs: dict[str, Any] = {}
    if checkpoint is not None:
        kwargs["checkpoint"] = _parse_json(checkpoint, "checkpoint")
    with _open(db) as store:
        result = store.heartbeat(LeaseRef(task_id, token, fence), ttl=ttl, **kwargs)
    if as_json:
        _emit_json({"task_id": result.task_id, "fencing_token": result.fencing_token, "expires_at": result.expires_at})
    else:
        out.print(f"extended {result.task_id} until {_ts(result.expires_at)}", markup=False)


@app.command()
def release(
    task_id: str,
    token: TokenOption,
    fence: FenceOption,
    outcome: Annotated[ReleaseOutcome, typer.Option(help="How the work ended.", case_sensitive=False)] = ReleaseOutcome.DONE,
    error: Annotated[Optional[str], typer.Option(help="Why it failed.")] = None,
    result: Annotated[Optional[str], typer.Option(help="A done task's result, as JSON (kept with the task).")] = None,
    retry_in: Annotated[Optional[float], typer.Option(help="Seconds before a retry (default: backoff policy).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Release a lease as done or failed."""
    with _open(db) as store:
        released = store.release_task(LeaseRef(task_id, token, fence), ReleaseOutcome(outcome), error,
                                      retry_in=retry_in, result=_parse_json(result, "result"))
    if as_json:
        _emit_json({"task_id": released.task_id, "result": released.result.value, "attempt": released.attempt,
                    "next_attempt_at": released.next_attempt_at, "dead_letter_id": released.dead_letter_id})
    else:
        out.print(f"{released.result.value} {released.task_id} (attempt {released.attempt})", markup=False)


@app.command()
def recover(
    batch_size: Annotated[int, typer.Option(help="Leases per transaction.")] = 100,
    max_batches: Annotated[int, typer.Option(help="Stop after this many batches (run again for the rest).")] = 10_000,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Return expired leases to pending (dead-letter them at their retry limit).

    On a terminal, shows how far the sweep is while it runs.
    """
    if isinstance(max_batches, bool) or not 1 <= max_batches <= 1_000_000:
        raise errors.InvalidArgument("max batches must be an integer from 1 to 1000000")
    totals = RecoveryReport()
    batches = 0
    more, why = False, ""
    with _open(db) as store, progress(progress_console(), SpinnerColumn(), TextColumn("{task.description}"),
                                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn()) as bar:
        shown = bar.add_task("recovering expired leases", total=None, detail="")
        while True:
            report = store.recover_stale(batch_size=batch_size, max_batches=1)
            totals, batches = totals + report, batches + 1
            bar.update(shown, detail=f"batch {batches}: scanned {totals.scanned}, recovered {totals.recovered}, "
                                     f"dead-lettered {totals.dead_lettered}, failed {totals.failed}")
            if report.scanned < batch_size:
                break
            if batches >= max_batches:
                more, why = True, f"stopped after {batches} batches of {batch_size}"
                break
            if not report.recovered and not report.dead_lettered:
                # A full batch that changed nothing (rows failed, or other sweepers
                # took them): the same rows would come back; leave them for later.
                more, why = True, f"batch {batches} changed none of its {report.scanned} leases"
                break
    data: dict[str, Any] = {"scanned": totals.scanned, "recovered": totals.recovered,
                            "dead_lettered": totals.dead_lettered, "skipped": totals.skipped,
                            "failed": totals.failed, "failure_ratio": totals.failure_ratio,
                            "batches": batches, "more_left": more, "stopped_because": why or None}
    if as_json:
        _emit_json(data)
        return
    out.print(" ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in data.items()
                       if k not in ("batches", "more_left", "stopped_because")), markup=False)
    if more:
        out.print(f"{why}: expired leases may be left; run again (or raise --max-batches)", markup=False)


@app.command()
def revoke(
    task_id: str,
    reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "revoked by operator",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """End a task's lease now; the task goes back to pending."""
    with _open(db) as store:
        store.revoke_lease(task_id, reason=reason)
    if as_json:
        _emit_json({"task_id": task_id, "revoked": True, "reason": reason})
    else:
        out.print(f"revoked {task_id}", markup=False)


@app.command()
def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Tasks by queue and status, and the active leases with their ages."""
    with _open(db) as store:
        summary = store.status_summary()
    if as_json:
        _emit_json(summary)
        return
    print_rows(out, "tasks", [Column("queue"), Column("status"), Column("count", justify="right")],
               [[row["queue"], row["status"], str(row["count"])] for row in summary["counts"]])
    print_rows(out, "active leases",
               [Column("task"), Column("queue"), Column("owner"), Column("fence", justify="right"),
                Column("attempt", justify="right"), Column("age s", justify="right"),
                Column("expires in s", justify="right")],
               [[lease["task_id"], lease["queue"], lease["owner"], str(lease["fencing_token"]), str(lease["attempt"]),
                 f"{lease['age_seconds']:.1f}", f"{lease['expires_in_seconds']:.1f}"] for lease in summary["leases"]])
    if summary["queue_settings"]:
        _print_settings(summary["queue_settings"])


_SETTINGS_COLUMNS = ("lock_delay", "lease_ttl", "max_attempts", "retry_base", "retry_cap")


def _settings_data(settings: QueueSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def _print_settings(rows: list[dict[str, Any]]) -> None:
    # "-" is the store's default, so an operator sees which values are the queue's own.
    print_rows(out, "queue settings",
               [Column("queue")] + [Column(name.replace("_", " "), justify="right") for name in _SETTINGS_COLUMNS],
               [[row["queue"]] + ["-" if row[name] is None else f"{row[name]:g}" for name in _SETTINGS_COLUMNS]
                for row in rows])


def _setting(text: str, name: str) -> Any:
    """A ``queue set`` option's value; ``default`` clears the setting."""
    option = "--" + name.replace("_", "-")
    text = text.strip()
    if not text:
        raise errors.InvalidArgument(f"{option} is empty: give a value, or 'default' to clear the setting")
    if text == "default":
        return None
    try:
        return int(text) if name == "max_attempts" else float(text)
    except ValueError:
        kind = "a whole number" if name == "max_attempts" else "a number of seconds"
        raise errors.InvalidArgument(f"{option} must be {kind} or 'default', not {text!r}") from None


def SettingOption(help: str) -> Any:  # noqa: N802 - used like the other *Option annotations
    return typer.Option(help=help + " ('default' clears it).")


@queue_app.command("set")
def queue_set(
    queue: str,
    lock_delay: Annotated[Optional[str], SettingOption("Seconds after an unreleased lease's expiry before another owner may lease a task")] = None,
    lease_ttl: Annotated[Optional[str], SettingOption("TTL of claims that name none, seconds")] = None,
    max_attempts: Annotated[Optional[str], SettingOption("Attempts of new tasks before they are dead-lettered")] = None,
    retry_base: Annotated[Optional[str], SettingOption("First retry backoff, seconds")] = None,
    retry_cap: Annotated[Optional[str], SettingOption("Largest retry backoff, seconds")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a queue's settings; those not named are kept."""
    changes = {name: _setting(text, name) for name, text in (
        ("lock_delay", lock_delay), ("lease_ttl", lease_ttl), ("max_attempts", max_attempts),
        ("retry_base", retry_base), ("retry_cap", retry_cap)) if text is not None}
    with _open(db) as store:
        settings = store.set_queue_settings(queue, **changes)
    if as_json:
        _emit_json(_settings_data(settings))
    else:
        _print_settings([_settings_data(settings)])


@queue_app.command("show")
def queue_show(
    queue: Annotated[Optional[str], typer.Argument(help="One queue (default: every queue with stored settings).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A queue's stored settings ("-" is the store's default)."""
    with _open(db) as store:
        found = [store.queue_settings(queue)] if queue is not None else store.list_queue_settings()
    rows = [_settings_data(s) for s in found]
    if as_json:
        _emit_json(rows[0] if queue is not None else rows)
    else:
        _print_settings(rows)


@app.command()
def events(
    task_id: Annotated[Optional[str], typer.Option("--task-id", help="Only this task.")] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest rows.")] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Tail the audit log (event_log)."""
    with _open(db) as store:
        rows = store.events(task_id=task_id, limit=limit)
    if as_json:
        _emit_json(rows)
        return
    columns = [Column("id", justify="right"), Column("time"), Column("task"), Column("queue"), Column("kind"),
               Column("from"), Column("to"), Column("owner"), Column("fence", justify="right"),
               Column("attempt", justify="right"), Column("reason", whole=False)]
    print_rows(out, "event_log", columns, [
        [str(r["id"]), _ts(r["ts"]), r["task_id"], r["queue"], r["kind"], r["from_status"] or "-",
         r["to_status"] or "-", r["owner"] or "-", str(r["fencing_token"] or "-"),
         str(r["attempt"] if r["attempt"] is not None else "-"), r["reason"] or "-"]
        for r in rows])


@dead_letters_app.command("list")
def dead_letters_list(
    status_: Annotated[DeadLetterStatus, typer.Option("--status", help="Which dead letters.", case_sensitive=False)] = DeadLetterStatus.OPEN,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List dead letters."""
    which = DeadLetterStatus(status_)
    with _open(db) as store:
        rows = store.list_dead_letters(status=which, limit=limit)
    if as_json:
        _emit_json([r.__dict__ for r in rows])
        return
    columns = [Column("id", justify="right"), Column("task"), Column("queue"), Column("reason"),
               Column("attempts", justify="right"), Column("created"), Column("last error", whole=False)]
    print_rows(out, f"dead letters ({which.value})", columns, [
        [str(r.id), r.task_id, r.queue, r.reason, str(r.attempts), _ts(r.created_at), r.last_error or "-"]
        for r in rows])


@dead_letters_app.command("requeue")
def dead_letters_requeue(dead_letter_id: int, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Put one dead-lettered task back to pending with fresh attempts."""
    with _open(db) as store:
        task_id = store.requeue_dead_letter(dead_letter_id)
    if as_json:
        _emit_json({"dead_letter_id": dead_letter_id, "task_id": task_id, "status": "requeued"})
    else:
        out.print(f"requeued {task_id}", markup=False)


@dead_letters_app.command("resolve")
def dead_letters_resolve(
    dead_letter_id: int,
    note: Annotated[Optional[str], typer.Option(help="Why it is closed.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Close a dead letter without running its task again."""
    with _open(db) as store:
        task_id = store.resolve_dead_letter(dead_letter_id, note)
    if as_json:
        _emit_json({"dead_letter_id": dead_letter_id, "task_id": task_id, "status": "resolved", "note": note})
    else:
        out.print(f"resolved dead letter {dead_letter_id} (task {task_id})", markup=False)


@app.command()
def metrics(
    window: Annotated[float, typer.Argument(help="Window in minutes.")] = DEFAULT_WINDOW_MINUTES,
    record: Annotated[bool, typer.Option(help="Record breaches in the alerts table.")] = True,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The seven health metrics, their thresholds and alert state.

    Ends with METRICS_ALERT=1 when any metric is at or above its threshold.
    """
    with _open(db) as store:
        report = compute_metrics(store, window)
        if record:
            try:
                record_alerts(store, report)
            except errors.StoreReadOnly as exc:
                # Reading the metrics is what was asked; say why no alerts rows were kept.
                err.print(f"note: alerts not recorded: {exc}", markup=False)
    if as_json:
        _emit_json(report.as_dict())
    else:
        print_metrics(out, report)


ONE_CLOCK = "PostgreSQL: one server clock"


def _clock_data(backend: str, status: ClockStatus) -> dict[str, Any]:
    one_clock = status.store_time is None
    return {"backend": backend, "now": status.now, "store_time": status.store_time,
            "clock": ONE_CLOCK if one_clock else "SQLite: each process writes with its own clock",
            "tolerance_seconds": None if one_clock else status.tolerance, "behind_seconds": status.behind,
            "refused": status.refused}


@app.command()
def clock(
    reset: Annotated[bool, typer.Option("--reset", help="Set the store's time to this process's clock (after a clock that ran ahead was fixed).")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """This process's clock, the store's time, and whether writes are refused.

    SQLite has no server clock: every process writes with its own, and the store
    keeps the latest one used (the store's time). A process whose clock is
    behind it by more than the tolerance has its writes refused (ClockBehind).
    PostgreSQL has one server clock, so there is nothing to compare or reset.
    """
    with _open(db) as store:
        backend = store.backend
        before = store.clock_status()
        after: ClockStatus | None = None
        if reset and before.store_time is not None:
            before = store.reset_clock()  # the status just before the reset, read in its transaction
            after = store.clock_status()
    one_clock = before.store_time is None
    if as_json:
        data = _clock_data(backend, before)
        if reset:
            data = {"reset": after is not None, "before": data,
                    "after": _clock_data(backend, after) if after is not None else None}
        _emit_json(data)
        return
    if one_clock:
        out.print(f"{ONE_CLOCK}: {_ts(before.now)}", markup=False)
        out.print("every write uses the server's clock, so no client clock is compared and writes are never "
                  "refused for it", markup=False)
        if reset:
            out.print(f"nothing to reset ({ONE_CLOCK})", markup=False)
        return
    _print_clock(before, "before the reset" if reset else None, advise=not reset)
    if after is not None:
        out.print(f"reset: the store's time was {_ts(before.store_time)}, it is now this process's clock "
                  f"{_ts(after.store_time)}", markup=False)
        _print_clock(after, "after the reset", advise=True)


def _print_clock(status: ClockStatus, heading: str | None, *, advise: bool) -> None:
    if heading:
        out.print(f"{heading}:", markup=False)
    tolerance = "off" if status.tolerance is None else f"{status.tolerance:g} s"
    out.print(f"this process's clock  {_ts(status.now)}", markup=False)
    out.print(f"store's time          {_ts(status.store_time)}  (the latest clock any writer used)", markup=False)
    ahead = (status.now - status.store_time) if status.store_time is not None else 0.0
    relation = f"behind by {status.behind:.3f} s" if status.behind > 0 else f"ahead by {ahead:.3f} s"
    out.print(f"this clock is         {relation} (tolerance {tolerance})", markup=False)
    if status.refused:
        out.print("writes                REFUSED (ClockBehind): this process's clock is behind the store's time"
                  + ("; if a clock that ran ahead was fixed, run `leasestore clock --reset`" if advise else ""),
                  markup=False)
    else:
        out.print("writes                accepted", markup=False)


@app.command()
def exporter(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="Port to listen on.", min=0, max=65535)] = None,
    window: Annotated[float, typer.Option(help="Metrics window, minutes.")] = DEFAULT_WINDOW_MINUTES,
    web_config_file: Annotated[Optional[str], typer.Option(
        "--web.config.file", "--web-config-file",
        help="Prometheus exporter web config (YAML: tls_server_config, basic_auth_users with bcrypt hashes); "
             "re-read on change and on SIGHUP; excludes the four shorthand flags.")] = None,
    tls_cert: Annotated[Optional[str], typer.Option(help="Shorthand: PEM certificate, serve HTTPS.")] = None,
    tls_key: Annotated[Optional[str], typer.Option(help="Shorthand: PEM private key of --tls-cert.")] = None,
    basic_auth_user: Annotated[Optional[str], typer.Option(
        help="Shorthand: require this user; password from $LEASESTORE_EXPORTER_PASSWORD or --basic-auth-password-file.")] = None,
    basic_auth_password_file: Annotated[Optional[str], typer.Option(help="File holding the password.")] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback bind without TLS and auth.")] = False,
    db: DbOption = None,
) -> None:
    """Serve the metrics for Prometheus (reads the database at scrape time)."""
    from exporter import server

    raise typer.Exit(server.main(exporter_argv(
        host=host, port=port, window=window, web_config_file=web_config_file, tls_cert=tls_cert, tls_key=tls_key,
        basic_auth_user=basic_auth_user, basic_auth_password_file=basic_auth_password_file, insecure=insecure,
        db=_db(db))) or 0)


def exporter_argv(*, host: str, port: int | None, window: float, web_config_file: str | None, tls_cert: str | None,
                  tls_key: str | None, basic_auth_user: str | None, basic_auth_password_file: str | None,
                  insecure: bool, db: str | None) -> list[str]:
    """The arguments ``exporter/server.py`` is given for ``leasestore exporter``."""
    argv = ["--host", host, "--window", str(window)]
    options = {"--port": port, "--db": db, "--web.config.file": web_config_file, "--tls-cert": tls_cert,
               "--tls-key": tls_key, "--basic-auth-user": basic_auth_user,
               "--basic-auth-password-file": basic_auth_password_file}
    for flag, value in options.items():
        if value is not None:
            argv += [f"{flag}={value}"]
    if insecure:
        argv.append("--insecure")
    return argv


@app.command()
def demo(
    workers: Annotated[int, typer.Option(help="Agent processes.")] = 3,
    tasks: Annotated[int, typer.Option(help="Tasks to work through.")] = 24,
    db: Annotated[Optional[str], typer.Option("--db", help="Store to use (default: a fresh file in a temporary folder).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Watch the store work: agents drain a queue, one is killed mid-task, its task is recovered."""
    from .demo import run_demo

    result = run_demo(workers=workers, tasks=tasks, db=_db(db), console=quiet_console() if as_json else out,
                      live=progress_console())
    if as_json:
        _emit_json(result.as_dict())
    raise typer.Exit(0 if result.ok else 1)


def _phase3_common(workers: int, tasks: int, iterations: int, fail_rate: float, ttl: float,
                   report_dir: str, max_seconds: float, db: str | None, as_json: bool) -> dict[str, Any]:
    return {"workers": workers, "tasks": tasks, "iterations": iterations, "fail_rate": fail_rate,
            "ttl": ttl, "report_dir": report_dir, "max_seconds": max_seconds, "db_url": _db(db),
            "console": quiet_console() if as_json else out, "live": progress_console()}


WorkersOption = Annotated[int, typer.Option(help="Agent processes (one locust user each).")]
TasksOption = Annotated[int, typer.Option(help="Tasks enqueued for the run.")]
IterationsOption = Annotated[int, typer.Option(help="Claim attempts per agent.")]
TtlOption = Annotated[float, typer.Option(help="Lease TTL, seconds.")]
MaxSecondsOption = Annotated[float, typer.Option("--max-seconds", "--maxSeconds", help="Locust's --run-time bound, seconds.")]
Phase3DbOption = Annotated[Optional[str], typer.Option("--db", help="SQLite path or SQLAlchemy URL (default: a fresh SQLite file in the report folder).")]


@phase3_app.command("concurrency")
def phase3_concurrency(
    workers: WorkersOption = 4,
    tasks: TasksOption = 200,
    iterations: IterationsOption = 25,
    fail_rate: Annotated[float, typer.Option("--fail-rate", "--failRate", help="Probability an agent fails its task.")] = 0.1,
    ttl: TtlOption = 5.0,
    scenario: Annotated[Scenario, typer.Option(help="drain: one queue; hot: a few hot task ids; stall: agents stop heartbeating.", case_sensitive=False)] = Scenario.DRAIN,
    heartbeats: Annotated[int, typer.Option(help="Heartbeats per held task.")] = 1,
    work_ms: Annotated[Optional[float], typer.Option("--work-ms", "--workMs", help="Simulated work before each heartbeat and the release, ms (default: 5 for hot, else 0).")] = None,
    hot_tasks: Annotated[int, typer.Option("--hot-tasks", "--hotTasks", help="hot: how many task ids the agents fight over.")] = 4,
    stall_rate: Annotated[float, typer.Option("--stall-rate", "--stallRate", help="stall: probability an agent stops heartbeating mid-task.")] = 0.2,
    report_dir: Annotated[str, typer.Option("--report-dir", "--reportDir", help="Where locust's CSV/HTML go.")] = "out/phase3-concurrency",
    max_seconds: MaxSecondsOption = 300.0,
    db: Phase3DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Many agents drain one queue; reports contention, latency, metrics and invariants.

    Exit code 0 when the verdict is PASS, 1 when it is FAIL.
    """
    from loadtest import phase3

    result = phase3.run_concurrency(scenario=Scenario(scenario).value, heartbeats=heartbeats, work_ms=work_ms,
                                    hot_tasks=hot_tasks, stall_rate=stall_rate, **_phase3_common(
        workers, tasks, iterations, fail_rate, ttl, report_dir, max_seconds, db, as_json))
    if as_json:
        _emit_json(result.as_dict())
    raise typer.Exit(0 if result.ok else 1)


@phase3_app.command("regression")
def phase3_regression(
    rounds: Annotated[int, typer.Option(help="Runs to compare.")] = 3,
    workers: WorkersOption = 3,
    tasks: TasksOption = 120,
    iterations: IterationsOption = 60,
    fail_rate: Annotated[float, typer.Option("--fail-rate", "--failRate", help="Probability an agent fails its task.")] = 0.08,
    ttl: TtlOption = 5.0,
    tolerance: Annotated[float, typer.Option(help="A round fails when its throughput or claim/release p95 is more than (1 + tolerance) times worse than round 1's.")] = 1.0,
    report_dir: Annotated[str, typer.Option("--report-dir", "--reportDir", help="Where locust's CSV/HTML go.")] = "out/phase3-regression",
    max_seconds: MaxSecondsOption = 300.0,
    db: Phase3DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Repeated rounds; fails when throughput or p95 latency worsens beyond tolerance.

    Exit code 0 when every round passes and nothing regressed, 1 on a failed
    round or a regression, 5 when the rounds were too short to compare.
    """
    from loadtest import phase3

    result = phase3.run_regression(rounds=rounds, tolerance=tolerance, **_phase3_common(
        workers, tasks, iterations, fail_rate, ttl, report_dir, max_seconds, db, as_json))
    if as_json:
        _emit_json(result.as_dict())
    raise typer.Exit(result.exit_code)


def _usage_message(exc: Exception) -> str:
    message = str(exc.format_message())  # type: ignore[attr-defined]
    # typer's enum conversion says "Value error, 'x' is not one of ..."
    return " ".join(message.replace("Value error, ", "").split())


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, never a traceback."""
    global out, err
    out, err = stdout_console(), stderr_console()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode click returns the code of typer.Exit.
        code = app(args=args, prog_name="leasestore", standalone_mode=False)
    except errors.LeaseStoreError as exc:
        err.print(f"error: {_one_line(str(exc))}", markup=False)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted", markup=False)
        return 130
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for users; LEASESTORE_DEBUG=1 shows it
        if _is_usage_error(exc):
            message = _usage_message(exc)
            if message:  # empty when click already printed the help
                err.print(f"error: {message}", markup=False)
            return int(getattr(exc, "exit_code", 2))
        if os.environ.get("LEASESTORE_DEBUG") == "1":
            raise
        err.print(f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))}", markup=False)
        return 1
    return code if isinstance(code, int) else 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _is_usage_error(exc: Exception) -> bool:
    # typer may bring its own copy of click, so match click's exception by shape.
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
