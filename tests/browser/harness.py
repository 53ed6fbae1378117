"""Browser scenarios run inside a loopback-only network namespace.

``tests/test_browser.py`` starts ``python -m tests.browser.harness SCENARIO`` under
``unshare -n``; this module brings ``lo`` up, starts ``vio serve --demo`` on a fresh SQLite file,
drives headless Chromium (Debian's, with a fake camera and microphone) and ``vio bot``, and
prints one JSON object with what it saw. Every ICE candidate is 127.0.0.1: the namespace has no
other interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = os.environ.get("VIO_TEST_CHROMIUM", "/usr/bin/chromium")
SCALE = float(os.environ.get("VIO_TEST_TIMEOUT_SCALE", "1"))
VIO = str(Path(sys.executable).with_name("vio"))
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--autoplay-policy=no-user-gesture-required",
]
# Collects the page's peer connections so a scenario can read their getStats().
CAPTURE_PEER_CONNECTIONS = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__vioPeerConnections = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    window.__vioPeerConnections.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
  Object.assign(window.RTCPeerConnection, Original);
})();
"""
AUDIO_RECEIVED = """
async () => {
  const samples = {};
  for (const pc of window.__vioPeerConnections) {
    if (pc.connectionState === 'closed') continue;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        samples[s.trackIdentifier || s.id] = s.totalSamplesReceived || 0;
      }
    });
  }
  return samples;
}
"""
FRAMES_DECODED = """
async () => {
  const frames = {};
  for (const pc of window.__vioPeerConnections) {
    if (pc.connectionState === 'closed') continue;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        frames[s.trackIdentifier || s.id] = s.framesDecoded || 0;
      }
    });
  }
  return frames;
}
"""
PLAYING_VIDEOS = """
() => [...document.querySelectorAll('video.remote-video')]
  .filter((v) => v.videoWidth > 0 && !v.paused).length
"""


def seconds(n: float) -> float:
    return n * SCALE


