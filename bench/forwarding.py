"""Forwarding cost: vio's ``MediaRouter`` against a minimal passthrough, MediaRelay and Janus.

One publisher sends one track to the server and K subscribers receive it: K forwarded
streams. Video is a clip at the publish caps (640x360, 15 fps by default, VP8 with a frame
counter drawn in, ~300 kbit/s; ``--fps``/``--kbps`` change it, for every backend alike), audio
a tone in 20 ms Opus packets; the two are measured separately. The server, the publisher and
the subscribers run in separate processes. Over a measuring window the server reports its own
CPU time and the RTP packets it sent; the subscribers count the frames that actually arrived
(video decoded through aiortc's whole receive path and its frame counter read back, audio
counted as reassembled Opus frames).

The backends (``--backends``, default ``vio,relay``) run in the same invocation, one after the
other on the same machine:

* ``vio``: a ``MediaRouter`` (the publisher joins as the therapist, so its video always goes
  to everyone), forwarding without decoding;
* ``passthrough``: a minimal aiortc server that forwards the publisher's reassembled frames
  undecoded to each subscriber (``bench/harness.py``, ``PassthroughBackend``);
* ``relay``: a minimal aiortc server relaying with ``MediaRelay``, which decodes the
  publisher's track once and encodes it again for every receiver;
* ``janus`` (``--janus``): Janus 1.1 VideoRoom, Debian's native C SFU, with the same publisher
  and subscribers, all inside a network namespace of the run's own (``bench/janus.py``). With
  it the default publish rate is 30 fps (~475 kbit/s), as Janus is usually measured.

Printed: every window; MediaRelay's CPU per stream over vio's; the cost of each added
subscriber from the smallest K to the largest (CPU % of a core per leg and µs per packet and
leg), and vio's over each other backend's.

    .venv/bin/python bench/forwarding.py            # K = 1, 2, 4, 8, 16; about 3 minutes
    .venv/bin/python bench/forwarding.py --quick    # K = 1, 2; under a minute
    .venv/bin/python bench/forwarding.py --janus --backends vio,passthrough   # 30 fps
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import harness as h
import janus


@dataclass(frozen=True)
class Plan:
    ks: tuple[int, ...]
    warmup_s: float
    window_s: float


FULL = Plan(ks=(1, 2, 4, 8, 16), warmup_s=2.0, window_s=5.0)
QUICK = Plan(ks=(1, 2), warmup_s=1.0, window_s=2.5)
SMOKE = Plan(ks=(1,), warmup_s=0.5, window_s=1.0)
MAX_SUBSCRIBER_PROCESSES = 4
VIDEO_SIZE = "640x360"
"""The publish caps' size (``VIO_PUBLISH_WIDTH`` x ``VIO_PUBLISH_HEIGHT``), at 15 fps."""
JANUS_FPS = 30
"""The frame rate published when Janus takes part (``--janus``), unless ``--fps`` says."""
ARRIVAL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Caps:
    """What the publisher sends: the same stream for every backend of one invocation."""

    size: str = VIDEO_SIZE
    fps: int = h.VIDEO_FPS
    kbps: int = h.VIDEO_TARGET_KBPS
    """The VP8 encoder's target; the clip spends ~300 kbit/s of 500 at 15 fps, ~475 at 30."""

    receive: str = "decode"
    """How the subscribers take what arrives: ``decode`` (aiortc's whole receive path, video
    decoded and its counter read) or ``count`` (a frame per marker bit, nothing decoded)."""

    def config(self) -> dict[str, object]:
        return {"video_size": self.size, "fps": self.fps, "kbps": self.kbps}


@dataclass(frozen=True)
class Setup:
    """How one backend's processes start: the server (and its port), the publisher, the
    subscribers (the ``i``-th process of them)."""

    label: str
    server: Callable[[], Awaitable[tuple[h.Child, int]]]
    publisher: Callable[[int], Awaitable[h.Child]]
    subscribers: Callable[[int, int], Awaitable[h.Child]]


def aiortc_setup(backend: str, variant: h.Variant, caps: Caps, *,
                 receiver_aware: bool = False) -> Setup:
    """The harness's server (``vio``, ``passthrough`` or ``relay``) and peers, on 127.0.0.1.

    vio's receiver-aware video stays off unless ``receiver_aware``: it pauses a leg whose
    receiver reports loss or a low estimate, and what is measured here is the cost of legs
    that carry their stream (the other backends never pause one).
    """
    label = f"{backend} baseline" if variant.label.endswith("baseline") else backend
    return Setup(
        label=label,
        server=lambda: h.start_server(backend, name=f"server-{label}", variant=variant,
                                      keep_video=not receiver_aware),
        publisher=lambda port: h.start_peers(port, name=f"publisher-{label}", **caps.config()),
        subscribers=lambda port, i: h.start_peers(port, name=f"subscribers-{label}-{i}",
                                                  receive=caps.receive))


