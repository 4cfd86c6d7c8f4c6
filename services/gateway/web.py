"""The browser page: HTTP and a WebSocket on the gateway (``http_address``), bridged to its gRPC `Converse`.

The page (``web/``) lets a user choose or upload a character, type or paste text and watch the
character say it live: the media arrives as fragmented MP4 over the WebSocket and is fed to Media
Source Extensions. Each WebSocket is one `Converse` call to this gateway's own gRPC port, so the page
gets exactly what every other client gets (validation, errors, tracing, failover, pacing).

Routes: ``GET /`` the page, ``GET /static/<file>`` its script and style, ``GET /characters`` the
names of the shipped characters (JSON), ``GET /characters/<name>`` one as PNG, ``GET /ws`` the session.

WebSocket protocol: text frames are JSON objects with a ``type``; binary frames are media.

client → server, in this order: ``{"type": "start", "character": NAME}`` (or ``"image": BASE64`` of an
encoded image; optional ``"voice"``, ``"realtime"`` (default true), ``"lead_seconds"``, ``"seed"``),
then any number of ``{"type": "text", "text": STR}``, then ``{"type": "end"}``;
``{"type": "interrupt"}`` at any time.

server → client: ``started`` (session_id, width, height, fps, frames_per_chunk, sample_rate,
trained), ``init`` (mime_type) followed by one binary frame, the init segment; per chunk one binary
frame (the fragment) then ``progress`` (chunk_index, pointer and text_received in characters,
latency_seconds, render_seconds); ``interrupted`` (next_chunk_index: media from that chunk on is
dropped); ``end`` (reason, chunks); ``error`` (code, code_name, message), after which the server
closes the socket. Bad input is an ``error`` with INVALID_ARGUMENT; the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from pathlib import Path
from typing import Any

import grpc
from aiohttp import WSMsgType, web

from streamchar.client import end_event, interrupt_event, start_event, text_event
from streamchar.grpcutil import channel_options
from streamchar.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "web"
CHARACTERS = Path(__file__).resolve().parents[2] / "streamchar" / "assets" / "characters"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # an uploaded image, base64
STATIC_FILES = {"page.js": "text/javascript", "page.css": "text/css"}


class BadMessage(ValueError):
    """A WebSocket message the protocol does not allow (INVALID_ARGUMENT)."""


def character_names(directory: Path = CHARACTERS) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.png"))


def _start_request(message: dict[str, Any], characters: Path) -> gateway_pb2.ClientEvent:
    if ("character" in message) == ("image" in message):
        raise BadMessage("start needs exactly one of `character` (a name from /characters) and `image` (base64)")
    if "character" in message:
        name = message["character"]
        if not isinstance(name, str) or name not in character_names(characters):
            raise BadMessage(f"unknown character {name!r} (choose from {', '.join(character_names(characters))})")
        image = (characters / f"{name}.png").read_bytes()
    else:
        try:
            image = base64.b64decode(message["image"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise BadMessage("`image` is not base64") from None
    realtime, lead, seed, voice = (message.get("realtime", True), message.get("lead_seconds", 0.0),
                                   message.get("seed", 0), message.get("voice", ""))
    if not isinstance(realtime, bool) or not isinstance(voice, str):
        raise BadMessage("`realtime` must be a boolean and `voice` a string")
    if not isinstance(lead, int | float) or isinstance(lead, bool) or not isinstance(seed, int) or seed < 0:
        raise BadMessage("`lead_seconds` must be a number and `seed` an integer >= 0")
    return start_event(image, voice=voice, realtime=realtime, lead_seconds=float(lead), seed=seed)


def client_event(raw: str, started: bool, characters: Path) -> gateway_pb2.ClientEvent:
    """One WebSocket text frame as the gateway's ClientEvent; raises BadMessage."""
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadMessage(f"a message must be JSON: {e}") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if not started:
        if kind != "start":
            raise BadMessage("the first message must be {\"type\": \"start\", ...}")
        return _start_request(message, characters)
    if kind == "text":
        if not isinstance(message.get("text"), str):
            raise BadMessage("`text` must be a string")
        return text_event(message["text"])
    if kind == "end":
        return end_event()
    if kind == "interrupt":
        return interrupt_event()
    raise BadMessage(f"unknown message type {kind!r} (after start: text, end, interrupt)")


