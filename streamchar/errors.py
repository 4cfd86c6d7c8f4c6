"""Domain errors and their one mapping to gRPC status codes."""

from __future__ import annotations

import grpc


class StreamCharError(Exception):
    """Base class; `code` is the gRPC status a client receives."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(StreamCharError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class SessionNotFound(StreamCharError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(StreamCharError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(StreamCharError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(StreamCharError):
    code = grpc.StatusCode.UNAVAILABLE


class BackendFailed(StreamCharError):
    """A model backend answered, but not as the protocol requires (e.g. a misconfigured vLLM server)."""

    code = grpc.StatusCode.INTERNAL


class StaleWrite(FailedPrecondition):
    """A commit fenced by chunk index lost: another writer already advanced the session."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and client-facing message for any exception; internals never leak."""
    if isinstance(exc, StreamCharError):
        return exc.code, str(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return grpc.StatusCode.UNAVAILABLE, f"upstream service unavailable: {exc.details()}"
        return exc.code(), exc.details() or exc.code().name
    return grpc.StatusCode.INTERNAL, "internal error (see server logs)"
