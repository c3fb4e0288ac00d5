"""The ``leasestore`` command.

Every command finds the database by the library's rules (``--db``, then
``LEASESTORE_DATABASE_URL``, then ``ORCH_DB_PATH``, then the default file); an
empty ``--db`` (or variable) is refused, never read as "the default".
Errors print one line on stderr and exit non-zero; there are no tracebacks
unless ``LEASESTORE_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import errors
from .metrics import DEFAULT_WINDOW_MINUTES, MetricsReport, compute_metrics, record_alerts
from .models import ReleaseOutcome
from .settings import not_empty
from .store import DEFAULT_LEASE_TTL, LeaseStore
from .types import LeaseRef

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="A lease store for AI agents: claim, heartbeat, release, recover.")
dead_letters_app = typer.Typer(no_args_is_help=True, help="List, requeue or resolve dead letters.")
phase3_app = typer.Typer(no_args_is_help=True, help="Phase-3 contention and regression runs (locust).")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(phase3_app, name="phase3")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DbOption = Annotated[Optional[str], typer.Option("--db", help="SQLite path or SQLAlchemy URL (overrides LEASESTORE_DATABASE_URL and ORCH_DB_PATH).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


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
def init_db(db: DbOption = None) -> None:
    """Create or upgrade the schema (safe to run again)."""
    with _open(db, create=True) as store:
        version = store.init_db()
        out.print(f"schema version {version} ready at {store.url.render_as_string(hide_password=True)}")


@app.command()
def enqueue(
    queue: str,
    payload: Annotated[Optional[str], typer.Option(help="Task payload as JSON.")] = None,
    task_id: Annotated[Optional[str], typer.Option("--id", help="Task id (default: random).")] = None,
    dedupe_key: Annotated[Optional[str], typer.Option(help="A second enqueue with this key returns the first task.")] = None,
    max_attempts: Annotated[int, typer.Option(help="Attempts before the task is dead-lettered.")] = 3,
    delay: Annotated[float, typer.Option(help="Seconds before the task becomes available.")] = 0.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a task to a queue."""
    value = _parse_json(payload, "payload")
    with _open(db) as store:
        result = store.enqueue(queue, value, task_id=task_id, dedupe_key=dedupe_key,
                               max_attempts=max_attempts, delay=delay)
    if as_json:
        _emit_json({"task_id": result.task_id, "created": result.created})
    else:
        out.print(f"{'enqueued' if result.created else 'exists'} {result.task_id}")