def janus_setup(ns: janus.Namespace, caps: Caps) -> Setup:
    """Janus VideoRoom and the same publisher and subscribers, all inside ``ns``."""

    async def server() -> tuple[h.Child, int]:
        child = await ns.start_child("server", {}, name="server-janus")
        return child, int(await child.call("port"))

    return Setup(
        label="janus", server=server,
        publisher=lambda port: ns.start_child("publisher", {"port": port, **caps.config()},
                                              name="publisher-janus"),
        subscribers=lambda port, i: ns.start_child(
            "peers", {"port": port, "receive": caps.receive, "video_size": "320x240"},
            name=f"subscribers-janus-{i}"))


@dataclass(frozen=True)
class Row:
    backend: str
    kind: str
    k: int
    cpu_percent: float
    fps_min: float
    fps_median: float
    packets_per_s: float
    kbps_per_stream: float
    bad_frames: int

    @property
    def per_stream(self) -> float:
        return self.cpu_percent / self.k

    @property
    def us_per_packet(self) -> float:
        return 1e4 * self.cpu_percent / self.packets_per_s if self.packets_per_s else float("nan")


async def run_backend(setup: Setup, kinds: list[str], plan: Plan) -> list[Row]:
    label = backend = setup.label
    server, port = await setup.server()
    subscribers = min(max(plan.ks), MAX_SUBSCRIBER_PROCESSES)
    children: list[h.Child | None] = [server]
    rows: list[Row] = []
    try:
        publisher = await setup.publisher(port)
        children.append(publisher)
        workers = [await setup.subscribers(port, i) for i in range(subscribers)]
        children += workers
        for kind in kinds:
            source = f"pub-{kind}"
            leg = f"{source}/{kind}"
            await publisher.call("add", peers=[{"pid": source, "publish": [kind],
                                                "therapist": True}])
            subs: list[str] = []
            for k in plan.ks:
                while len(subs) < k:
                    pid = f"sub-{kind}-{len(subs)}"
                    await workers[len(subs) % subscribers].call("add", peers=[{"pid": pid}])
                    subs.append(pid)

                async def all_receiving(wanted: list[str] = subs, leg: str = leg) -> bool:
                    legs = await h.stats(workers)
                    return all(legs.get(p, {}).get(leg, {}).get("frames", 0) >= 3
                               for p in wanted)

                await h.wait_until(all_receiving, ARRIVAL_TIMEOUT_S,
                                   f"{backend}: {kind} at {k} subscribers")
                await asyncio.sleep(plan.warmup_s)
                window = await h.measure(server, workers, plan.window_s)
                fps = [window.fps.get((p, leg), 0.0) for p in subs]
                rows.append(Row(
                    backend=label, kind=kind, k=k, cpu_percent=window.cpu_percent,
                    fps_min=min(fps), fps_median=h.median(fps),
                    packets_per_s=window.packets / window.seconds,
                    kbps_per_stream=8 * window.bytes / window.seconds / 1000 / k,
                    bad_frames=window.errors + window.decode_failures))
                print(f"  {label:12} {kind:5} K={k:<2}  server {window.cpu_percent:5.1f} % "
                      f"CPU, {min(fps):.1f} fps min", file=sys.stderr, flush=True)
            await asyncio.gather(*(w.call("remove") for w in workers))
            await publisher.call("remove")
            await asyncio.sleep(0.5)
    finally:
        await h.close_all(children)
    return rows


@dataclass(frozen=True)
class Increment:
    """What each subscriber added to one backend's cost for one kind, from K = a to K = b."""

    backend: str
    kind: str
    k_from: int
    k_to: int
    cpu_per_leg: float
    """Server CPU % (of a core) per added subscriber: (CPU(b) - CPU(a)) / (b - a)."""
    packets_per_leg: float
    """RTP packets per second each added subscriber was sent."""

    @property
    def us_per_packet(self) -> float:
        """Server CPU per added packet and leg, in microseconds."""
        if self.packets_per_leg <= 0:
            return float("nan")
        return 1e4 * self.cpu_per_leg / self.packets_per_leg


