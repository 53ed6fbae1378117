"""Receiver-aware video, end to end: a patient on a throttled link keeps audio, loses video
with a message, and gets it back when the link recovers.

::

    server 10.99.3.1 (vio serve --demo; the therapist and Ana publish from here)
      │ eth0 ── tc tbf 200 kbit/s toward the patient, while throttled
    patient 10.99.3.2 (the receiver: audio and video frames counted, messages kept)

Every address exists only inside the two namespaces (:mod:`tests.netns`), deleted with every
process in them at the end. The publishers send a noisy camera (far more than 200 kbit/s) and
the therapist a tone; the receiver publishes nothing. Each participant is
``python -m tests.bandwidth_peer`` (a :class:`vio.bot.Bot`), which writes what it received to
a status file that the test reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.conftest import REQUIRE_SERVICES, seconds, stop_process
from tests.netns import Namespace, Network
from vio.media.bandwidth import BandwidthRules

ROOT = Path(__file__).parent.parent
VIO = str(Path(sys.executable).with_name("vio"))
CHROMIUM = os.environ.get("VIO_TEST_CHROMIUM", "/usr/bin/chromium")

SERVER, PATIENT = "10.99.3.1", "10.99.3.2"
WEB_PORT = 8000
THROTTLE = ["tbf", "rate", "200kbit", "burst", "4kb", "latency", "100ms"]
"""The patient's downlink while throttled (a qdisc on the server's end of the veth)."""

SERVER_START_SECONDS = 60.0
"""vio serve --demo: migrations, the demo, then the listener."""
PEER_SECONDS = 180.0
"""The longest any participant stays (each is stopped when the test is done)."""
MEDIA_SECONDS = 30.0
"""How long until the receiver gets both publishers' video (joins, admission, ICE, keyframes)."""
PAUSE_SECONDS = 20.0
"""How long the throttled receiver may take to be told its video is paused."""
SETTLE_SECONDS = 0.5
"""After the last pause, packets already queued on the throttled link may still arrive."""
WINDOW_SECONDS = 3.0
"""How long the receiver's audio and the paused video are counted while throttled."""
THROTTLED_SECONDS = 12.0
PROBE_UNDONE_SECONDS = BandwidthRules().probe_s + BandwidthRules().settle_s + 2.0
"""A resume tried on the throttled link is undone within this (the rules' probe window and
settle time, and the receiver's report interval)."""
"""How long the link stays throttled: long enough for a resume to be tried and undone."""
IN_FLIGHT_FRAMES = 2
"""Video frames of a paused publisher that may still arrive after ``SETTLE_SECONDS``."""
MIN_AUDIO_SHARE = 0.6
"""Of the 50 Opus frames a second sent, the share that must arrive while throttled."""
RESUME_SECONDS = 60.0
"""How long after the limit is lifted the receiver may take to get every video back."""
FRAMES_AFTER_RESUME = 15
"""Video frames from each publisher that must arrive after the resume (one second's worth)."""
BROWSER_SECONDS = 60.0
"""How long the page may take to join and play the therapist's video (Chromium's start)."""
POLL_SECONDS = 0.25


def _unavailable() -> None:
    why = netns.unavailable()
    if why is None and subprocess.run(["tc", "-V"], capture_output=True).returncode != 0:
        why = "tc (iproute2) is not installed"
    if why is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"bandwidth test cannot run: {why}")
        pytest.skip(f"bandwidth test cannot run: {why}")


@contextlib.contextmanager
def started(ns: Namespace, args: list[str], log: Path, **popen: Any) -> Iterator[None]:
    with open(log, "w") as out:
        process = ns.popen(args, stdout=out, stderr=subprocess.STDOUT, **popen)
        try:
            yield
        finally:
            stop_process(process)  # type: ignore[arg-type]