@app.command()
def claim(
    queue: Annotated[Optional[str], typer.Argument(help="Queue to take the next task from.")] = None,
    owner: Annotated[str, typer.Option(help="Who claims (an agent identity).")] = "",
    task_id: Annotated[Optional[str], typer.Option("--task-id", help="Claim this task instead of the next one.")] = None,
    ttl: Annotated[float, typer.Option(help="Lease time to live, seconds.")] = DEFAULT_LEASE_TTL,
    additional: Annotated[bool, typer.Option(help="Take another task even if the owner holds one.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lease a task. Prints the secret lease token needed to heartbeat or release.

    Exit code 0 when leased or resumed, 3 when busy, 4 when there is no task.
    """
    with _open(db) as store:
        result = store.claim_task(queue, owner, task_id=task_id, ttl=ttl, additional=additional)
    lease = result.lease
    data: dict[str, Any] = {"status": result.status.value, "task_id": result.task_id}
    if lease is not None:
        data.update(task_id=lease.task_id, queue=lease.queue, owner=lease.owner, token=lease.token,
                    fencing_token=lease.fencing_token, expires_at=lease.expires_at,
                    attempt=lease.attempt, max_attempts=lease.max_attempts, payload=lease.payload,
                    checkpoint=lease.checkpoint, took_over=lease.took_over)
    elif result.holder is not None:
        data["holder"] = result.holder
    if as_json:
        _emit_json(data)
    elif lease is not None:
        out.print(f"{result.status.value} {lease.task_id} fence={lease.fencing_token} attempt={lease.attempt}/{lease.max_attempts} expires={_ts(lease.expires_at)}")
        out.print(f"token={lease.token}")
        if lease.checkpoint is not None:
            out.print(f"checkpoint={json.dumps(lease.checkpoint)}")
    else:
        out.print(result.status.value + (f" (held by {result.holder})" if result.holder else ""))
    if result.lease is None:
        raise typer.Exit(3 if result.busy else 4)


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
        out.print(f"extended {result.task_id} until {_ts(result.expires_at)}")


@app.command()
def release(
    task_id: str,
    token: TokenOption,
    fence: FenceOption,
    outcome: Annotated[str, typer.Option(help="done or failed.")] = "done",
    error: Annotated[Optional[str], typer.Option(help="Why it failed.")] = None,
    retry_in: Annotated[Optional[float], typer.Option(help="Seconds before a retry (default: backoff policy).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Release a lease as done or failed."""
    try:
        kind = ReleaseOutcome(outcome)
    except ValueError:
        raise errors.InvalidArgument("--outcome must be done or failed") from None
    with _open(db) as store:
        result = store.release_task(LeaseRef(task_id, token, fence), kind, error, retry_in=retry_in)
    if as_json:
        _emit_json({"task_id": result.task_id, "result": result.result.value, "attempt": result.attempt,
                    "next_attempt_at": result.next_attempt_at, "dead_letter_id": result.dead_letter_id})
    else:
        out.print(f"{result.result.value} {result.task_id} (attempt {result.attempt})")


@app.command()
def recover(
    batch_size: Annotated[int, typer.Option(help="Leases per transaction.")] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Return expired leases to pending (dead-letter them at their retry limit)."""
    with _open(db) as store:
        report = store.recover_stale(batch_size=batch_size)
    data = {"scanned": report.scanned, "recovered": report.recovered, "dead_lettered": report.dead_lettered,
            "skipped": report.skipped, "failed": report.failed, "failure_ratio": report.failure_ratio}
    if as_json:
        _emit_json(data)
    else:
        out.print(" ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in data.items()))


@app.command()
def revoke(
    task_id: str,
    reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "revoked by operator",
    db: DbOption = None,
) -> None:
    """End a task's lease now; the task goes back to pending."""
    with _open(db) as store:
        store.revoke_lease(task_id, reason=reason)
    out.print(f"revoked {task_id}")


@app.command()
def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Tasks by queue and status, and the active leases with their ages."""
    with _open(db) as store:
        summary = store.status_summary()
    if as_json:
        _emit_json(summary)
        return
    counts = Table(title="tasks")
    for column in ("queue", "status", "count"):
        counts.add_column(column, justify="right" if column == "count" else "left")
    for row in summary["counts"]:
        counts.add_row(row["queue"], row["status"], str(row["count"]))
    out.print(counts)
    leases = Table(title="active leases")
    for column in ("task", "queue", "owner", "fence", "attempt", "age s", "expires in s"):
        leases.add_column(column)
    for lease in summary["leases"]:
        leases.add_row(lease["task_id"], lease["queue"], lease["owner"], str(lease["fencing_token"]),
                       str(lease["attempt"]), f"{lease['age_seconds']:.1f}", f"{lease['expires_in_seconds']:.1f}")
    out.print(leases)


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
    table = Table(title="event_log")
    for column in ("id", "time", "task", "queue", "kind", "from", "to", "owner", "fence", "attempt", "reason"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["id"]), _ts(r["ts"]), r["task_id"], r["queue"], r["kind"], r["from_status"] or "-",
                      r["to_status"] or "-", r["owner"] or "-", str(r["fencing_token"] or "-"),
                      str(r["attempt"] if r["attempt"] is not None else "-"), r["reason"] or "-")
    out.print(table)


@dead_letters_app.command("list")
def dead_letters_list(
    status_: Annotated[str, typer.Option("--status", help="open, requeued or resolved.")] = "open",
    limit: int = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List dead letters."""
    with _open(db) as store:
        rows = store.list_dead_letters(status=status_, limit=limit)
    if as_json:
        _emit_json([r.__dict__ for r in rows])
        return
    table = Table(title=f"dead letters ({status_})")
    for column in ("id", "task", "queue", "reason", "attempts", "created", "last error"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r.id), r.task_id, r.queue, r.reason, str(r.attempts), _ts(r.created_at), (r.last_error or "")[:80])
    out.print(table)


@dead_letters_app.command("requeue")
def dead_letters_requeue(dead_letter_id: int, db: DbOption = None) -> None:
    """Put one dead-lettered task back to pending with fresh attempts."""
    with _open(db) as store:
        task_id = store.requeue_dead_letter(dead_letter_id)
    out.print(f"requeued {task_id}")


@dead_letters_app.command("resolve")
def dead_letters_resolve(
    dead_letter_id: int,
    note: Annotated[Optional[str], typer.Option(help="Why it is closed.")] = None,
    db: DbOption = None,
) -> None:
    """Close a dead letter without running its task again."""
    with _open(db) as store:
        task_id = store.resolve_dead_letter(dead_letter_id, note)
    out.print(f"resolved dead letter {dead_letter_id} (task {task_id})")


def print_metrics(report: MetricsReport) -> None:
    table = Table(title=f"leasestore metrics, last {report.window_minutes:g} min")
    for column in ("metric", "value", "threshold", "state"):
        table.add_column(column)
    for v in report.values:
        table.add_row(v.definition.key, f"{v.value:g}", f"{v.threshold:g}",
                      "[bold red]ALERT[/]" if v.alert else "ok")
    out.print(table)
    print(f"METRICS_ALERT={int(report.alert)}")


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
        print_metrics(report)


@app.command()
def exporter(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="Port to listen on.", min=0, max=65535)] = None,
    window: Annotated[float, typer.Option(help="Metrics window, minutes.")] = DEFAULT_WINDOW_MINUTES,
    tls_cert: Annotated[Optional[str], typer.Option(help="PEM certificate: serve HTTPS.")] = None,
    tls_key: Annotated[Optional[str], typer.Option(help="PEM private key of --tls-cert.")] = None,
    basic_auth_user: Annotated[Optional[str], typer.Option(
        help="Require this user; password from $LEASESTORE_EXPORTER_PASSWORD or --basic-auth-password-file.")] = None,
    basic_auth_password_file: Annotated[Optional[str], typer.Option(help="File holding the password.")] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback bind without TLS and auth.")] = False,
    db: DbOption = None,
) -> None:
    """Serve the metrics for Prometheus (reads the database at scrape time)."""
    from exporter import server

    argv = ["--host", host, "--window", str(window)]
    options = {"--port": port, "--db": _db(db), "--tls-cert": tls_cert, "--tls-key": tls_key,
               "--basic-auth-user": basic_auth_user, "--basic-auth-password-file": basic_auth_password_file}
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    if insecure:
        argv.append("--insecure")
    raise typer.Exit(server.main(argv) or 0)


@app.command()
def demo(
    workers: Annotated[int, typer.Option(help="Agent processes.")] = 3,
    tasks: Annotated[int, typer.Option(help="Tasks to work through.")] = 24,
    db: Annotated[Optional[str], typer.Option("--db", help="Store to use (default: a fresh file in a temporary folder).")] = None,
) -> None:
    """Watch the store work: agents drain a queue, one is killed mid-task, its task is recovered."""
    from .demo import run_demo

    raise typer.Exit(run_demo(workers=workers, tasks=tasks, db=_db(db), console=out))


def _phase3_common(workers: int, tasks: int, iterations: int, fail_rate: float, ttl: float,
                   report_dir: str, max_seconds: float, db: str | None) -> dict[str, Any]:
    return {"workers": workers, "tasks": tasks, "iterations": iterations, "fail_rate": fail_rate,
            "ttl": ttl, "report_dir": report_dir, "max_seconds": max_seconds, "db_url": _db(db),
            "console": out}


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
    scenario: Annotated[str, typer.Option(help="drain (one queue), hot (a few hot task ids) or stall (agents stop heartbeating).")] = "drain",
    heartbeats: Annotated[int, typer.Option(help="Heartbeats per held task.")] = 1,
    work_ms: Annotated[Optional[float], typer.Option("--work-ms", "--workMs", help="Simulated work before each heartbeat and the release, ms (default: 5 for hot, else 0).")] = None,
    hot_tasks: Annotated[int, typer.Option("--hot-tasks", "--hotTasks", help="hot: how many task ids the agents fight over.")] = 4,
    stall_rate: Annotated[float, typer.Option("--stall-rate", "--stallRate", help="stall: probability an agent stops heartbeating mid-task.")] = 0.2,
    report_dir: Annotated[str, typer.Option("--report-dir", "--reportDir", help="Where locust's CSV/HTML go.")] = "out/phase3-concurrency",
    max_seconds: MaxSecondsOption = 300.0,
    db: Phase3DbOption = None,
) -> None:
    """Many agents drain one queue; reports contention, latency, metrics and invariants."""
    from loadtest import phase3

    result = phase3.run_concurrency(scenario=scenario, heartbeats=heartbeats, work_ms=work_ms, hot_tasks=hot_tasks,
                                    stall_rate=stall_rate, **_phase3_common(
        workers, tasks, iterations, fail_rate, ttl, report_dir, max_seconds, db))
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
) -> None:
    """Repeated rounds; fails when throughput or p95 latency worsens beyond tolerance."""
    from loadtest import phase3

    result = phase3.run_regression(rounds=rounds, tolerance=tolerance, **_phase3_common(
        workers, tasks, iterations, fail_rate, ttl, report_dir, max_seconds, db))
    raise typer.Exit(0 if result.ok else 1)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode click returns the code of typer.Exit.
        code = app(args=args, prog_name="leasestore", standalone_mode=False)
    except errors.LeaseStoreError as exc:
        err.print(f"error: {exc}", markup=False)
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
            message = exc.format_message()  # type: ignore[attr-defined]
            if message:  # empty when click already printed the help
                err.print(f"error: {message}", markup=False)
            return int(getattr(exc, "exit_code", 2))
        if os.environ.get("LEASESTORE_DEBUG") == "1":
            raise
        err.print(f"error: unexpected {type(exc).__name__}: {exc}", markup=False)
        return 1
    return code if isinstance(code, int) else 0


def _is_usage_error(exc: Exception) -> bool:
    # typer may bring its own copy of click, so match click's exception by shape.
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
