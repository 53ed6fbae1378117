"""Media across NAT and firewalls, in a network of namespaces built for each test.

::

    server 10.99.1.2 ── cloud (1:1 NAT, 203.0.113.10) ──┐
                                                        inet (a bridge: "the internet")
    home 192.168.77.2 ── homenat (NAT, 203.0.113.20) ───┤
                                                        └── turn 203.0.113.30 (coturn)

Every address exists only inside these namespaces (:mod:`tests.netns`), which are deleted,
with every process in them, when the test ends. vio runs in "server" with
``VIO_ICE_PUBLIC_ADDRESS=203.0.113.10``; the patient's Chromium runs in "home"
(:mod:`tests.browser.nat_harness`); a therapist bot runs in "server" (reaching vio's public
address through the cloud's hairpin NAT) or, behind the firewall, in "home".

1. Cloud VM: the patient behind the home NAT sees and hears the therapist and is seen and
   heard; every candidate in the server's offers shows the public address.
2. Firewall: the server drops UDP outside ``VIO_RTC_PORT_RANGE``; two participants get media,
   every UDP socket of the server lies in the range, and a third is refused with
   ``media-unavailable``.
3. UDP blocked: the home network lets only TCP to vio's web port and to coturn through; the
   patient comes in by the relay over TCP. With credentials coturn refuses, the page says that
   the network blocks video calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.conftest import REQUIRE_SERVICES, seconds
from tests.netns import Namespace, Network
from tests.test_turn import TURN_CONFIG, TURNSERVER, coturn_command, stop

ROOT = Path(__file__).parent.parent
VIO = str(Path(sys.executable).with_name("vio"))
CHROMIUM = os.environ.get("VIO_TEST_CHROMIUM", "/usr/bin/chromium")

SERVER_PRIVATE = "10.99.1.2"
CLOUD_LAN = "10.99.1.1"
PUBLIC = "203.0.113.10"
HOME_PUBLIC = "203.0.113.20"
TURN = "203.0.113.30"
HOME = "192.168.77.2"
HOME_GATEWAY = "192.168.77.1"
WEB_PORT = 8000
TURN_PORT = 3478
TURN_SECRET = "nat-test-turn-secret"

SERVER_START_SECONDS = 60.0
"""vio serve --demo: migrations, the demo, then the listener."""
HARNESS_SECONDS = 180.0
"""One browser scenario, Chromium's start included."""
BOT_SECONDS = 120.0
"""How long a therapist bot stays in the room (it is stopped as soon as the browser is done)."""
BOT_RESULT_SECONDS = 30.0
"""How long a stopped or finishing bot may take to print its summary."""
FIREWALL_BOT_SECONDS = 15.0
"""How long each of the two bots behind the firewall stays in the room."""
PORTS_BOUND_SECONDS = 30.0
"""How long the two bots may take to be admitted (each takes a port of the range)."""


def _unavailable(*, browser: bool = False, turn: bool = False) -> None:
    why = netns.unavailable()
    if why is None and browser and not Path(CHROMIUM).exists():
        why = f"{CHROMIUM} is not installed"
    if why is None and turn and not Path(TURNSERVER).exists():
        why = "coturn's turnserver is not installed"
    if why is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"NAT tests cannot run: {why}")
        pytest.skip(f"NAT tests cannot run: {why}")


# --- the offer's addresses, pure ------------------------------------------------------------------

OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 50001 UDP/TLS/RTP/SAVPF 96", f"c=IN IP4 {SERVER_PRIVATE}",
    "a=candidate:abc 1 udp 2130706431 10.99.1.2 50001 typ host",
    "a=candidate:def 1 udp 16777215 198.51.100.9 61000 typ relay raddr 0.0.0.0 rport 0",
    "a=candidate:ghi 1 udp 2130706431 2001:db8::5 50002 typ host",
    f"a=rtcp:50001 IN IP4 {SERVER_PRIVATE}", "a=rtcp-mux", "",
])