def increments(rows: list[Row]) -> list[Increment]:
    """Per backend and kind, the cost per added leg between the smallest and the largest K."""
    found = []
    for backend, kind in dict.fromkeys((r.backend, r.kind) for r in rows):
        runs = sorted((r for r in rows if (r.backend, r.kind) == (backend, kind)),
                      key=lambda r: r.k)
        first, last = runs[0], runs[-1]
        if last.k == first.k:
            continue
        legs = last.k - first.k
        found.append(Increment(backend, kind, first.k, last.k,
                               (last.cpu_percent - first.cpu_percent) / legs,
                               (last.packets_per_s - first.packets_per_s) / legs))
    return found


def _changes() -> str:
    """Says so when this checkout's ``vio`` has uncommitted changes (they were measured too)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        changed = subprocess.run(["git", "status", "--porcelain", "--", "vio"],
                                 capture_output=True, text=True, check=True,
                                 cwd=h.SCRIPT.parent).stdout.split("\n")
        count = sum(1 for line in changed if line.strip())
        if count:
            return f" plus uncommitted changes to {count} files in vio/"
    return ""


def _ratio(a: float, b: float) -> float:
    """``a / b``, or NaN when ``b`` is not positive (an increment lost in the noise)."""
    return a / b if b > 0 else float("nan")


def report(rows: list[Row], plan: Plan, loop: str, started: float, machine: str,
           caps: Caps, backends: list[str], receiver_aware: bool, commit: str,
           wall: float) -> None:
    """Everything measured; ``commit`` and ``wall`` (the time) are those of the start."""
    print(f"# Forwarding cost, 1 publisher -> K subscribers: {', '.join(backends)}")
    print(f"machine: {machine}")
    print(f"commit: {commit}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(wall))}; "
          f"server loop: {loop}; window {plan.window_s:g} s "
          f"after {plan.warmup_s:g} s warm-up")
    if not receiver_aware:
        print("vio: receiver-aware video off (every leg carries its stream, as with the others)")
    print(f"media: video {caps.size} {caps.fps} fps VP8 (counter + chroma noise, encoder "
          f"target {caps.kbps} kbit/s), audio Opus 20 ms frames; the same clips for every "
          f"backend; subscribers {'decode' if caps.receive == 'decode' else 'count frames'}\n")
    print(h.table(
        ["backend", "kind", "K", "server CPU %", "CPU % per stream", "fps min", "fps median",
         "packets/s out", "kbit/s per stream", "CPU us per packet", "bad frames"],
        [[r.backend, r.kind, r.k, r.cpu_percent, r.per_stream, r.fps_min, r.fps_median,
          r.packets_per_s, r.kbps_per_stream, r.us_per_packet, r.bad_frames] for r in rows]))
    print()
    by_key = {(r.backend, r.kind, r.k): r for r in rows}
    ratio_rows = []
    for (backend, kind, k), vio in sorted(by_key.items()):
        relay = by_key.get(("relay", kind, k))
        if backend == "vio" and relay is not None:
            ratio_rows.append([kind, k, vio.per_stream, relay.per_stream,
                               relay.per_stream / vio.per_stream])
    if ratio_rows:
        print("## MediaRelay CPU per stream / vio CPU per stream")
        print(h.table(["kind", "K", "vio CPU % per stream", "MediaRelay CPU % per stream",
                       "ratio"], ratio_rows))
        for kind, k, _, _, ratio in ratio_rows:
            print(f"ratio {kind} K={k}: {ratio:.2f}")
    steps = increments(rows)
    if steps:
        print("\n## Cost per added subscriber (from the smallest K to the largest)")
        print(h.table(["backend", "kind", "K", "CPU % per added leg", "packets/s per leg",
                       "CPU us per added packet"],
                      [[i.backend, i.kind, f"{i.k_from}->{i.k_to}", i.cpu_per_leg,
                        i.packets_per_leg, i.us_per_packet] for i in steps]))
        by_leg = {(i.backend, i.kind): i for i in steps}
        ours = [b for b in dict.fromkeys(i.backend for i in steps) if b.startswith("vio")]
        for vio, other, kind in itertools.product(ours, ("janus", "passthrough", "relay"),
                                                  ("video", "audio")):
            mine, theirs = by_leg.get((vio, kind)), by_leg.get((other, kind))
            if mine is not None and theirs is not None:
                print(f"ratio {vio}/{other} {kind} per leg: "
                      f"{_ratio(mine.cpu_per_leg, theirs.cpu_per_leg):.2f}, per packet: "
                      f"{_ratio(mine.us_per_packet, theirs.us_per_packet):.2f}")
    baseline = [r for r in rows if r.backend == "vio baseline"]
    if baseline:
        print("\n## vio CPU per packet / the baseline's, side by side")
        for old in baseline:
            new = by_key.get(("vio", old.kind, old.k))
            if new is not None:
                print(f"ratio vio / vio baseline {old.kind} K={old.k}: "
                      f"{new.us_per_packet / old.us_per_packet:.2f}")
    print(f"\nfinished in {time.monotonic() - started:.0f} s")


@contextlib.contextmanager
def janus_namespace(wanted: bool) -> Iterator[janus.Namespace | None]:
    """The network namespace for Janus, if it is wanted and can run here; gone afterwards."""
    if not wanted:
        yield None
        return
    reason = janus.unavailable()
    if reason is not None:
        print(f"janus: skipped, {reason}", file=sys.stderr)
        yield None
        return
    with janus.Namespace() as ns:
        yield ns


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="K = 1, 2 and short windows")
    parser.add_argument("--smoke", action="store_true", help="K = 1, tiny windows (tests)")
    parser.add_argument("--ks", help="the Ks to measure, e.g. 1,16 (instead of the plan's)")
    parser.add_argument("--kind", choices=["video", "audio", "both"], default="both")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="the servers' event loop")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run vio from the vio package in DIR (e.g. an older commit's, "
                             "from `git archive`), right after this checkout's")
    parser.add_argument("--vio", metavar="DIR",
                        help="run the vio backend from the vio package in DIR instead of this "
                             "checkout's (e.g. a commit's, from `git archive`, so that edits in "
                             "progress are not measured)")
    parser.add_argument("--backends", default="vio,relay",
                        help="which of vio, passthrough, relay, janus to run, in order "
                             "(default vio,relay)")
    parser.add_argument("--janus", action="store_true",
                        help="also run Janus VideoRoom (Debian's janus, in a network namespace); "
                             f"publishes {JANUS_FPS} fps unless --fps says otherwise")
    parser.add_argument("--fps", type=int, help=f"video frame rate (default {h.VIDEO_FPS}, "
                                                f"{JANUS_FPS} with --janus)")
    parser.add_argument("--kbps", type=int, default=h.VIDEO_TARGET_KBPS,
                        help="the VP8 encoder's target bitrate for the published clip")
    parser.add_argument("--receive", choices=["decode", "count"], default="decode",
                        help="subscribers decode video and read its counter (default), or "
                             "count RTP frames only, which keeps 16 of them at 30 fps light")
    parser.add_argument("--receiver-aware", action="store_true",
                        help="leave vio's receiver-aware video on (it may pause legs whose "
                             "receivers report loss; off by default here)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.ks:
        plan = Plan(ks=tuple(sorted({int(k) for k in args.ks.split(",")})),
                    warmup_s=plan.warmup_s, window_s=plan.window_s)
    kinds = ["video", "audio"] if args.kind == "both" else [args.kind]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.janus and "janus" not in backends:
        backends.insert(1, "janus")
    if unknown := set(backends) - {"vio", "relay", "passthrough", "janus"}:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    caps = Caps(fps=args.fps or (JANUS_FPS if "janus" in backends else h.VIDEO_FPS),
                kbps=args.kbps, receive=args.receive)
    started, wall = time.monotonic(), time.time()
    machine = h.machine()
    commit = h.git_head() + _changes()
    variant, *others = h.variants(args.loop, args.baseline)
    if args.vio:
        if not (Path(args.vio) / "vio" / "media").is_dir():
            parser.error(f"{args.vio} holds no vio package")
        variant = dataclasses.replace(variant, pythonpath=str(Path(args.vio)))
        commit += f"; vio from {args.vio}"
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    rows: list[Row] = []
    ran: list[str] = []
    with janus_namespace("janus" in backends) as ns:
        for backend in backends:
            if backend == "janus":
                if ns is None:
                    continue
                setups = [janus_setup(ns, caps)]
            elif backend == "vio":
                setups = [aiortc_setup("vio", v, caps, receiver_aware=args.receiver_aware)
                          for v in (variant, *others)]
            else:
                setups = [aiortc_setup(backend, variant, caps)]
            for setup in setups:
                rows += await run_backend(setup, kinds, plan)
            ran.append(backend)
    report(rows, plan, args.loop, started, machine, caps, ran, args.receiver_aware, commit,
           wall)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(asyncio.run(main()))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("forwarding.py: stopped (SIGTERM or Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
