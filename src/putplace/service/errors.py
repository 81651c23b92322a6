"""Refusals by the service layer. The HTTP layer maps each class to one status code
(``putplace.server.errors``); the message is shown to the caller as it is."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the rules refuse; ``str(error)`` says why, for the caller."""


class InvalidInputError(ServiceError):
    """A value that can never be right (a malformed hash, a cursor never issued)."""


class NotFoundError(ServiceError):
    """What the request names does not exist (or is not visible to the caller)."""


class ConflictError(ServiceError):
    """The request contradicts the current state (finishing a scan that is not open)."""


class TooLargeError(ServiceError):
    """More bytes or records than a limit allows."""


class StalledError(ServiceError):
    """The caller stopped sending before the request was complete."""


class ContentMismatchError(ServiceError):
    """Uploaded bytes are not the content they claim to be; nothing was stored."""


class HashMismatchError(ContentMismatchError):
    pass


class SizeMismatchError(ContentMismatchError):
    pass


class ChecksumMismatchError(ContentMismatchError):
    """A resumable upload's request body does not match its ``Upload-Checksum``: its
    bytes are not acknowledged (tus answers 460)."""


class GoneError(NotFoundError):
    """What the request names existed, but has expired."""


class UnauthenticatedError(ServiceError):
    """No key, a key that does not exist, or a revoked key."""


class ForbiddenError(ServiceError):
    """A valid key without the right to do this."""


class BusyError(ServiceError):
    """Another request holds what this one needs (an upload being written); try again
    in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(ServiceError):
    """Too many requests by one key; try again in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OverloadedError(BusyError):
    """The server has no room for this request's body now (``MemoryBudget``); try again
    in ``retry_after`` seconds."""
