"""A whole room through vio's selective forwarding: server CPU, frame rates, late joiners.

N participants (one therapist, N - 1 patients) join one ``MediaRouter`` with
``max_video_forwarded=6``: each receives every other participant's audio and the video of the
therapist and the six most recent speakers. Every participant publishes 320x240 VP8 at 15 fps
and ~300 kbit/s (a frame counter with faint noise, encoded once and replayed, see
``harness.vp8_clip``) and a tone in 20 ms Opus packets; all of them are loud, so all count as
speakers. Participants are aiortc peers spread over worker processes; the server runs in its
own process; everything is on 127.0.0.1.

Over a measuring window the server reports its CPU time and the RTP packets it sent; the
participants count what arrives per publisher at the RTP level (a frame per marker bit, nothing
reassembled or decoded, to keep the load generators cheap). Then one participant leaves and a
late joiner (in its own process, decoding video) joins again and again: the seconds from its
``join`` to its first remote video frame, and to frames from every video it is sent, as
p50/p95 over the repeats.

    .venv/bin/python bench/room.py           # N = 4, 8, 12; about a minute
    .venv/bin/python bench/room.py --quick   # N = 4, 8; under a minute
    .venv/bin/python bench/room.py --loops asyncio,uvloop   # the server on each event loop
    .venv/bin/python bench/room.py --n 8 --repeat 3 --baseline /tmp/old   # A/B, alternating
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import harness as h


@dataclass(frozen=True)
class Plan:
    ns: tuple[int, ...]
    warmup_s: float
    window_s: float
    joins: int


FULL = Plan(ns=(4, 8, 12), warmup_s=2.0, window_s=5.0, joins=10)
QUICK = Plan(ns=(4, 8), warmup_s=1.0, window_s=2.5, joins=4)
SMOKE = Plan(ns=(4,), warmup_s=0.5, window_s=1.0, joins=2)
MAX_VIDEO_FORWARDED = 6
WORKERS = 3
ARRIVAL_TIMEOUT_S = 40.0
JOIN_TIMEOUT_S = 10.0
JOIN_PAUSE_S = 0.5


@dataclass(frozen=True)
class Row:
    server: str
    n: int
    video_legs: int
    audio_legs: int
    cpu_percent: float
    video_fps: list[float]
    audio_fps: list[float]
    packets_per_s: float
    first: list[float]
    tiles: list[float]
    failed_joins: int
    bad_frames: int
    peers_cpu_percent: float
    connections_lost: int

    @property
    def per_leg(self) -> float:
        return self.cpu_percent / (self.video_legs + self.audio_legs)

    @property
    def us_per_packet(self) -> float:
        return 1e4 * self.cpu_percent / self.packets_per_s if self.packets_per_s else float("nan")


def video_tiles(n: int) -> int:
    """Videos each participant of an ``n``-person room receives."""
    return min(n - 1, 1 + MAX_VIDEO_FORWARDED)


async def run_room(n: int, plan: Plan, variant: h.Variant, profile: Path | None) -> Row:
    server, port = await h.start_server("vio", name=f"server-{n}", variant=variant,
                                        max_video_forwarded=MAX_VIDEO_FORWARDED)
    children: list[h.Child | None] = [server]
    try:
        workers = list(await asyncio.gather(*(
            h.start_peers(port, name=f"peers-{n}-{i}", receive="count") for i in range(WORKERS))))
        late = await h.start_peers(port, name=f"late-joiner-{n}", receive="decode")
        children += [*workers, late]
        pids = ["therapist", *(f"patient-{i}" for i in range(1, n))]
        for i, pid in enumerate(pids):
            await workers[i % WORKERS].call("add", peers=[{
                "pid": pid, "publish": ["audio", "video"], "therapist": pid == "therapist"}])

        async def everyone_receives() -> bool:
            legs = await h.stats(workers)
            for pid in pids:
                mine = legs.get(pid, {})
                audio = sum(1 for k, s in mine.items() if k.endswith("/audio") and s["frames"])
                video = sum(1 for k, s in mine.items() if k.endswith("/video") and s["frames"])
                if audio < n - 1 or video < video_tiles(n):
                    return False
            return True

        await h.wait_until(everyone_receives, ARRIVAL_TIMEOUT_S, f"{n} participants' media")
        await asyncio.sleep(plan.warmup_s)
        spy = start_profile(server, plan.window_s, profile)
        window = await h.measure(server, workers, plan.window_s)
        await finish_profile(spy)
        video_fps = [fps for (pid, key), fps in window.fps.items()
                     if key.endswith("/video") and key.split("/")[0] in
                     window.forwarded.get(pid, [])]
        audio_fps = [fps for (_, key), fps in window.fps.items() if key.endswith("/audio")]

        await workers[(n - 1) % WORKERS].call("remove", pids=[pids[-1]])
        await asyncio.sleep(JOIN_PAUSE_S)
        joins = await late.call("timed_joins", within=plan.joins * 3 * JOIN_TIMEOUT_S,
                                pid="late", repeats=plan.joins, tiles=video_tiles(n),
                                wait_s=JOIN_TIMEOUT_S, pause=JOIN_PAUSE_S)
        lost = sum(r["lost"] for r in await asyncio.gather(
            *(w.call("stats") for w in [*workers, late])))
        first = [j["first"] for j in joins if j["first"] is not None]
        tiles = [j["all"] for j in joins if j["all"] is not None]
        row = Row(server=variant.label, n=n, video_legs=len(video_fps), audio_legs=len(audio_fps),
                  cpu_percent=window.cpu_percent, video_fps=video_fps, audio_fps=audio_fps,
                  packets_per_s=window.packets / window.seconds, first=first, tiles=tiles,
                  failed_joins=sum(1 for j in joins if j["all"] is None),
                  bad_frames=window.errors + window.decode_failures,
                  peers_cpu_percent=window.peers_cpu_percent, connections_lost=lost)
        print(f"  {variant.label:16} N={n:<2}  server {row.cpu_percent:5.1f} % CPU, video "
              f"{min(video_fps):.1f} fps min, first frame p50 {h.median(first):.2f} s",
              file=sys.stderr, flush=True)
        return row
    finally:
        await h.close_all(children)


def start_profile(server: h.Child, seconds: float,
                  path: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy on the server for the window, if asked for and installed."""
    if path is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found; no profile", file=sys.stderr)
        return None
    fmt = "raw" if path.suffix == ".txt" else "flamegraph"
    return subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--duration",
                             str(max(1, round(seconds))), "--rate", "200", "--format", fmt,
                             "--output", str(path), "--nonblocking"],
                            stdout=subprocess.DEVNULL)


