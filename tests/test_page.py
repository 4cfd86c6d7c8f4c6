"""The gateway's browser page, driven in Debian's headless Chromium through Playwright, against the real
stack: Redis and the three services as processes (`python -m services.<name>`, as their images run).

Set STREAMCHAR_PAGE_SCREENSHOT=docs/page.png to write the screenshot committed in docs/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from streamchar.localstack import LocalStack, free_port, start_stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# machine's closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
TEXT = ("Hello! I am a character made of code, and I say whatever you type, word by word, live. "
        "If you interrupt me, I stop right away and drop the rest of this long sentence.")


@pytest.fixture(scope="module")
def page_stack(tmp_path_factory) -> Iterator[tuple[LocalStack, str]]:
    http = f"127.0.0.1:{free_port()}"
    stack = start_stack(log_dir=tmp_path_factory.mktemp("logs"), http_address=http)
    try:
        yield stack, f"http://{http}"
    finally:
        stack.stop()


@pytest_asyncio.fixture
async def browser() -> AsyncIterator:
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: `make system-deps` installs Debian's")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def events(page, kind: str) -> list[dict]:
    return await page.evaluate(f"window.streamchar.events.filter(e => e.type === {json.dumps(kind)})")


async def settled_time(page, timeout: float = 10.0) -> float:
    """video.currentTime once it stops advancing (two reads 0.5 s apart agree)."""
    last = await page.evaluate("document.getElementById('video').currentTime")
    for _ in range(int(timeout / 0.5)):
        await asyncio.sleep(0.5)
        now = await page.evaluate("document.getElementById('video').currentTime")
        if now == last:
            return now
        last = now
    raise AssertionError(f"the video kept playing for {timeout:.0f} s after the interrupt")


@pytest.mark.asyncio
async def test_page_speaks_typed_text_live_and_interrupt_stops_it(page_stack, browser):
    _, url = page_stack
    page = await browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(url)
    await page.wait_for_function("document.querySelectorAll('#characters img').length > 0")
    await page.locator("#characters img").nth(1).click()
    await page.fill("#text", TEXT)
    await page.click("#speak")

    # The video plays: time advances past a second, frames are decoded, and there is audio.
    await page.wait_for_function("document.getElementById('video').currentTime > 1.2", timeout=90_000)
    media = await page.evaluate("""() => {
        const v = document.getElementById('video');
        const s = window.streamchar.state;
        return {frames: v.getVideoPlaybackQuality().totalVideoFrames, audioBytes: v.webkitAudioDecodedByteCount,
                videoBytes: v.webkitVideoDecodedByteCount, width: v.videoWidth, paused: v.paused,
                tracks: s.mediaSource.activeSourceBuffers.length};
    }""")
    assert media["frames"] > 0 and media["videoBytes"] > 0 and not media["paused"]
    assert media["audioBytes"] > 0, "no audio was decoded"
    assert media["width"] > 0
    (init,) = await events(page, "init")
    assert "avc1" in init["mime_type"] and "mp4a" in init["mime_type"]
    progress = await events(page, "progress")
    assert progress and all(a["pointer"] <= b["pointer"] for a, b in zip(progress, progress[1:]))
    assert await page.text_content("#spoken"), "transcript progress is not shown"
    assert (await page.text_content("#stat-latency")).endswith("ms")
    assert (await page.text_content("#stat-first")).endswith("s")
    screenshot = os.environ.get("STREAMCHAR_PAGE_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=screenshot)

    # Interrupt: the session ends as interrupted and playback stops well before the text's end.
    await page.click("#interrupt")
    await page.wait_for_function("window.streamchar.events.some(e => e.type === 'end')", timeout=30_000)
    (end,) = await events(page, "end")
    assert end["reason"] == "interrupted"
    assert await events(page, "interrupted")
    stopped = await settled_time(page)
    spoken = (await events(page, "progress"))[-1]["pointer"]
    assert spoken < len(TEXT), "the whole text was spoken despite the interrupt"
    # ~10 s of speech in full; what plays after the click is what was already buffered (the lead).
    clicked = (await events(page, "interrupt"))[0]["currentTime"]
    assert stopped - clicked < 2.5 and stopped < 7.0
    assert await page.text_content("#status") == "interrupted"
    assert await page.is_enabled("#speak")
    assert errors == []


async def ws_session(url: str, messages: list[str | bytes]) -> list[dict]:
    """Send `messages` on a new WebSocket; the JSON messages received until the server closes it."""
    received = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
        for m in messages:
            await (ws.send_bytes(m) if isinstance(m, bytes) else ws.send_str(m))
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                received.append(json.loads(msg.data))
    return received


@pytest.mark.asyncio
@pytest.mark.parametrize(("messages", "says"), [
    (["not json"], "must be JSON"),
    ([json.dumps({"type": "text", "text": "hi"})], "first message must be"),
    ([json.dumps({"type": "start", "character": "../../etc/passwd"})], "unknown character"),
    ([json.dumps({"type": "start", "image": "%%%"})], "not base64"),
    ([json.dumps({"type": "start", "image": "aGVsbG8="})], "image"),  # base64 of b"hello": not an image
    ([json.dumps({"type": "start", "character": "character-002", "seed": -1})], "seed"),
    ([json.dumps({"type": "start", "character": "character-002"}), b"\x00\x01"], "binary"),
    ([json.dumps({"type": "start", "character": "character-002"}), json.dumps({"type": "shout"})], "unknown message"),
])
async def test_bad_messages_get_invalid_argument_and_the_page_keeps_serving(page_stack, messages, says):
    _, url = page_stack
    received = await ws_session(url, messages)
    errors = [m for m in received if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code_name"] == "INVALID_ARGUMENT" and says in errors[0]["message"]
    # and a good session right after still speaks to the end
    good = await ws_session(url, [json.dumps({"type": "start", "character": "character-002", "realtime": False}),
                                  json.dumps({"type": "text", "text": "Still here."}), json.dumps({"type": "end"})])
    assert [m["type"] for m in good][0] == "started" and good[-1] == {**good[-1], "type": "end", "reason": "completed"}


@pytest.mark.asyncio
async def test_page_routes_and_missing_files(page_stack):
    _, url = page_stack
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200 and "text/html" in r.content_type and "page.js" in await r.text()
        async with http.get(f"{url}/characters") as r:
            names = await r.json()
        assert len(names) >= 4
        async with http.get(f"{url}/characters/{names[0]}") as r:
            assert r.status == 200 and (await r.read())[:8] == b"\x89PNG\r\n\x1a\n"
        for missing in ("/characters/nobody", "/static/../server.py", "/static/secret.txt"):
            async with http.get(url + missing) as r:
                assert r.status == 404, missing
