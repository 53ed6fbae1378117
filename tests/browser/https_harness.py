"""Browser scenarios over HTTPS, with Caddy (``deploy/Caddyfile``) in front of ``vio serve``.

``tests/test_https.py`` starts ``python -m tests.browser.https_harness SCENARIO`` under
``unshare -n -m``: a network namespace with only ``lo``, and a mount namespace in which a
private ``/etc/hosts`` names ``vio.test`` as 127.0.0.1. Caddy runs the shipped Caddyfile with
the site's name and upstream changed, and a global options block that keeps it inside a
temporary directory (``local_certs``: its own CA, no ACME; no admin endpoint; no trust-store
install). Chromium reaches ``https://vio.test:PORT`` and ignores that it does not know Caddy's
CA; ``vio bot`` trusts that CA through ``SSL_CERT_FILE``. The scenario prints one JSON object
with what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from playwright.async_api import Response, WebSocket, async_playwright

from tests.browser.harness import (
    CAPTURE_PEER_CONNECTIONS,
    CHROMIUM,
    CHROMIUM_ARGS,
    VIO,
    bring_up_loopback,
    free_port,
    remote_videos_playing,
    seconds,
    therapist_bot,
)

ROOT = Path(__file__).parent.parent.parent
HOSTNAME = "vio.test"
CADDYFILE = ROOT / "deploy" / "Caddyfile"
SHIPPED_NAME = "vio.example.org"
SHIPPED_UPSTREAM = "127.0.0.1:8000"


def private_hosts_file(directory: Path) -> None:
    """Bind a hosts file naming ``vio.test`` over ``/etc/hosts``, in this mount namespace only."""
    hosts = directory / "hosts"
    hosts.write_text(f"127.0.0.1 localhost {HOSTNAME}\n::1 localhost\n")
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)


def caddy_config(https_port: int, http_port: int, vio_port: int, storage: Path,
                 site: str | None = None, hostname: str = HOSTNAME) -> str:
    """``deploy/Caddyfile`` for ``hostname`` (or ``site``, a copy already naming it) and vio's
    port, behind global options that keep Caddy local: its own CA, no admin endpoint, loopback
    only."""
    if site is None:
        site = CADDYFILE.read_text()
        if site.count(SHIPPED_NAME) != 1:
            raise RuntimeError(f"deploy/Caddyfile should name {SHIPPED_NAME} exactly once")
        site = site.replace(SHIPPED_NAME, hostname)
    if site.count(SHIPPED_UPSTREAM) != 1:
        raise RuntimeError(f"the Caddyfile should name {SHIPPED_UPSTREAM} exactly once")
    site = site.replace(SHIPPED_UPSTREAM, f"127.0.0.1:{vio_port}")
    site = site.replace(f"\n{hostname} {{\n", f"\n{hostname} {{\n\tbind 127.0.0.1\n", 1)
    if "\tbind 127.0.0.1" not in site:
        raise RuntimeError(f"the Caddyfile has no site block for {hostname}")
    # The shipped global options, but for the address it binds (the site is bound above).
    shipped = re.search(r"^\{\n(.*?)^\}\n", site, re.M | re.S)
    options = "" if shipped is None else "".join(
        f"{line}\n" for line in shipped.group(1).splitlines()
        if line.split("#", 1)[0].split()[:1] not in ([], ["admin"], ["default_bind"]))
    if shipped is not None:
        site = site[:shipped.start()] + site[shipped.end():]
    return (f"{{\n\tadmin off\n{options}\tlocal_certs\n\tskip_install_trust\n"
            f"\tstorage file_system {storage}\n\thttp_port {http_port}\n"
            f"\thttps_port {https_port}\n\tauto_https disable_redirects\n}}\n\n{site}")


@contextlib.contextmanager
def caddy(config: str, directory: Path, origin: str) -> Iterator[ssl.SSLContext]:
    """``caddy run`` with ``config`` (its storage in ``directory/caddy``) until
    ``origin/healthz`` answers; yields a TLS context that trusts Caddy's CA."""
    path = directory / "Caddyfile"
    path.write_text(config)
    log = directory / "caddy.log"
    env = {**os.environ, "HOME": str(directory), "XDG_DATA_HOME": str(directory / "data"),
           "XDG_CONFIG_HOME": str(directory / "config")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["caddy", "run", "--config", str(path), "--adapter", "caddyfile"],
            cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        root = caddy_root(directory)
        deadline = time.monotonic() + seconds(30)
        while not root.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"caddy made no CA: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        context = ssl.create_default_context(cafile=str(root))
        wait_for(f"{origin}/healthz", context, process, log, "caddy")
        yield context
    finally:
        stop(process)


def caddy_root(directory: Path) -> Path:
    """Where :func:`caddy` keeps its CA's root certificate."""
    return directory / "caddy" / "pki" / "authorities" / "local" / "root.crt"


def wait_for(url: str, context: ssl.SSLContext | None, process: subprocess.Popen[bytes],
             log: Path, what: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    deadline = time.monotonic() + seconds(30)
    while True:
        try:
            with opener.open(url, timeout=seconds(2)) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(seconds(10))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def vio_behind_caddy() -> Iterator[dict[str, Any]]:
    """``vio serve --demo`` on loopback with Caddy in front; yields the demo links."""
    vio_port, https_port, http_port = free_port(), free_port(), free_port()
    origin = f"https://{HOSTNAME}:{https_port}"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        private_hosts_file(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIO_")}
        env.update(VIO_DATABASE_URL=f"sqlite+aiosqlite:///{tmp}/vio.sqlite3",
                   VIO_ICE_ANNOUNCE_ADDRESSES="127.0.0.1", VIO_PUBLIC_BASE_URL=origin,
                   VIO_SECRET_KEY="https-browser-test", VIO_TRUSTED_PROXIES="127.0.0.1")
        vio_log = tmp / "server.log"
        with open(vio_log, "wb") as out:
            server = subprocess.Popen([VIO, "serve", "--demo", "--port", str(vio_port)],
                                      cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(f"http://127.0.0.1:{vio_port}/healthz", None, server, vio_log, "vio")
            config = caddy_config(https_port, http_port, vio_port, tmp / "caddy",
                                  hostname=f"{HOSTNAME}:{https_port}")
            with caddy(config, tmp, origin) as context:
                links = json.loads(subprocess.run(
                    [VIO, "demo-links", "--json"], cwd=tmp, env=env, check=True,
                    capture_output=True, text=True).stdout)
                links["env"] = {**env, "SSL_CERT_FILE": str(caddy_root(tmp))}
                links["cwd"] = tmp_name
                links["origin"] = origin
                links["ssl_context"] = context
                links["database"] = tmp / "vio.sqlite3"
                yield links
        except BaseException:
            for log in (vio_log, tmp / "caddy.log"):
                if log.exists():
                    print(f"--- {log.name}\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            stop(server)


def spoofed_sign_in(links: dict[str, Any]) -> str:
    """A failed sign-in through Caddy claiming another address: what vio records."""
    import http.cookiejar
    import re

    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=links["ssl_context"]),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{links['origin']}/login", timeout=seconds(10)) as response:
        page = response.read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    form = urllib.parse.urlencode({"email": "nobody@example.org", "password": "wrong",
                                   "next": "/staff", "csrf_token": token.group(1)}).encode()
    request = urllib.request.Request(f"{links['origin']}/login", form,
                                     headers={"X-Forwarded-For": "203.0.113.66"})
    with contextlib.suppress(urllib.error.HTTPError):
        opener.open(request, timeout=seconds(10))
    with sqlite3.connect(links["database"]) as conn:
        row = conn.execute("SELECT actor FROM audit_events WHERE action = 'sign-in-failed' "
                           "ORDER BY id DESC LIMIT 1").fetchone()
    return str(row[0]) if row else ""


def _shown_path(url: str) -> str:
    """A page's path, without the secret of a personal link."""
    path = urllib.parse.urlsplit(url).path
    return "/p/…" if path.startswith("/p/") else path


async def scenario_caddy(links: dict[str, Any]) -> dict[str, Any]:
    """A patient signs in with their link, checks in and joins over HTTPS; a therapist bot."""
    bot = therapist_bot(links, seconds(45))
    patient = next(p for p in links["patients"] if p["on_roster"])
    origin = links["origin"]
    seen: dict[str, Any] = {"origin": origin, "websockets": []}
    documents: list[Response] = []

    def on_response(response: Response) -> None:
        if response.request.resource_type == "document" and response.url.startswith(origin):
            documents.append(response)

    def on_websocket(ws: WebSocket) -> None:
        seen["websockets"].append(ws.url.split("?", 1)[0])

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {HOSTNAME} 127.0.0.1"])
        try:
            context = await browser.new_context(ignore_https_errors=True)
            await context.add_init_script(CAPTURE_PEER_CONNECTIONS)
            page = await context.new_page()
            page.on("response", on_response)
            page.on("websocket", on_websocket)
            await page.goto(patient["link"])
            await page.click("text=Join now")
            seen["check_in_form"] = await page.is_visible("#check-in")
            await page.check("#location-home")
            await page.click("#check-in-button")
            await page.click("#join-button", timeout=seconds(20) * 1000)
            seen["secure_context"] = await page.evaluate("window.isSecureContext")
            seen["page"] = await remote_videos_playing(page, 1, seconds(30))
            await asyncio.sleep(seconds(4))  # the bot's side of the call
            seen["cookies"] = [{"name": c.get("name"), "secure": c.get("secure")}
                               for c in await context.cookies()]
            seen["hsts"] = {f"{r.status} {_shown_path(r.url)}":
                            (await r.all_headers()).get("strict-transport-security")
                            for r in documents}
        finally:
            await browser.close()
    bot.terminate()
    out, _ = bot.communicate(timeout=seconds(20))
    seen["bot"] = json.loads(out) if out.strip() else None
    seen["spoofed_sign_in_actor"] = await asyncio.to_thread(spoofed_sign_in, links)
    log = (Path(links["cwd"]) / "server.log").read_text()
    seen["link_token_logged"] = patient["link"].rsplit("/", 1)[1] in log
    seen["log_lines"] = len(log.splitlines())
    return seen


SCENARIOS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "caddy": scenario_caddy,
}


def main() -> None:
    name = sys.argv[1]
    bring_up_loopback()
    with vio_behind_caddy() as links:
        result = asyncio.run(SCENARIOS[name](links))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
