"""Job leases: a ledger lock renewed by a heartbeat, taken over when its holder is provably gone.

Every job (nightly, retrain, bootstrap) runs inside `job_lease(...)`. The lease row expires
`ttl_s` after the last heartbeat, so a holder killed with SIGKILL blocks the next run for at
most ~`ttl_s`; on the same host (and pid namespace) the next run takes it over at once when the
holder's pid is dead (owner strings are `host:pid:rand`). Taking a lease marks the job's
runs still recorded as `running` as `abandoned` (the lease proves their process is gone)
and runs `on_acquire` (e.g. removal of a dead run's temporary export folders).

A `JobScope` groups the leases of one server: `close()` at shutdown cancels them, so that a
job checking `lease.guard()` before it promotes never promotes after shutdown began, and
refuses new jobs. The scope reaches `job_lease` through a context variable (`scope.active()`),
so the jobs themselves need no extra argument.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from postclf_errors import JobBusyError, JobCancelledError, LeaseLostError
from store.ledger import Ledger

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0
DEFAULT_HEARTBEAT_S = 15.0

_HELD: set[str] = set()  # owners of the leases this process holds (or is acquiring)
_HELD_LOCK = threading.Lock()


def _host_id() -> str:
    """The hostname plus this process's pid-namespace id: two containers that share a
    hostname (host networking) but not a pid namespace must not judge each other's pids."""
    try:
        ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}~{''.join(c for c in ns if c.isdigit())}"


HOST_ID = _host_id()


def new_owner() -> str:
    """`host:pid:rand` (host = HOST_ID), unique per lease taken."""
    return f"{HOST_ID}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:  # a zombie (killed, not yet reaped) holds nothing any more
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def owner_is_gone(owner: str) -> bool:
    """True only when `owner` (host:pid:rand) is provably dead: same host and pid namespace
    (HOST_ID), and its pid is
    not running, or it is this very pid but not a lease this process holds (pid reuse after a
    restart, common in containers). Other hosts and unparsable owners: never (wait for TTL)."""
    parts = owner.split(":")
    if len(parts) != 3 or parts[0] != HOST_ID or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        with _HELD_LOCK:
            return owner not in _HELD
    return not _pid_alive(pid)


class Lease:
    """A held lease: a daemon thread renews it every `heartbeat_s` until `stop()`."""

    def __init__(
        self, ledger: Ledger, name: str, owner: str, ttl_s: float, heartbeat_s: float
    ) -> None:
        self.ledger, self.name, self.owner = ledger, name, owner
        self.ttl_s, self.heartbeat_s = ttl_s, heartbeat_s
        self._lost = threading.Event()
        self._cancelled = threading.Event()
        self._stop = threading.Event()
        self._guard = threading.Lock()  # cancel() waits for a promotion in progress
        self._thread = threading.Thread(target=self._beat, name=f"lease-{name}", daemon=True)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def cancel(self) -> None:
        """Shutdown: from now on `ensure_held`/`guard` raise JobCancelledError."""
        with self._guard:
            self._cancelled.set()

    def ensure_held(self) -> None:
        """Raise unless the job may still commit: cancelled → JobCancelledError; the lease
        row no longer ours → LeaseLostError (also renews it: one transaction)."""
        if self._cancelled.is_set():
            raise JobCancelledError(f"job {self.name!r} cancelled: the server is shutting down")
        if self._lost.is_set() or not self.ledger.renew_lock(self.name, self.owner, self.ttl_s):
            self._lost.set()
            raise LeaseLostError(f"job {self.name!r} lost its lease {self.owner}")

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Hold around a commit point (promotion): it runs only while the lease is held and
        not cancelled, and a shutdown that starts meanwhile waits for it to finish."""
        with self._guard:
            self.ensure_held()
            yield

    def _beat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.ledger.renew_lock(self.name, self.owner, self.ttl_s):
                    self._lost.set()
                    log.error("event=lease_lost name=%s owner=%s", self.name, self.owner)
                    return
                last_ok = time.monotonic()
            except Exception:  # a busy ledger: retry until the TTL would have run out
                log.exception("event=lease_renew_failed name=%s", self.name)
                if time.monotonic() - last_ok > self.ttl_s:
                    self._lost.set()
                    return


class JobScope:
    """The jobs of one server process: `close()` cancels them and refuses new ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}  # owner → lease
        self._changed = threading.Condition()  # a job finished, or the scope closed
        self.closed = threading.Event()

    @contextmanager
    def active(self) -> Iterator[JobScope]:
        """Leases taken inside (in this thread) belong to this scope."""
        token = _SCOPE.set(self)
        try:
            yield self
        finally:
            _SCOPE.reset(token)

    def _add(self, lease: Lease) -> None:
        with self._lock:
            if self.closed.is_set():
                raise JobCancelledError(f"job {lease.name!r} refused: the server is shutting down")
            self._leases[lease.owner] = lease

    def _remove(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(lease.owner, None)

    def running(self) -> list[str]:
        with self._lock:
            return [lease.name for lease in self._leases.values()]

    def notify(self) -> None:
        """Wake `wait_for` callers (a job thread calls this when it finishes)."""
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, done: threading.Event) -> bool:
        """Block until `done` is set (True) or the scope closes first (False)."""
        with self._changed:
            while not done.is_set() and not self.closed.is_set():
                self._changed.wait()
        return done.is_set()

    def close(self) -> None:
        """Cancel every running job (none promotes after this returns); refuse new ones."""
        with self._lock:
            self.closed.set()
            leases = list(self._leases.values())
        self.notify()
        for lease in leases:
            lease.cancel()
            log.info("event=job_cancelled name=%s", lease.name)

    def abandon(self, ledger: Ledger | None = None) -> list[str]:
        """Last step of a shutdown: the cancelled jobs still running will die with the
        process; free their leases now and record their runs as `cancelled`, through `ledger`
        (the caller's, still open; a job may be closing its own ledger right now)."""
        with self._lock:
            leases = list(self._leases.values())
        for lease in leases:
            lease.stop()
            store = ledger or lease.ledger
            try:  # never fail the shutdown: a lease left behind expires within its TTL
                if store.release_lock(lease.name, lease.owner):
                    store.abandon_running_jobs(lease.name, "cancelled")
            except Exception:
                log.exception("event=lease_release_failed name=%s", lease.name)
        return [lease.name for lease in leases]