def bring_up_loopback() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def vio_server(extra_env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """``vio serve --demo`` in a temporary directory; yields the demo links."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VIO_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/vio.sqlite3",
               "VIO_ICE_ANNOUNCE_ADDRESSES": "127.0.0.1", "VIO_PUBLIC_BASE_URL": base,
               "VIO_SECRET_KEY": "browser-test", **(extra_env or {})}
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115
        server = subprocess.Popen([VIO, "serve", "--demo", "--port", str(port)], cwd=tmp,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + seconds(30)
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("server did not start: "
                                       + (Path(tmp) / "server.log").read_text()[-2000:])
                time.sleep(0.1)
            links = json.loads(subprocess.run(
                [VIO, "demo-links", "--json"], cwd=tmp, env=env, check=True,
                capture_output=True, text=True).stdout)
            links["env"] = env
            links["cwd"] = tmp
            yield links
        finally:
            server.terminate()
            try:
                server.wait(seconds(10))
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


def start_bot(links: dict[str, Any], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([VIO, "bot", "--json", *args], cwd=links["cwd"], env=links["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def therapist_bot(links: dict[str, Any], seconds_: float, *extra: str) -> subprocess.Popen[str]:
    return start_bot(links, "--link", links["therapist"]["login"], "--email",
                     links["therapist"]["email"], "--password", links["therapist"]["password"],
                     "--seconds", str(seconds_), "--admit-all", *extra)


def bot_result(bot: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = bot.communicate(timeout=seconds(120))
    if bot.returncode != 0:
        raise RuntimeError(f"vio bot failed: {err[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


async def new_page(browser: Browser) -> Page:
    context = await browser.new_context()
    page = await context.new_page()
    await page.add_init_script(CAPTURE_PEER_CONNECTIONS)
    return page


async def wait_until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def patient_joins(page: Page, link: str) -> None:
    """A patient opens their link, opens today's session, checks in at home and joins."""
    await page.goto(link)
    await page.click("text=Join now")
    await page.check("#location-home")
    await page.click("#check-in-button")
    await page.click("#join-button", timeout=seconds(20) * 1000)


async def remote_videos_playing(page: Page, at_least: int, within: float) -> dict[str, Any]:
    """Wait for ``at_least`` remote videos with size and rising decoded-frame counts."""
    async def enough_playing() -> bool:
        playing: int = await page.evaluate(PLAYING_VIDEOS)
        return playing >= at_least

    await wait_until(enough_playing, within, f"{at_least} playing remote videos")
    first = await page.evaluate(FRAMES_DECODED)
    first_audio = await page.evaluate(AUDIO_RECEIVED)
    await asyncio.sleep(2)
    second = await page.evaluate(FRAMES_DECODED)
    second_audio = await page.evaluate(AUDIO_RECEIVED)
    rising = [k for k, v in second.items() if v > first.get(k, 0)]
    hearing = [k for k, v in second_audio.items() if v > first_audio.get(k, 0)]
    return {"playing": await page.evaluate(PLAYING_VIDEOS), "rising": len(rising),
            "hearing": len(hearing), "frames": second}


async def scenario_room(links: dict[str, Any]) -> dict[str, Any]:
    """Two Chromium patients and a therapist bot in the live demo group."""
    bot = therapist_bot(links, seconds(45))
    patients = [p for p in links["patients"] if p["on_roster"]][:2]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = [await new_page(browser) for _ in patients]
            await asyncio.gather(*(patient_joins(page, p["link"])
                                   for page, p in zip(pages, patients, strict=True)))
            seen = await asyncio.gather(*(remote_videos_playing(page, 2, seconds(30))
                                          for page in pages))
            names = [await page.locator(".tile-name").all_inner_texts()
                     for page in pages]
        finally:
            await browser.close()
    bot.terminate()
    with contextlib.suppress(Exception):
        bot.communicate(timeout=seconds(10))
    return {"pages": seen, "names": names}


async def scenario_tabs(links: dict[str, Any]) -> dict[str, Any]:
    """One person's browser, two tabs, two demo patients' links: they see and hear each other."""
    patients = [p for p in links["patients"] if p["on_roster"]][:2]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            await context.add_init_script(CAPTURE_PEER_CONNECTIONS)
            pages = []
            for patient in patients:  # one after the other, as a person would
                page = await context.new_page()
                await patient_joins(page, patient["link"])
                pages.append(page)
            seen = await asyncio.gather(*(remote_videos_playing(page, 1, seconds(30))
                                          for page in pages))
            names = [await page.locator(".tile-name").all_inner_texts() for page in pages]
        finally:
            await browser.close()
    return {"pages": seen, "names": names}


async def scenario_rules(links: dict[str, Any]) -> dict[str, Any]:
    """A patient checks in, waits, is admitted by the therapist, and sees the session end."""
    import sqlite3

    from vio.bot import sign_in
    from vio.client import SignalingClient

    database = links["env"]["VIO_DATABASE_URL"].split(":///", 1)[1]
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE sessions SET waiting_room = 'therapist-admits' WHERE kind = 'group'")
    session_id = next(s["id"] for s in links["sessions"] if s["kind"] == "group")
    web = await asyncio.to_thread(sign_in, links["therapist"]["login"],
                                  links["therapist"]["email"], links["therapist"]["password"])
    ws_url = links["base_url"].replace("http", "ws") + f"/ws/sessions/{session_id}"
    seen: dict[str, Any] = {}
    patient = next(p for p in links["patients"] if p["on_roster"])
    async with SignalingClient(ws_url, cookie=web.cookie) as therapist:
        await therapist.send(type="join", v=1)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await new_page(browser)
                await page.goto(patient["link"])
                await page.click("text=Join now")
                seen["check_in_form"] = await page.is_visible("#check-in")
                await page.check("#location-other")
                await page.fill("input[name=address]", "12 Elm St")
                await page.fill("input[name=city]", "Springfield")
                await page.fill("input[name=state]", "IL")
                await page.click("#check-in-button")
                await page.click("#join-button", timeout=seconds(20) * 1000)
                await page.wait_for_selector("#screen-waiting:not([hidden])",
                                             timeout=seconds(20) * 1000)
                seen["waiting_screen"] = True
                seen["room_before_admit"] = await page.is_visible("#screen-room")
                waiting_id = None
                while waiting_id is None:
                    msg = await therapist.expect("waiting-list", within=seconds(20))
                    if msg["waiting"]:
                        waiting_id = msg["waiting"][0]["participant_id"]
                await therapist.send(type="admit", participant_id=waiting_id)
                await page.wait_for_selector("#screen-room:not([hidden])",
                                             timeout=seconds(20) * 1000)
                seen["room_screen"] = True
                await therapist.send(type="end")
                await page.wait_for_selector("#screen-ended:not([hidden])",
                                             timeout=seconds(20) * 1000)
                seen["ended_screen"] = True
                seen["ended_text"] = await page.inner_text("#screen-ended")
            finally:
                await browser.close()
    return seen


async def scenario_family(links: dict[str, Any]) -> dict[str, Any]:
    """A family member opens the invite, joins, waits, is admitted; media flows both ways."""
    import sqlite3
    from datetime import UTC, datetime, timedelta

    invite = links["family_invites"][0]
    database = links["env"]["VIO_DATABASE_URL"].split(":///", 1)[1]
    start = (datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None)
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE sessions SET starts_at = ? WHERE id = ?",
                     (start.isoformat(sep=" "), invite["session_id"]))
    bot = therapist_bot(links, seconds(40), "--session", str(invite["session_id"]))
    seen: dict[str, Any] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await new_page(browser)
            await page.goto(invite["link"])
            seen["neutral"] = "substance" not in (await page.content()).lower()
            await page.fill("#family-name", "Angela L.")
            await page.check("#family-terms")
            await page.click("#family-continue")
            await page.click("#join-button", timeout=seconds(20) * 1000)
            await page.wait_for_selector("#screen-room:not([hidden])",
                                         timeout=seconds(30) * 1000)
            seen["admitted"] = True
            seen["page"] = await remote_videos_playing(page, 1, seconds(30))
            await asyncio.sleep(seconds(4))  # the bot's side of the call, under load too
        finally:
            await browser.close()
    bot.terminate()
    out, _ = bot.communicate(timeout=seconds(20))
    seen["bot"] = json.loads(out) if out.strip() else None
    return seen


SCENARIOS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "room": scenario_room,
    "tabs": scenario_tabs,
    "rules": scenario_rules,
    "family": scenario_family,
}


Scenario = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def serve_scenario(scenario: Scenario, env: dict[str, str] | None = None) -> None:
    """Inside the namespace: ``lo`` up, a fresh ``vio serve --demo`` (with ``env``), the
    scenario run against its demo links, and what it saw printed as one JSON object."""
    bring_up_loopback()
    with vio_server(env) as links:
        result = asyncio.run(scenario(links))
    print(json.dumps(result))


def main() -> None:
    serve_scenario(SCENARIOS[sys.argv[1]])


if __name__ == "__main__":
    main()
