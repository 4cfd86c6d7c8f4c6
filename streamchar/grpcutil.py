"""Serving plumbing every service shares: health, reflection, errors, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from streamchar.errors import status_of
from streamchar.telemetry import ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def channel_options() -> list[tuple[str, Any]]:
    return [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


async def guarded_stream(service: str, context: grpc.aio.ServicerContext, stream: AsyncIterator[T],
                         on_error: Callable[[grpc.StatusCode, str], T] | None = None) -> AsyncIterator[T]:
    """Run a response stream; any exception ends it with the mapped status and a readable message.

    `on_error` may turn the failure into a last event sent before the status (for event-only clients).
    """
    try:
        async for item in stream:
            yield item
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 — this is the one place errors become statuses
        code, message = status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s: internal error", service)
        else:
            log.info("%s: %s: %s", service, code.name, message)
        ERRORS.labels(service, code.name).inc()
        if on_error is not None:
            try:
                yield on_error(code, message)
            except Exception:  # noqa: BLE001 — the peer may be gone; the status still applies
                pass
        await context.abort(code, message)


class StreamWriter:
    """The one writer of a client stream: grpc.aio allows one `write` in flight per call, and
    several tasks (text forwarding, pulls, acks) need to write, so they queue here instead."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                await self.call.write(await self._queue.get())
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass  # the call failed or finished: its reader reports why

    def send(self, request: Any) -> None:
        self._queue.put_nowait(request)

    def close(self) -> None:
        self._task.cancel()
        self.call.cancel()


@dataclass
class RunningServer:
    """A started service: its bound port, and how to stop it (what `serve_until_signal` calls)."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    on_stop: Callable[[], Awaitable[None]] | None = None
    # Tasks of the service that end when it stops (cancelled first, so none sets health meanwhile).
    background: list[asyncio.Task] = field(default_factory=list)
    http_port: int | None = None  # the gateway's page, when it serves one

    async def set_health(self, serving: bool, service_names: Sequence[str]) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in (*service_names, ""):
            await self.health.set(name, status)

    async def stop(self, grace_seconds: float) -> None:
        for task in self.background:
            task.cancel()
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_seconds)
        if self.on_stop is not None:
            await self.on_stop()


async def build_server(service_name: str, full_service_names: Sequence[str], address: str,
                       register: Callable[[grpc.aio.Server], None],
                       on_stop: Callable[[], Awaitable[None]] | None = None) -> RunningServer:
    server = grpc.aio.server(options=channel_options())
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*full_service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"{service_name}: cannot bind {address}")
    await server.start()
    for name in (*full_service_names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s listening on port %d", service_name, port)
    return RunningServer(server, port, health_servicer, on_stop)


async def serve_until_signal(running: RunningServer, grace_seconds: float) -> None:
    """Serve until SIGTERM/SIGINT; then report NOT_SERVING and let streams finish for `grace_seconds`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", grace_seconds)
    await running.stop(grace_seconds)


def run_service(argv: list[str] | None, prog: str, description: str, config_cls: type,
                start: Callable[[Any], Awaitable[RunningServer]]) -> None:
    """A service's entry point: config from --config + environment, logging, serve until SIGTERM."""
    import argparse

    from streamchar.config import load_config
    from streamchar.logutil import setup_logging

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="TOML file; STREAMCHAR_* environment variables override it")
    args = parser.parse_args(argv)
    config = load_config(config_cls, args.config)
    setup_logging(config.log_level)

    async def serve() -> None:
        try:
            running = await start(config)
        except RuntimeError as e:  # a service that cannot start says why (a port taken, no such device)
            raise SystemExit(f"{prog}: {e}") from None
        await serve_until_signal(running, config.grace_seconds)

    asyncio.run(serve())