_SCOPE: contextvars.ContextVar[JobScope | None] = contextvars.ContextVar(
    "postclf_job_scope", default=None
)


@contextmanager
def job_lease(
    ledger: Ledger,
    name: str,
    ttl_s: float = DEFAULT_TTL_S,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    *,
    on_acquire: Callable[[], object] | None = None,
) -> Iterator[Lease]:
    """Hold the `name` lease for the body; JobBusyError when a live holder has it.

    On acquisition the job's stale `running` runs become `abandoned` and `on_acquire` runs
    (cleanup of what a dead holder left). Released at exit, whatever the exit."""
    if not 0 < heartbeat_s < ttl_s:
        raise ValueError(f"need 0 < heartbeat_s ({heartbeat_s}) < ttl_s ({ttl_s})")
    scope = _SCOPE.get()
    if scope is not None and scope.closed.is_set():
        raise JobCancelledError(f"job {name!r} refused: the server is shutting down")
    owner = new_owner()
    with _HELD_LOCK:
        _HELD.add(owner)
    try:
        if not ledger.acquire_lock(name, owner, ttl_s, takeover=owner_is_gone):
            holder = ledger.lock_holder(name)
            raise JobBusyError(name, *(holder or ("(released meanwhile)", 0.0)))
        lease = Lease(ledger, name, owner, ttl_s, heartbeat_s)
        try:
            if scope is not None:
                scope._add(lease)
            abandoned = ledger.abandon_running_jobs(name)
            if abandoned:
                log.warning("event=runs_abandoned job=%s ids=%s", name, abandoned)
            if on_acquire is not None:
                on_acquire()
            lease.start()
            yield lease
        finally:
            lease.stop()
            if scope is not None:
                scope._remove(lease)
            ledger.release_lock(name, owner)
    finally:
        with _HELD_LOCK:
            _HELD.discard(owner)


def recover(ledger: Ledger, name: str, on_acquire: Callable[[], object] | None = None) -> bool:
    """Server start: clean up after a dead holder of `name` now, not at the next run.
    Returns False (and does nothing) when a live holder has the lease."""
    try:
        with job_lease(ledger, name, on_acquire=on_acquire):
            return True
    except JobBusyError:
        return False