def profile_summary(path: Path, top: int = 15) -> str:
    """The functions where a py-spy ``raw`` profile spent most samples (self and total)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        samples += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            total[name] += int(count)
    rows = [[f"{100 * n / samples:.1f}", f"{100 * total[name] / samples:.1f}", name]
            for name, n in own.most_common(top)]
    return h.table(["self %", "total %", "function (file)"], rows)


async def finish_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None:
        return
    if not await h.poll(lambda: spy.poll() is not None, 20, 0.1):
        spy.kill()
        spy.wait()


def report(rows: list[Row], plan: Plan, started: float, machine: str) -> None:
    print("# Room forwarding: vio MediaRouter, selective video (max_video_forwarded=6)")
    print(f"machine: {machine}")
    print(f"commit: {h.git_head()}; date: {time.strftime('%Y-%m-%d %H:%M %Z')}; window "
          f"{plan.window_s:g} s after {plan.warmup_s:g} s warm-up; {plan.joins} late joins per N")
    print("media: every participant publishes 320x240 15 fps VP8 (counter + chroma noise, "
          "~300 kbit/s) and Opus 20 ms frames; one therapist\n")
    print(h.table(
        ["server", "N", "video legs", "audio legs", "server CPU %", "CPU % per leg",
         "video fps min", "video fps median", "audio fps min", "audio fps median",
         "packets/s out", "CPU us per packet", "participants' CPU %", "bad frames"],
        [[r.server, r.n, r.video_legs, r.audio_legs, r.cpu_percent, r.per_leg,
          min(r.video_fps, default=0.0), h.median(r.video_fps), min(r.audio_fps, default=0.0),
          h.median(r.audio_fps), r.packets_per_s, r.us_per_packet, r.peers_cpu_percent,
          r.bad_frames]
         for r in rows]))
    print("\n## Late joiner: seconds from join to remote video")
    print(h.table(
        ["server", "N", "joins", "first frame p50", "first frame p95", "all tiles p50",
         "all tiles p95", "joins without all tiles", "connections lost"],
        [[r.server, r.n, len(r.first), h.percentile(r.first, 50), h.percentile(r.first, 95),
          h.percentile(r.tiles, 50), h.percentile(r.tiles, 95), r.failed_joins,
          r.connections_lost] for r in rows]))
    servers = list(dict.fromkeys(r.server for r in rows))
    runs: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    for r in rows:
        runs[(r.server, r.n)].append(r.us_per_packet)
    if len(servers) > 1:
        print(f"\n## Server CPU per packet against {servers[0]!r}, side by side "
              "(medians over the runs)")
        for other in servers[1:]:
            for n in plan.ns:
                a, b = runs.get((servers[0], n)), runs.get((other, n))
                if a and b:
                    each = ", ".join(f"{y / x:.2f}" for x, y in zip(a, b, strict=False))
                    print(f"ratio {other} / {servers[0]} N={n}: "
                          f"{h.median(b) / h.median(a):.2f} (run by run: {each})")
    for r in rows:
        print(f"room {r.server} N={r.n}: cpu {r.cpu_percent:.2f} %, "
              f"per leg {r.per_leg:.3f} %, us/packet {r.us_per_packet:.1f}")
    print(f"\nfinished in {time.monotonic() - started:.0f} s")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 4, 8 and short windows")
    parser.add_argument("--smoke", action="store_true", help="N = 4, tiny windows (tests)")
    parser.add_argument("--n", type=int, action="append", help="room size(s) instead")
    parser.add_argument("--joins", type=int, help="late joins per room size instead")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each room size this many times per server, alternating the "
                             "servers' order; ratios compare medians")
    parser.add_argument("--loops", default="asyncio",
                        help="server event loops to compare, e.g. asyncio,uvloop")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run the server on the vio package in DIR (e.g. an older "
                             "commit's, from `git archive`), interleaved with this checkout's")
    parser.add_argument("--profile", type=Path,
                        help="py-spy the server during the largest room's window into this file "
                             "(.txt: collapsed stacks, else an SVG flame graph); other servers "
                             "(--loops, --baseline) get their name added to the file's")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    plan = Plan(ns=tuple(args.n or plan.ns), warmup_s=plan.warmup_s, window_s=plan.window_s,
                joins=plan.joins if args.joins is None else args.joins)
    servers = h.variants(args.loops, args.baseline)
    started = time.monotonic()
    machine = h.machine()
    rows = []
    for n in plan.ns:
        for run in range(args.repeat):
            for variant in servers if run % 2 == 0 else servers[::-1]:
                profile = None
                if args.profile is not None and n == max(plan.ns) and run == 0:
                    profile = args.profile if variant is servers[0] else args.profile.with_stem(
                        f"{args.profile.stem}-{variant.label.replace(' ', '-')}")
                rows.append(await run_room(n, plan, variant, profile))
    report(rows, plan, started, machine)
    if args.profile is not None and args.profile.suffix == ".txt":
        for variant in servers:
            path = args.profile if variant is servers[0] else args.profile.with_stem(
                f"{args.profile.stem}-{variant.label.replace(' ', '-')}")
            if path.exists():
                print(f"\n## py-spy, server {variant.label!r}, N={max(plan.ns)}: "
                      f"share of samples by function\n{profile_summary(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