def server_messages(event: gateway_pb2.ServerEvent) -> list[str | bytes]:
    """The WebSocket frames of one gateway ServerEvent."""
    kind = event.WhichOneof("event")
    if kind == "started":
        s = event.started
        return [json.dumps({"type": "started", "session_id": s.session_id, "width": s.width, "height": s.height,
                            "fps": s.time_base.fps, "frames_per_chunk": s.time_base.frames_per_chunk,
                            "sample_rate": s.time_base.sample_rate, "trained": s.trained})]
    if kind == "init":
        return [json.dumps({"type": "init", "mime_type": event.init.mime_type}), event.init.data]
    if kind == "segment":
        return [event.segment.data] if event.segment.data else []
    if kind == "progress":
        p = event.progress
        return [json.dumps({"type": "progress", "chunk_index": p.chunk_index, "pointer": p.pointer,
                            "text_received": p.text_received, "latency_seconds": p.latency_seconds,
                            "render_seconds": p.render_seconds})]
    if kind == "interrupted":
        return [json.dumps({"type": "interrupted", "next_chunk_index": event.interrupted.next_chunk_index})]
    if kind == "end":
        reason = common_pb2.EndReason.Name(event.end.reason).removeprefix("END_REASON_").lower()
        return [json.dumps({"type": "end", "reason": reason, "chunks": event.end.chunks})]
    return []  # `error` events precede the call's status, which is what is sent; raw chunks are not asked for


def error_message(code: grpc.StatusCode, message: str) -> str:
    return json.dumps({"type": "error", "code": code.value[0], "code_name": code.name, "message": message})


class PageServer:
    """The aiohttp application; each WebSocket is bridged to `Converse` on `gateway_address`."""

    def __init__(self, gateway_address: str, characters: Path = CHARACTERS) -> None:
        self.characters = characters
        self.channel = grpc.aio.insecure_channel(gateway_address, options=channel_options())
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.sockets: set[web.WebSocketResponse] = set()
        self.app = web.Application()
        self.app.add_routes([web.get("/", self.index), web.get("/static/{name}", self.static),
                             web.get("/characters", self.list_characters),
                             web.get("/characters/{name}", self.character), web.get("/ws", self.session)])
        self.app.on_shutdown.append(self._close_sockets)

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound(text=f"no static file {name}")
        return web.FileResponse(STATIC / name, headers={"Content-Type": f"{STATIC_FILES[name]}; charset=utf-8"})

    async def list_characters(self, request: web.Request) -> web.Response:
        return web.json_response(character_names(self.characters))

    async def character(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in character_names(self.characters):
            raise web.HTTPNotFound(text=f"no character {name}")
        return web.FileResponse(self.characters / f"{name}.png", headers={"Content-Type": "image/png"})

    async def session(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=20.0)
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            await self._bridge(ws)
        finally:
            self.sockets.discard(ws)
            await ws.close()
        return ws

    async def _bridge(self, ws: web.WebSocketResponse) -> None:
        try:
            first = await self._next_event(ws, started=False)
        except BadMessage as e:
            await ws.send_str(error_message(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
            return
        if first is None:
            return
        call = self.stub.Converse()  # written to by _read_socket, read here
        await call.write(first)
        reader = asyncio.create_task(self._read_socket(ws, call))
        try:
            while (event := await call.read()) is not grpc.aio.EOF:
                for frame in server_messages(event):
                    await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED or not reader.done():
                await ws.send_str(error_message(e.code(), e.details() or e.code().name))
        except asyncio.CancelledError:
            if not reader.done():
                raise  # this handler is cancelled (the server stops)
            # else the reader cancelled the call: the page closed or sent a bad message
        except ConnectionResetError:
            pass  # the page went away mid-send
        finally:
            call.cancel()  # no-op once the call ended; else the gateway stops the session
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _next_event(self, ws: web.WebSocketResponse, started: bool) -> gateway_pb2.ClientEvent | None:
        """The next client event, None when the socket closed; raises BadMessage."""
        msg = await ws.receive()
        if msg.type == WSMsgType.TEXT:
            return client_event(msg.data, started, self.characters)
        if msg.type == WSMsgType.BINARY:
            raise BadMessage("send JSON text messages; binary messages are the server's media")
        return None  # closed, closing or a transport error

    async def _read_socket(self, ws: web.WebSocketResponse, call: Any) -> None:
        """Page messages into the call, until the page closes (cancel the call) or the call ends."""
        try:
            while not call.done():
                event = await self._next_event(ws, started=True)
                if event is None:
                    break
                await call.write(event)
        except BadMessage as e:
            await ws.send_str(error_message(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
        except (grpc.aio.UsageError, asyncio.InvalidStateError, grpc.aio.AioRpcError):
            return  # the call ended meanwhile; its status is what the page gets
        call.cancel()

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"gateway shutting down")

    async def close(self) -> None:
        await self.channel.close()


async def start_page(http_address: str, gateway_port: int) -> tuple[web.AppRunner, int, PageServer]:
    """Serve the page on `http_address` ("host:port"; port 0 picks one); returns the runner, the bound
    port and the server."""
    host, _, port = http_address.rpartition(":")
    page = PageServer(f"127.0.0.1:{gateway_port}")
    runner = web.AppRunner(page.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "0.0.0.0", int(port))
    await site.start()
    bound = runner.addresses[0][1]  # the port bound (port 0 picks one)
    log.info("gateway page on http://%s:%d/", host or "0.0.0.0", bound)
    return runner, bound, page