def test_the_offer_shows_the_public_address_instead_of_the_private_one() -> None:
    from vio.media import offer_with_public_address

    lines = offer_with_public_address(OFFER, PUBLIC, keep_private=False).split("\r\n")
    assert f"a=candidate:abc 1 udp 2130706431 {PUBLIC} 50001 typ host" in lines
    assert f"c=IN IP4 {PUBLIC}" in lines and f"a=rtcp:50001 IN IP4 {PUBLIC}" in lines
    assert not [line for line in lines if SERVER_PRIVATE in line]
    # The relay candidate and the other IP version are someone else's addresses.
    assert [line for line in lines if "typ relay" in line or "2001:db8::5" in line] == [
        "a=candidate:def 1 udp 16777215 198.51.100.9 61000 typ relay raddr 0.0.0.0 rport 0",
        "a=candidate:ghi 1 udp 2130706431 2001:db8::5 50002 typ host",
    ]


def test_keeping_the_private_address_adds_the_public_one_as_server_reflexive() -> None:
    from vio.media import offer_with_public_address

    lines = offer_with_public_address(OFFER, PUBLIC, keep_private=True).split("\r\n")
    host = lines.index("a=candidate:abc 1 udp 2130706431 10.99.1.2 50001 typ host")
    reflexive = lines[host + 1].split()
    assert reflexive[4:] == [PUBLIC, "50001", "typ", "srflx", "raddr", SERVER_PRIVATE,
                             "rport", "50001"]
    assert reflexive[0] != "a=candidate:abc" and int(reflexive[3]) < 2130706431
    assert f"c=IN IP4 {PUBLIC}" in lines


# --- the network --------------------------------------------------------------------------------


@dataclass
class Place:
    net: Network
    server: Namespace
    cloud: Namespace
    homenat: Namespace
    home: Namespace
    turn: Namespace


@pytest.fixture
def place() -> Iterator[Place]:
    _unavailable()
    with Network() as net:
        inet = net.namespace("inet")
        server, cloud = net.namespace("server"), net.namespace("cloud")
        homenat, home = net.namespace("homenat"), net.namespace("home")
        turn = net.namespace("turn")
        net.link(server, "eth0", f"{SERVER_PRIVATE}/24", cloud, "lan", f"{CLOUD_LAN}/24")
        net.link(cloud, "wan", f"{PUBLIC}/24", inet, "cloud", None)
        net.link(homenat, "wan", f"{HOME_PUBLIC}/24", inet, "home", None)
        net.link(turn, "eth0", f"{TURN}/24", inet, "turn", None)
        net.bridge(inet, "br0", ["cloud", "home", "turn"])
        net.link(home, "eth0", f"{HOME}/24", homenat, "lan", f"{HOME_GATEWAY}/24")
        server.default_route(CLOUD_LAN)
        home.default_route(HOME_GATEWAY)
        cloud.forward()
        cloud.one_to_one_nat(PUBLIC, SERVER_PRIVATE, "wan")
        homenat.forward()
        homenat.masquerade("wan")
        yield Place(net, server, cloud, homenat, home, turn)
    assert not any(ns.startswith(net.prefix) for ns in netns.namespace_files())


def _env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.lower().endswith("_proxy") and not key.startswith("VIO_")}
    return {**env, "VIO_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/vio.sqlite3",
            "VIO_PUBLIC_BASE_URL": f"http://{PUBLIC}:{WEB_PORT}", "VIO_SECRET_KEY": "nat-test",
            "VIO_ICE_ANNOUNCE_ADDRESSES": SERVER_PRIVATE, "VIO_ICE_PUBLIC_ADDRESS": PUBLIC,
            **settings}


@dataclass
class Vio:
    links: dict[str, Any]
    env: dict[str, str]
    cwd: Path
    process: subprocess.Popen[str]


