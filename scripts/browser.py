"""Headless Chromium for the browser checks: pages opened over its DevTools protocol (bound to loopback), each saved
as <name>.png (a screenshot) and <name>.txt (the page's text, for assertions)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
from pathlib import Path


async def screenshots(chromium: str, base: str, pages: dict[str, str], out: Path,
                      cookies: dict[str, str] | None = None, settle_s: float = 8.0) -> None:
    """Each page's screenshot, through the DevTools protocol of a headless Chromium bound to loopback."""
    import aiohttp

    profile = tempfile.mkdtemp(prefix="afsweep-chromium-")
    port = 9333
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                             f"--user-data-dir={profile}", "--window-size=1600,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json") as r:
                        targets = [t for t in await r.json() if t.get("type") == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 10_000))

                async def call(method: str, **params):
                    i = next(ids)
                    await ws.send_json({"id": i, "method": method, "params": params})
                    async for msg in ws:
                        data = json.loads(msg.data)
                        if data.get("id") == i:
                            if "error" in data:
                                raise RuntimeError(f"{method}: {data['error']}")
                            return data.get("result", {})

                await call("Network.enable")
                for name, value in (cookies or {}).items():   # e.g. the Ray dashboard's auth cookie
                    await call("Network.setCookie", name=name, value=value, url=base, path="/")
                for name, path in pages.items():
                    await call("Page.navigate", url=f"{base}{path}")
                    await asyncio.sleep(settle_s)   # single-page apps poll their APIs: let the tables fill
                    shot = await call("Page.captureScreenshot", format="png")
                    (out / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
                    text = await call("Runtime.evaluate", expression="document.body.innerText")
                    (out / f"{name}.txt").write_text(text.get("result", {}).get("value", ""))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
