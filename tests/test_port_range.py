"""The media port range (``VIO_RTC_PORT_RANGE``), on loopback, in this process.

Every media socket the server binds for ICE lies in the range; one port serves a participant
(max-bundle); an exhausted range refuses the next participant with ``MediaError``, which the
live room turns into the documented ``media-unavailable`` refusal (close 4503), and a port
freed by someone leaving is used again. The firewall version, with UDP outside the range
dropped, is in ``tests/test_nat.py``.
"""

from __future__ import annotations

import dataclasses
import random
import socket
from collections.abc import Iterator

import aioice.ice
import pytest

from tests.test_media_forwarding import eventually, room
from tests.test_session_rules import Clinic
from tests.wsclient import Client
from vio.demo import ROSTER
from vio.media import (
    MediaConfig,
    MediaError,
    PortRange,
    TrackInfo,
    announce_host_addresses,
    port_range,
    seams,
    use_port_range,
)
from vio.models import WaitingRoomPolicy
from vio.settings import Settings, SettingsError

LOW_PORTS = (20000, 30000)
"""Where free ranges are looked for: below Linux's ephemeral ports, so nothing else takes them."""


def free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive UDP ports that are free on 127.0.0.1 now."""
    for _ in range(100):
        first = random.randrange(LOW_PORTS[0], LOW_PORTS[1] - size)
        sockets = []
        try:
            for port in range(first, first + size):
                s = socket.socket(type=socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return first, first + size - 1
    raise RuntimeError("no free port range on 127.0.0.1")


def candidate_ports(sdp: str) -> set[int]:
    return {int(line.split()[5]) for line in sdp.splitlines() if line.startswith("a=candidate:")}


@pytest.fixture
def loopback_only() -> Iterator[None]:
    announce_host_addresses(["127.0.0.1"])
    yield
    announce_host_addresses([])


@pytest.fixture
def in_range(request: pytest.FixtureRequest, loopback_only: None) -> Iterator[PortRange]:
    size = getattr(request, "param", 2)
    use_port_range(free_range(size))
    current = port_range()
    assert current is not None
    try:
        yield current
    finally:
        use_port_range(())


# --- pure ---------------------------------------------------------------------------------------


def test_ports_are_tried_in_turn_from_after_the_last_one_taken() -> None:
    ports = PortRange(50000, 50003)
    assert len(ports) == 4 and 50003 in ports and 50004 not in ports
    first = ports.ports()
    assert next(first) == 50000  # taken: the next search starts after it
    assert list(ports.ports()) == [50001, 50002, 50003, 50000]
    again = ports.ports()
    assert [next(again), next(again)] == [50001, 50002]
    assert next(ports.ports()) == 50003


@pytest.mark.parametrize("raw", ["50000", "50999-50000", "80-90", "50000-70000", "a-b"])
def test_a_bad_range_names_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="VIO_RTC_PORT_RANGE"):
        Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_RTC_PORT_RANGE": raw})


def test_the_range_setting() -> None:
    settings = Settings.from_env({"VIO_SECRET_KEY": "k", "VIO_RTC_PORT_RANGE": "50000-50999"})
    assert settings.rtc_port_range == (50000, 50999)
    assert Settings.from_env({"VIO_SECRET_KEY": "k"}).rtc_port_range == ()


def test_the_seam_is_checked_like_the_others_and_comes_off_again() -> None:
    names = {str(t) for t in seams.TARGETS}
    assert "aioice.ice.Connection.get_component_candidates" in names
    assert "aioice.ice.asyncio" in names
    original = aioice.ice.Connection.get_component_candidates
    use_port_range((50000, 50009))
    try:
        replaced = aioice.ice.Connection.get_component_candidates
        assert replaced is not original and replaced.__code__ is original.__code__
    finally:
        use_port_range(())
    assert aioice.ice.Connection.get_component_candidates is original


# --- the router ---------------------------------------------------------------------------------


@pytest.mark.parametrize("in_range", [2], indirect=True)
async def test_an_exhausted_range_refuses_the_next_participant(in_range: PortRange) -> None:
    offers: dict[str, str] = {}

    def keep(pid: str):  # type: ignore[no-untyped-def]
        async def on_offer(sdp: str, tracks: list[TrackInfo]) -> None:
            offers[pid] = sdp
        return on_offer

    async with room() as r:
        for pid in ("therapist", "ann"):
            await r.router.add_participant(pid, is_therapist=pid == "therapist",
                                           on_offer=keep(pid))
        with pytest.raises(MediaError, match="no free media port"):
            await r.router.add_participant("bob", is_therapist=False, on_offer=keep("bob"))
        assert r.router.participants() == ["therapist", "ann"]
        await eventually(lambda: len(offers) == 2, 5, "two offers")
        used = [candidate_ports(sdp) for sdp in offers.values()]
        assert all(len(ports) == 1 for ports in used), used  # one port per participant
        assert set().union(*used) == set(range(in_range.first, in_range.last + 1))

        await r.router.remove_participant("ann")  # frees its port for the next one
        await r.router.add_participant("bob", is_therapist=False, on_offer=keep("bob"))
        await eventually(lambda: "bob" in offers, 5, "bob's offer")
        assert candidate_ports(offers["bob"]) <= set(range(in_range.first, in_range.last + 1))


@pytest.mark.parametrize("in_range", [12], indirect=True)
async def test_media_flows_with_every_socket_in_the_range(in_range: PortRange) -> None:
    """Server and client peers share the process, so all their sockets come from the range."""
    async with room(MediaConfig()) as r:
        for pid in ("therapist", "ann"):
            await r.join(pid, therapist=pid == "therapist")
        await eventually(lambda: all(c.has_media_from([o for o in r.clients if o != pid], 5)
                                     for pid, c in r.clients.items()), 10, "media both ways")
        for client in r.clients.values():
            for sdp in client.sdps:
                assert candidate_ports(sdp) and all(p in in_range
                                                    for p in candidate_ports(sdp)), sdp


# --- the live room ------------------------------------------------------------------------------


@pytest.fixture
def live_settings(settings: Settings, loopback_only: None) -> Iterator[Settings]:
    try:
        yield dataclasses.replace(settings, ice_announce_addresses=("127.0.0.1",),
                                  room_tick_seconds=0.05, rtc_port_range=free_range(1))
    finally:
        use_port_range(())


@pytest.fixture
def place(live_server, db, live_settings, clock):  # type: ignore[no-untyped-def]
    return Clinic(live_server, db, live_settings, clock)


async def test_the_room_refuses_with_media_unavailable_when_no_port_is_free(
    place: Clinic,
) -> None:
    await place.waiting_room(WaitingRoomPolicy.OPEN)
    url = await place.url()
    async with Client(url, await place.staff()) as therapist:  # takes the one port
        assert (await therapist.join())["type"] == "welcome"
        async with Client(url, await place.patient(ROSTER[0])) as dana:
            refused = await dana.join()  # admitted, then refused when media fails
            if refused["type"] == "welcome":
                refused = await dana.expect("refused")
            assert refused["type"] == "refused", refused
            assert refused["code"] == "media-unavailable"
            assert refused["message"]
            assert await dana.closed() == 4503
        await therapist.send(type="leave")
        await therapist.closed()
    async with Client(url, await place.patient(ROSTER[0])) as dana:  # the port is free again
        assert (await dana.join())["type"] == "welcome"