@contextlib.contextmanager
def vio_server(place: Place, tmp: Path, **settings: str) -> Iterator[Vio]:
    """``vio serve --demo`` in the server namespace, reachable at the public address."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = _env(tmp, **settings)
    log = open(tmp / "server.log", "w")  # noqa: SIM115
    process = place.server.popen([VIO, "serve", "--demo", "--host", "0.0.0.0", "--port",
                                  str(WEB_PORT), "--insecure-http"], cwd=tmp, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            place.home.wait_for_tcp(PUBLIC, WEB_PORT, seconds(SERVER_START_SECONDS))
        except TimeoutError:
            raise RuntimeError("vio did not start: "
                               + (tmp / "server.log").read_text()[-3000:]) from None
        links = json.loads(subprocess.run([VIO, "demo-links", "--json"], cwd=tmp, env=env,
                                          check=True, capture_output=True, text=True).stdout)
        yield Vio(links, env, tmp, process)
    finally:
        stop(process)
        log.close()


@contextlib.contextmanager
def coturn(place: Place, tmp: Path) -> Iterator[Path]:
    """coturn with deploy/turnserver.conf in the turn namespace, relaying only to vio."""
    tmp.mkdir(parents=True, exist_ok=True)
    command = coturn_command(config=TURN_CONFIG, listening_ip=TURN, relay_ip=TURN,
                             port=TURN_PORT, secret=TURN_SECRET, workdir=tmp,
                             allowed_peers=[PUBLIC])
    process = place.turn.popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        place.turn.wait_for_tcp(TURN, TURN_PORT, seconds(SERVER_START_SECONDS))
        yield tmp / "turn.log"
    finally:
        stop(process)


def therapist_bot(ns: Namespace, vio: Vio, bot_seconds: float) -> subprocess.Popen[str]:
    therapist = vio.links["therapist"]
    env = {key: value for key, value in vio.env.items() if not key.startswith("VIO_ICE_")}
    return ns.popen([VIO, "bot", "--json", "--link", therapist["login"],
                     "--email", therapist["email"], "--password", therapist["password"],
                     "--seconds", str(bot_seconds), "--admit-all"],
                    cwd=vio.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def patient_bot(ns: Namespace, vio: Vio, link: str, bot_seconds: float,
                *extra: str) -> subprocess.Popen[str]:
    env = {key: value for key, value in vio.env.items() if not key.startswith("VIO_ICE_")}
    return ns.popen([VIO, "bot", "--json", "--link", link, "--seconds", str(bot_seconds), *extra],
                    cwd=vio.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def bot_summary(bot: subprocess.Popen[str], *, stop_now: bool) -> dict[str, Any]:
    if stop_now:
        bot.terminate()
    out, err = bot.communicate(timeout=seconds(BOT_RESULT_SECONDS))
    assert out.strip(), f"the bot printed nothing: {err[-2000:]}"
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return summary


def patients(vio: Vio) -> list[dict[str, Any]]:
    return [p for p in vio.links["patients"] if p["on_roster"]]


def run_browser(place: Place, scenario: str, link: str) -> dict[str, Any]:
    args = json.dumps({"link": link, "base_url": f"http://{PUBLIC}:{WEB_PORT}"})
    env = {key: value for key, value in os.environ.items()
           if not key.lower().endswith("_proxy")}
    result = place.home.run([sys.executable, "-m", "tests.browser.nat_harness", scenario, args],
                            cwd=ROOT, env=env, capture_output=True,
                            timeout=seconds(HARNESS_SECONDS))
    assert result.returncode == 0, result.stderr[-4000:]
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return seen


def received_from(summary: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [r for r in summary["remote"]
            if r["role"] == role and r["video_frames"] > 0 and r["audio_frames"] > 0]


def udp_ports(ns: Namespace) -> list[int]:
    """Local ports of every UDP socket in ``ns``."""
    out = ns.run(["ss", "-H", "-u", "-a", "-n"], capture_output=True, check=True).stdout
    return [int(line.split()[3].rpartition(":")[2]) for line in out.splitlines() if line.strip()]


# --- 1. cloud VM ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_cloud_vm_patient_behind_home_nat_gets_media_both_ways(
    place: Place, tmp_path: Path
) -> None:
    _unavailable(browser=True)
    with vio_server(place, tmp_path / "vio") as vio:
        bot = therapist_bot(place.server, vio, seconds(BOT_SECONDS))
        try:
            seen = run_browser(place, "media", patients(vio)[0]["link"])
        finally:
            summary = bot_summary(bot, stop_now=True)
    assert seen["playing"] >= 1 and seen["rising"] >= 1 and seen["hearing"] >= 1, seen
    assert received_from(summary, "patient"), summary  # the therapist sees and hears them
    assert seen["candidates"], seen
    for candidate in seen["candidates"]:
        assert candidate.split()[4] == PUBLIC, candidate
    assert seen["selected"]["remote"]["address"] == PUBLIC, seen["selected"]


# --- 2. firewall ---------------------------------------------------------------------------------


def test_firewall_two_participants_in_the_port_range_and_a_third_refused(
    place: Place, tmp_path: Path
) -> None:
    first, last = 40000, 40001  # a range for two participants
    place.server.filter("input", [f"udp dport {first}-{last} accept", "meta l4proto udp drop"])
    with vio_server(place, tmp_path / "vio", VIO_RTC_PORT_RANGE=f"{first}-{last}") as vio:
        therapist = therapist_bot(place.home, vio, seconds(FIREWALL_BOT_SECONDS))
        patient = patient_bot(place.home, vio, patients(vio)[0]["link"],
                              seconds(FIREWALL_BOT_SECONDS))
        deadline = time.monotonic() + seconds(PORTS_BOUND_SECONDS)
        while len(bound := udp_ports(place.server)) < 2:
            assert time.monotonic() < deadline, f"two participants not admitted: {bound}"
            time.sleep(netns.POLL_SECONDS)
        third = patient_bot(place.home, vio, patients(vio)[1]["link"],
                            seconds(FIREWALL_BOT_SECONDS), "--no-reconnect")
        refused = bot_summary(third, stop_now=False)
        therapist_summary = bot_summary(therapist, stop_now=False)
        patient_summary = bot_summary(patient, stop_now=False)
    assert all(first <= port <= last for port in bound), bound
    assert refused["refusal"] == "media-unavailable", refused
    assert received_from(therapist_summary, "patient"), therapist_summary
    assert received_from(patient_summary, "therapist"), patient_summary


# --- 3. UDP blocked ---------------------------------------------------------------------------


def _block_udp_at_home(place: Place) -> None:
    """The home network lets out only TCP to vio's web port and to the TURN server."""
    place.homenat.filter("forward", [
        "ct state established,related accept",
        f'iifname "lan" ip daddr {PUBLIC} tcp dport {WEB_PORT} accept',
        f'iifname "lan" ip daddr {TURN} tcp dport {TURN_PORT} accept',
    ], policy="drop")