class Status:
    """What one peer last wrote to its status file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def wait(self, what: str, within: float, ok: Callable[[dict[str, Any]], bool],
             log: Path) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            status = self.read()
            if status and ok(status):
                return status
            time.sleep(POLL_SECONDS)
        raise AssertionError(f"{what} within {within:.0f} s; last status {self.read()}; "
                             f"log: {log.read_text()[-3000:]}")


def by_role(status: dict[str, Any], kind: str, role: str) -> int:
    return sum(n for pid, n in status[kind].items() if status["roles"].get(pid) == role)


@dataclass
class Place:
    """The two namespaces, vio serving in "server", and a way to start participants."""

    server: Namespace
    patient: Namespace
    links: dict[str, Any]
    tmp: Path
    env: dict[str, str]

    def peer(self, ns: Namespace, name: str, **args: Any) -> contextlib.AbstractContextManager[
            None]:
        """``python -m tests.bandwidth_peer`` in ``ns``, writing its status to ``name.json``."""
        args = {"seconds": seconds(PEER_SECONDS), "status": str(self.tmp / f"{name}.json"),
                **args}
        return started(ns, [sys.executable, "-m", "tests.bandwidth_peer", json.dumps(args)],
                       self.tmp / f"{name}.log", cwd=ROOT, env=self.env)

    def therapist(self) -> contextlib.AbstractContextManager[None]:
        """The therapist publishes the noisy camera and the tone, and admits everyone."""
        therapist = self.links["therapist"]
        return self.peer(self.server, "therapist", link=therapist["login"],
                         email=therapist["email"], password=therapist["password"],
                         publish=True, mic=True, admit_all=True)

    def patient_links(self) -> list[str]:
        return [p["link"] for p in self.links["patients"] if p["on_roster"]]

    def throttle(self, on: bool) -> None:
        """The patient's downlink: ``THROTTLE`` on the server's end of the veth, or nothing."""
        args = ["add", "dev", "eth0", "root", *THROTTLE] if on else ["del", "dev", "eth0",
                                                                      "root"]
        self.server.run(["tc", "qdisc", *args], check=True)


@contextlib.contextmanager
def veth_room(tmp_path: Path) -> Iterator[Place]:
    _unavailable()
    with Network() as net:
        server, patient = net.namespace("server"), net.namespace("patient")
        net.link(server, "eth0", f"{SERVER}/24", patient, "eth0", f"{PATIENT}/24")
        env = {key: value for key, value in os.environ.items()
               if not key.lower().endswith("_proxy") and not key.startswith("VIO_")}
        env |= {"VIO_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/vio.sqlite3",
                "VIO_PUBLIC_BASE_URL": f"http://{SERVER}:{WEB_PORT}",
                "VIO_SECRET_KEY": "bandwidth-test", "VIO_ICE_ANNOUNCE_ADDRESSES": SERVER}
        serve = [VIO, "serve", "--demo", "--host", "0.0.0.0", "--port", str(WEB_PORT),
                 "--insecure-http"]
        with started(server, serve, tmp_path / "server.log", cwd=tmp_path, env=env):
            patient.wait_for_tcp(SERVER, WEB_PORT, seconds(SERVER_START_SECONDS))
            links = json.loads(subprocess.run([VIO, "demo-links", "--json"], cwd=tmp_path,
                                              env=env, check=True, capture_output=True,
                                              text=True).stdout)
            peer_env = {k: v for k, v in env.items() if not k.startswith("VIO_")}
            yield Place(server, patient, links, tmp_path, peer_env)
    assert not any(ns.startswith(net.prefix) for ns in netns.namespace_files())


def test_a_throttled_receiver_keeps_audio_loses_video_with_a_message_and_gets_it_back(
    tmp_path: Path,
) -> None:
    with veth_room(tmp_path) as place:
        receiver_link, ana_link = place.patient_links()[:2]
        server, patient = place.server, place.patient
        with (place.therapist(),
              place.peer(server, "ana", link=ana_link, publish=True, mic=False),
              place.peer(patient, "receiver", link=receiver_link, publish=False,
                         mic=False)):
            receiver = Status(tmp_path / "receiver.json")
            log = tmp_path / "receiver.log"
            receiver.wait("the receiver gets both videos", seconds(MEDIA_SECONDS),
                          lambda s: by_role(s, "video", "therapist") > FRAMES_AFTER_RESUME
                          and by_role(s, "video", "patient") > FRAMES_AFTER_RESUME, log)
            assert receiver.read()["messages"] == []  # nothing paused on a good link

            place.throttle(True)
            throttled_at = time.monotonic()
            paused = receiver.wait("a video-paused message", seconds(PAUSE_SECONDS),
                                   lambda s: bool(s["paused"]), log)
            # Each video needs more than the link carries: all of them go, one by one.
            receiver.wait("every video paused", seconds(PAUSE_SECONDS),
                          lambda s: len(s["paused"]) == 2, log)
            time.sleep(SETTLE_SECONDS)
            start = receiver.read()
            time.sleep(WINDOW_SECONDS)
            end = receiver.read()
            heard = by_role(end, "audio", "therapist") - by_role(start, "audio", "therapist")
            elapsed = end["at"] - start["at"]
            # Publishers paused from the start of the window to its end, by every message.
            held = set(start["paused"]).intersection(
                *(listed for at, listed in end["messages"] if at > start["at"]))
            seen = {pid: end["video"][pid] - start["video"].get(pid, 0) for pid in held}

            time.sleep(max(0.0, throttled_at + seconds(THROTTLED_SECONDS) - time.monotonic()))
            late = receiver.read()
            place.throttle(False)
            lifted = time.monotonic()
            back = receiver.wait("every video resumed", seconds(RESUME_SECONDS),
                                 lambda s: s["messages"][-1][0] > lifted
                                 and not s["paused"], log)
            again = receiver.wait(
                "video frames after the resume", seconds(MEDIA_SECONDS),
                lambda s: all(by_role(s, "video", role) - by_role(back, "video", role)
                              >= FRAMES_AFTER_RESUME for role in ("therapist", "patient"))
                and not s["paused"], log)

    assert heard >= MIN_AUDIO_SHARE * 50 * elapsed, (heard, elapsed)
    ids = {role: pid for pid, role in paused["roles"].items()}
    assert ids["patient"] in held, (start, end)  # the least important stays paused longest
    assert all(n <= IN_FLIGHT_FRAMES for n in seen.values()), seen
    # Still throttled, the other patient's video has not come back: no resume has lasted.
    assert ids["patient"] in late["paused"], late
    throttled_audio = by_role(late, "audio", "therapist") - by_role(paused, "audio",
                                                                     "therapist")
    throttled_share = throttled_audio / (50 * (late["at"] - paused["at"]))
    for _, listed in again["messages"]:
        # The therapist's video is never paused before the other patient's.
        assert ids["therapist"] not in listed or ids["patient"] in listed, listed
        assert listed == sorted(listed, key=[ids["therapist"], ids["patient"]].index)
    roles = again["roles"]
    history = [(round(at - throttled_at, 1), [roles[p] for p in listed])
               for at, listed in again["messages"]]
    print(f"\nfirst paused {[roles[p] for p in paused['paused']]} "
          f"{paused['at'] - throttled_at:.1f} s after the throttle; {heard} audio frames "
          f"in {elapsed:.1f} s while paused, video frames of those held {seen}; every "
          f"video back {back['at'] - lifted:.1f} s after the limit was lifted (lifted at "
          f"{lifted - throttled_at:.1f} s); audio from the first pause to the lift "
          f"{throttled_share:.0%} of what was sent; video-paused messages (s, roles): "
          f"{history}")


CAPTION = "Video paused — weak connection"
PAUSED_ANNOUNCEMENT = "Some video is paused because your connection is weak."
BACK_ANNOUNCEMENT = "Video is back."
AUDIO_SAMPLE_RATE = 48000
"""Chromium counts received audio in samples (``totalSamplesReceived``)."""


@pytest.mark.browser
def test_the_room_page_on_a_throttled_link_marks_the_paused_tile_keeps_audio_and_recovers(
    tmp_path: Path,
) -> None:
    """Chromium as the receiver: its REMB (one for all its streams) and receiver reports drive
    the pause; the page marks the tile with its caption and says so; audio keeps playing;
    after the limit is lifted the tile is unmarked and the video plays again."""
    if not Path(CHROMIUM).exists():
        if REQUIRE_SERVICES:
            pytest.fail(f"{CHROMIUM} is not installed")
        pytest.skip(f"{CHROMIUM} is not installed")
    with veth_room(tmp_path) as place:
        args = {"link": place.patient_links()[0], "base_url": f"http://{SERVER}:{WEB_PORT}",
                "status": str(tmp_path / "page.json"), "seconds": seconds(PEER_SECONDS)}
        page_log = tmp_path / "page.log"
        with (place.therapist(),
              started(place.patient, [sys.executable, "-m", "tests.browser.bandwidth",
                                      json.dumps(args)], page_log, cwd=ROOT,
                      env={**place.env, "PYTHONPATH": str(ROOT)})):
            page = Status(tmp_path / "page.json")
            before = page.wait("the page plays the therapist's video", seconds(BROWSER_SECONDS),
                               lambda s: len(s["tiles"]) == 1
                               and s["frames"] > FRAMES_AFTER_RESUME, page_log)
            assert not before["tiles"][0]["paused"] and before["tiles"][0]["caption"] is None

            place.throttle(True)
            throttled_at = time.monotonic()
            paused = page.wait("the tile marked paused", seconds(PAUSE_SECONDS),
                               lambda s: s["tiles"][0]["paused"], page_log)
            time.sleep(SETTLE_SECONDS + WINDOW_SECONDS)
            held = page.read()
            time.sleep(max(0.0, throttled_at + seconds(THROTTLED_SECONDS) - time.monotonic()))
            # A probe may be under way at this moment; one that lasted would keep the tile
            # unmarked past the time a failed probe takes to be undone.
            late = page.wait("the tile paused at the end of the throttle",
                             seconds(PROBE_UNDONE_SECONDS), lambda s: s["tiles"][0]["paused"],
                             page_log)
            place.throttle(False)
            lifted = time.monotonic()
            back = page.wait("the tile unmarked", seconds(RESUME_SECONDS),
                             lambda s: not s["tiles"][0]["paused"], page_log)
            again = page.wait("video frames after the resume", seconds(MEDIA_SECONDS),
                              lambda s: s["frames"] - back["frames"] >= FRAMES_AFTER_RESUME
                              and not s["tiles"][0]["paused"], page_log)

    assert paused["tiles"][0]["caption"] == CAPTION, paused
    assert paused["announcement"].startswith(PAUSED_ANNOUNCEMENT), paused
    heard = (held["audio"] - paused["audio"]) / AUDIO_SAMPLE_RATE
    assert heard >= MIN_AUDIO_SHARE * (held["at"] - paused["at"]), (paused, held)
    assert late["tiles"][0]["paused"], late  # no resume lasted while throttled
    assert again["tiles"][0]["caption"] is None and again["announcement"] == BACK_ANNOUNCEMENT
    print(f"\nthe page: caption {paused['tiles'][0]['caption']!r} "
          f"{paused['at'] - throttled_at:.1f} s after the throttle; {heard:.1f} s of audio in "
          f"{held['at'] - paused['at']:.1f} s while paused; unmarked {back['at'] - lifted:.1f} s "
          f"after the limit was lifted (at {lifted - throttled_at:.1f} s), then "
          f"{again['frames'] - back['frames']} frames in {again['at'] - back['at']:.1f} s")
