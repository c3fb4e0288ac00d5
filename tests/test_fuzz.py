"""Hostile input to every public call and every CLI command.

A refusal is a typed error from :mod:`leasestore.errors` (or, from the CLI,
one ``error:`` line on stderr and a non-zero exit), never a traceback, and a
refused call leaves every table exactly as it was. Refused lease writes add
their one ``lock_events`` conflict row and nothing else.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos import snapshot
from faces import open_store
from leasestore import LeaseLost, LeaseRef, LeaseStore, LeaseStoreError, NO_BACKOFF, StoreUnavailable
from leasestore.cli import main as cli_main
from leasestore.history import check_history

SQL_METACHARACTERS = ["'", "''", "' OR '1'='1", "'; DROP TABLE tasks; --", '"', "\\", "%", "%s", "%(id)s", ":id",
                      "?", "$1", ";", "--", "/*", "*/", "\x1a", "\u2028", "NULL", "_", "*"]
UNICODE = ["ä", "😀", "\u202e", "\ufeff", "Ω" * 256, "\u0301", "𝔘𝔫𝔦", "\U0010ffff"]

names = st.one_of(
    st.sampled_from(SQL_METACHARACTERS + UNICODE),
    st.text(max_size=40),
    st.text(min_size=250, max_size=400),  # around and past the 256-character limit
    st.sampled_from(["", " ", "\t\n", "a\x00b", "\ud800", "x" * 100_000]),
    st.integers(), st.none(), st.binary(max_size=10), st.lists(st.integers(), max_size=2), st.floats(),
)
seconds = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 0.099, 1e308, -1e308, 10**30, math.nan, math.inf, -math.inf, True, False]),
    st.text(max_size=5), st.none(), st.integers(min_value=-(10**20), max_value=10**20),
)
ints = st.one_of(st.integers(), st.sampled_from([0, -1, 2**62 + 1, 2**63, 2**64, 10**100, True]),
                 st.floats(), st.text(max_size=5), st.none())


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


payloads = st.one_of(
    st.sampled_from([math.nan, math.inf, {1, 2}, b"bytes", object(), {(1, 2): 3}, 10**5000, _deep(100_000),
                     "x" * (1024 * 1024 + 1), ["\ud800"], {"k": float("nan")}, complex(1, 2)]),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                           st.floats(allow_nan=False)),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=10),
)

FUZZ = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Seeded:
    """A store holding one task of every kind, so hostile calls meet real rows."""

    def __init__(self, url: str, face: str) -> None:
        self.store = open_store(face, url, retry_policy=NO_BACKOFF)
        s = self.store
        s.enqueue("q", {"n": 1}, task_id="pending")
        s.enqueue("q", task_id="leased")
        s.enqueue("q", task_id="dead", max_attempts=1)
        self.lease = s.claim_task(task_id="leased", owner="holder", ttl=600).lease
        s.release_task(s.claim_task(task_id="dead", owner="holder").lease, "failed", "x")

    def refused(self, call: Callable[[], Any]) -> None:
        """Run ``call``; if it is refused, it must be typed and have written nothing."""
        before = snapshot(self.store)
        try:
            call()
        except LeaseStoreError as exc:
            assert not isinstance(exc, StoreUnavailable), f"hostile input broke the store: {exc!r}"
            assert "\n" not in str(exc) and len(str(exc)) < 2000, str(exc)[:300]
            after = snapshot(self.store)
            if isinstance(exc, LeaseLost):
                # the refusal is recorded, nothing else
                added = set(after["lock_events"]) - set(before["lock_events"])
                assert len(added) == 1 and "conflict" in next(iter(added))
                after["lock_events"] = before["lock_events"]
            assert after == before, f"{type(exc).__name__} after a partial write"


@pytest.fixture
def seeded(db_url: str, face: str) -> Iterator[Seeded]:
    s = Seeded(db_url, face)
    yield s
    report = check_history(s.store, require_drained=False)
    assert report.ok, report.summary()
    s.store.close()


@FUZZ
@given(queue=names, task_id=names, payload=payloads, max_attempts=ints, dedupe=names, delay=seconds)
def test_fuzz_enqueue(seeded: Seeded, queue: Any, task_id: Any, payload: Any, max_attempts: Any, dedupe: Any,
                      delay: Any) -> None:
    seeded.refused(lambda: seeded.store.enqueue(queue, payload, task_id=task_id, max_attempts=max_attempts,
                                                dedupe_key=dedupe, delay=delay))
    seeded.refused(lambda: seeded.store.enqueue_many(queue, [payload, payload], task_ids=[task_id, "other"]))


@FUZZ
@given(queue=names, owner=names, task_id=st.one_of(st.none(), names, st.sampled_from(["pending", "leased", "dead"])),
       ttl=seconds, additional=st.one_of(st.booleans(), names))
def test_fuzz_claim(seeded: Seeded, queue: Any, owner: Any, task_id: Any, ttl: Any, additional: Any) -> None:
    seeded.refused(lambda: seeded.store.claim_task(queue, owner, task_id=task_id, ttl=ttl, additional=additional))


@FUZZ
@given(task_id=st.one_of(names, st.just("leased")), token=names, fence=ints, ttl=seconds, checkpoint=payloads,
       outcome=st.one_of(names, st.sampled_from(["done", "failed"])), error=st.one_of(names, payloads),
       retry_in=seconds)
def test_fuzz_holder_writes(seeded: Seeded, task_id: Any, token: Any, fence: Any, ttl: Any, checkpoint: Any,
                            outcome: Any, error: Any, retry_in: Any) -> None:
    ref = LeaseRef(task_id, token, fence)
    seeded.refused(lambda: seeded.store.heartbeat(ref, ttl=ttl))
    seeded.refused(lambda: seeded.store.heartbeat(ref, checkpoint=checkpoint))
    seeded.refused(lambda: seeded.store.release_task(ref, outcome, error, retry_in=retry_in))
    # the real holder with a hostile argument beside its valid token
    seeded.refused(lambda: seeded.store.heartbeat(seeded.lease, ttl=ttl, checkpoint=checkpoint))
    seeded.refused(lambda: seeded.store.release_task(seeded.lease, outcome, error, retry_in=retry_in))
    seeded.refused(lambda: seeded.store.heartbeat(object()))  # type: ignore[arg-type]


@FUZZ
@given(task_id=names, value=ints, text=names, limit=ints, status=names)
def test_fuzz_operator_and_read_calls(seeded: Seeded, task_id: Any, value: Any, text: Any, limit: Any,
                                      status: Any) -> None:
    s = seeded.store
    for call in (lambda: s.revoke_lease(task_id, reason=text), lambda: s.requeue_dead_letter(value),
                 lambda: s.resolve_dead_letter(value, text), lambda: s.recover_stale(batch_size=value),
                 lambda: s.recover_stale(max_batches=limit), lambda: s.get_task(task_id),
                 lambda: s.list_tasks(queue=task_id, status=status, limit=limit),
                 lambda: s.list_dead_letters(status=status, limit=limit),
                 lambda: s.events(task_id=task_id, limit=limit), s.status_summary):
        seeded.refused(call)


GARBAGE_URLS = [
    "mysql://u@h/db", "postgresql+psycopg://u:secret@[bad", "postgresql+psycopg://nobody@127.0.0.1:1/x",
    "http://example.invalid/", "sqlite:///:memory:?mode=ro&uri=true' OR 1=1", "postgresql://127.0.0.1:1/",
    "::", "postgresql+psycopg://u@127.0.0.1:5432/test?options=-c%20statement_timeout%3D'x",
]
UNREACHABLE = {"mysql://u@h/db", "postgresql+psycopg://u:secret@[bad", "postgresql+psycopg://nobody@127.0.0.1:1/x",
               "postgresql://127.0.0.1:1/", "http://example.invalid/"}


@pytest.mark.parametrize("url", GARBAGE_URLS)
def test_garbage_urls_are_typed_errors(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    stores: list[LeaseStore] = []
    with pytest.raises(LeaseStoreError) as refused:
        stores.append(LeaseStore(url, init=False))
        stores[0].status_summary()
    for store in stores:
        store.close()
    assert "\n" not in str(refused.value) and "secret" not in str(refused.value)
    # init-db creates what it can reach: only with URLs that reach nothing
    commands = [["status", "--db", url]] + ([["init-db", "--db", url]] if url in UNREACHABLE else [])
    for args in commands:
        assert cli_main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "secret" not in err, err


# --- the CLI ---------------------------------------------------------------------------------

cli_values = st.one_of(st.sampled_from(SQL_METACHARACTERS + UNICODE + ["", "-1", "nan", "inf", "1e999", "0x10",
                                                                       "{nope", "[" * 5000, "x" * 5000, "--db"]),
                       st.text(max_size=30).filter(lambda v: "\x00" not in v))

COMMANDS: list[Callable[[Any, Any, Any], list[str]]] = [
    lambda a, b, c: ["enqueue", a, "--payload", b, "--id", c],
    lambda a, b, c: ["enqueue", "q", "--max-attempts", a, "--delay", b, "--dedupe-key", c],
    lambda a, b, c: ["claim", a, "--owner", b, "--ttl", c],
    lambda a, b, c: ["claim", "--task-id", a, "--owner", b, "--ttl", c],
    lambda a, b, c: ["heartbeat", a, "--token", b, "--fence", c],
    lambda a, b, c: ["heartbeat", "leased", "--token", a, "--fence", "1", "--ttl", b, "--checkpoint", c],
    lambda a, b, c: ["release", a, "--token", b, "--fence", c],
    lambda a, b, c: ["release", "leased", "--token", a, "--fence", "1", "--outcome", b, "--error", c],
    lambda a, b, c: ["recover", "--batch-size", a],
    lambda a, b, c: ["revoke", a, "--reason", b],
    lambda a, b, c: ["events", "--task-id", a, "--limit", b],
    lambda a, b, c: ["dead-letters", "list", "--status", a, "--limit", b],
    lambda a, b, c: ["dead-letters", "requeue", a],
    lambda a, b, c: ["dead-letters", "resolve", a, "--note", b],
    lambda a, b, c: ["metrics", a],
    lambda a, b, c: ["status", a],
]


@FUZZ
@given(command=st.sampled_from(range(len(COMMANDS))), a=cli_values, b=cli_values, c=cli_values)
def test_fuzz_cli(seeded: Seeded, capsys: pytest.CaptureFixture[str], command: int, a: str, b: str, c: str) -> None:
    url = str(seeded.store.url.render_as_string(hide_password=False))
    args = COMMANDS[command](a, b, c) + ["--db", url]
    before = snapshot(seeded.store)
    code = cli_main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if code == 0 or (code in (3, 4) and args[0] == "claim"):
        return
    assert code != 0 and err.count("\n") == 1 and err.startswith("error: "), (args[:4], code, err[:500])
    assert not err.startswith("error: unexpected "), err  # the CLI's catch-all for untyped errors
    after = snapshot(seeded.store)
    if args[0] in ("heartbeat", "release") and "lost" in err:
        after["lock_events"] = before["lock_events"]
    if args[0] == "metrics":  # metrics records alerts by design, even when it then fails
        after["alerts"] = before["alerts"]
    assert after == before, (args[:4], err)


@pytest.mark.parametrize("args", [
    [b"enqueue", b"q\xff", b"--id", b"t"],  # argv that is not UTF-8
    [b"enqueue", b"q", b"--payload", b"[" * 100_000],
    [b"claim", b"q", b"--owner", b"a", b"--ttl", b"-inf"],
    [b"heartbeat", b"t", b"--token", b"x", b"--fence", b"99999999999999999999999"],
    [b"release", b"t'; DROP TABLE tasks; --", b"--token", b"x", b"--fence", b"1"],
    [b"nonsense-command"],
    [b"demo", b"--workers", b"-1"],  # used to wait forever for a holder to kill
    [b"demo", b"--workers", b"1"],
    [b"demo", b"--workers", b"3", b"--tasks", b"0"],
    [b"exporter", b"--port", b"99999"],  # used to end in an OverflowError from bind()
])
def test_cli_subprocess_bad_input(sqlite_url: str, args: list[bytes]) -> None:
    """The installed entry point: one error line, non-zero exit, no traceback, nothing written."""
    store = LeaseStore(sqlite_url)
    store.enqueue("q", task_id="t")
    before = snapshot(store)
    run = subprocess.run([sys.executable, "-m", "leasestore", *args, b"--db", sqlite_url.encode()],
                         capture_output=True, timeout=60)
    err = run.stderr.decode("utf-8", "replace")
    assert run.returncode != 0 and "Traceback" not in err, err
    assert err.startswith("error: ") or "Usage:" in err, err
    if err.startswith("error: "):
        assert err.count("\n") == 1, err
    assert snapshot(store) == before
    store.close()
