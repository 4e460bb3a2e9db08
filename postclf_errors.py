"""The domain's one error hierarchy; the server maps each class to a gRPC status code."""

from __future__ import annotations


class PostclfError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidInputError(PostclfError, ValueError):
    """Bad input from a caller; `field` names the part at fault (e.g. "posts[3].image")."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class TooLargeError(PostclfError):
    """A request or batch past a configured size limit."""


class ModelUnavailableError(PostclfError):
    """No model is loaded or registered yet."""


class NotFoundError(PostclfError):
    """A referenced object (post, version, query) does not exist."""


class ConflictError(PostclfError):
    """The operation conflicts with state, e.g. a job already running elsewhere."""


class JobBusyError(ConflictError):
    """A job did not run: its lease is held by another holder that is still alive."""

    def __init__(self, job: str, holder: str, expires_at: float) -> None:
        super().__init__(f"job {job!r} did not run: its lease is held by {holder}")
        self.job, self.holder, self.expires_at = job, holder, expires_at


class LeaseLostError(ConflictError):
    """A job's lease was taken over (its heartbeat stalled past the TTL); it must not commit."""


class DeadlineExpiredError(PostclfError):
    """A queued call whose deadline passed before it was computed; nothing was done for it."""


class JobCancelledError(PostclfError):
    """A job stopped at a safe point because the process is shutting down; nothing promoted."""
