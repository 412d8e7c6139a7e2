"""The one exception tree of p2pdist.

Every error a client can cause or observe is a :class:`P2PError` carrying an OCI-style
``code`` and the HTTP ``status`` it is rendered as. Services render them in one place
(``net.http``), clients map status + code back to the same classes with
:func:`error_from_code`, so a failure crosses the wire without losing its kind.

    P2PError (500 INTERNAL)
    ├── BadRequest (400 BAD_REQUEST)
    │   ├── DigestInvalid (400 DIGEST_INVALID)
    │   ├── NameInvalid (400 NAME_INVALID)
    │   └── BodyInvalid (400 BODY_INVALID)
    ├── Unauthorized (401 UNAUTHORIZED)
    ├── NotFound (404 NOT_FOUND)
    │   ├── ChunkUnknown (404 CHUNK_UNKNOWN)
    │   ├── TaskUnknown (404 TASK_UNKNOWN)
    │   └── BlobUnknown (404 BLOB_UNKNOWN)
    ├── MethodNotAllowed (405 UNSUPPORTED)
    ├── TooLarge (413 SIZE_INVALID)
    ├── RangeInvalid (416 RANGE_INVALID)
    ├── IntegrityError (422 DIGEST_MISMATCH)   bytes did not match their expected hash
    ├── TaskFailed (422 TASK_FAILED)           the task failed for everyone (reason in message)
    ├── OriginError (502 ORIGIN_UNREACHABLE)   the origin could not be reached or refused
    ├── Busy (503 BUSY)                        upload slots full: ask someone else
    ├── Unavailable (503 UNAVAILABLE)          a peer or tracker could not be reached
    ├── StoreFull (507 STORE_FULL)
    └── ConfigError (CONFIG_INVALID)           raised at start, names the key
"""

from __future__ import annotations


class P2PError(Exception):
    code: str = "INTERNAL"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class BadRequest(P2PError):
    code, status = "BAD_REQUEST", 400


class DigestInvalid(BadRequest):
    code = "DIGEST_INVALID"


class NameInvalid(BadRequest):
    code = "NAME_INVALID"


class BodyInvalid(BadRequest):
    code = "BODY_INVALID"


class Unauthorized(P2PError):
    code, status = "UNAUTHORIZED", 401


class NotFound(P2PError):
    code, status = "NOT_FOUND", 404


class ChunkUnknown(NotFound):
    code = "CHUNK_UNKNOWN"


class ChunkPassedOn(ChunkUnknown):
    """The seed sent this chunk to another peer moments ago, or keeps it for a peer that
    has had fewer first copies (engine.firstcopy); ``reason`` says which (``passed_on``,
    ``reserved``), for the metrics."""

    code = "CHUNK_PASSED_ON"

    def __init__(self, message: str, *, reason: str = "passed_on", code: str | None = None,
                 status: int | None = None):
        super().__init__(message, code=code, status=status)
        self.reason = reason


class TaskUnknown(NotFound):
    code = "TASK_UNKNOWN"


class BlobUnknown(NotFound):
    code = "BLOB_UNKNOWN"


class MethodNotAllowed(P2PError):
    code, status = "UNSUPPORTED", 405


class TooLarge(P2PError):
    code, status = "SIZE_INVALID", 413


class RangeInvalid(P2PError):
    code, status = "RANGE_INVALID", 416


class IntegrityError(P2PError):
    code, status = "DIGEST_MISMATCH", 422


class TaskFailed(P2PError):
    code, status = "TASK_FAILED", 422


class OriginError(P2PError):
    code, status = "ORIGIN_UNREACHABLE", 502


class Busy(P2PError):
    code, status = "BUSY", 503


class Unavailable(P2PError):
    code, status = "UNAVAILABLE", 503


class StoreFull(P2PError):
    code, status = "STORE_FULL", 507


class ConfigError(P2PError):
    code, status = "CONFIG_INVALID", 500


_BY_CODE: dict[str, type[P2PError]] = {}


def _index(cls: type[P2PError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(P2PError)


def error_from_code(code: str, message: str, status: int) -> P2PError:
    """Rebuild the exception a remote service rendered as ``{"code", "message"}``."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return P2PError(message, code=code, status=status)
    return cls(message, status=status)


def p2p_error_in(exc: BaseException) -> P2PError | None:
    """The P2PError that ``exc`` is or that a (nested) exception group wraps, if every leaf
    of the group is one; trio's nurseries wrap errors in groups, boundaries unwrap them here."""
    if isinstance(exc, P2PError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [p2p_error_in(e) for e in exc.exceptions]
        if leaves and all(leaf is not None for leaf in leaves):
            return leaves[0]
    return None