TURN_URLS = f"turn:{TURN}:{TURN_PORT}?transport=udp,turn:{TURN}:{TURN_PORT}?transport=tcp"


@pytest.mark.browser
def test_udp_blocked_patient_joins_through_turn_over_tcp(place: Place, tmp_path: Path) -> None:
    _unavailable(browser=True, turn=True)
    _block_udp_at_home(place)
    with coturn(place, tmp_path / "turn"), vio_server(
            place, tmp_path / "vio", VIO_TURN_URLS=TURN_URLS, VIO_TURN_SECRET=TURN_SECRET) as vio:
        bot = therapist_bot(place.server, vio, seconds(BOT_SECONDS))
        try:
            seen = run_browser(place, "media", patients(vio)[0]["link"])
        finally:
            summary = bot_summary(bot, stop_now=True)
    assert seen["playing"] >= 1 and seen["rising"] >= 1 and seen["hearing"] >= 1, seen
    assert received_from(summary, "patient"), summary
    local = seen["selected"]["local"]
    assert local["type"] == "relay" and local["relayProtocol"] == "tcp", seen["selected"]
    assert TURN_SECRET not in (tmp_path / "vio" / "server.log").read_text()


@pytest.mark.browser
def test_udp_blocked_patient_with_refused_credentials_is_told_why(
    place: Place, tmp_path: Path
) -> None:
    _unavailable(browser=True, turn=True)
    _block_udp_at_home(place)
    with coturn(place, tmp_path / "turn"), vio_server(
            place, tmp_path / "vio", VIO_TURN_URLS=TURN_URLS,
            VIO_TURN_SECRET="not-" + TURN_SECRET) as vio:
        bot = therapist_bot(place.server, vio, seconds(BOT_SECONDS))
        try:
            seen = run_browser(place, "blocked", patients(vio)[0]["link"])
        finally:
            bot.terminate()
            bot.communicate(timeout=seconds(BOT_RESULT_SECONDS))
    assert "Your network blocks video calls" in seen["message"], seen
    assert seen["playing"] == 0, seen


# --- the helper itself -------------------------------------------------------------------------


def test_a_failing_test_leaves_no_namespace_and_no_process() -> None:
    _unavailable()
    with pytest.raises(RuntimeError, match="on purpose"), Network() as net:
        ns = net.namespace("x")
        sleeper = ns.popen(["sleep", "600"])
        raise RuntimeError("on purpose")
    assert sleeper.wait(seconds(netns.STOP_SECONDS)) is not None
    assert ns.name not in netns.namespace_files()
