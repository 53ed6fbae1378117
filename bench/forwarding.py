"""Forwarding cost: vio's passthrough ``MediaRouter`` against aiortc's ``MediaRelay``.

One publisher sends one track to the server and K subscribers receive it: K forwarded
streams. Video is a clip at the publish caps (640x360, 15 fps, VP8 at ~300 kbit/s, a frame
counter drawn in), audio a tone in 20 ms Opus packets; the two are measured separately. The
server, the publisher and the subscribers run in separate processes on 127.0.0.1. Over a
measuring window the server reports its own CPU time and the RTP packets it sent; the
subscribers count the frames that actually arrived (video decoded through aiortc's whole
receive path and its frame counter read back, audio counted as reassembled Opus frames).

Both backends run in the same invocation, one after the other on the same machine:

* ``vio``: a ``MediaRouter`` (the publisher joins as the therapist, so its video always goes
  to everyone), forwarding encoded frames without decoding them;
* ``relay``: a minimal aiortc server relaying with ``MediaRelay``, which decodes the
  publisher's track once and encodes it again for every receiver.

The ratio printed last is MediaRelay's CPU per stream over vio's, per kind and K.

    .venv/bin/python bench/forwarding.py            # K = 1, 2, 4, 8, 16; about 3 minutes
    .venv/bin/python bench/forwarding.py --quick    # K = 1, 2; under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from dataclasses import dataclass

import harness as h


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
ARRIVAL_TIMEOUT_S = 30.0


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


async def run_backend(backend: str, kinds: list[str], plan: Plan,
                      variant: h.Variant) -> list[Row]:
    label = backend if variant.pythonpath is None else f"{backend} baseline"
    server, port = await h.start_server(backend, name=f"server-{label}", variant=variant)
    subscribers = min(max(plan.ks), MAX_SUBSCRIBER_PROCESSES)
    children: list[h.Child | None] = [server]
    rows: list[Row] = []
    try:
        publisher = await h.start_peers(port, name=f"publisher-{backend}", video_size=VIDEO_SIZE)
        workers = [await h.start_peers(port, name=f"subscribers-{backend}-{i}")
                   for i in range(subscribers)]
        children += [publisher, *workers]
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


def report(rows: list[Row], plan: Plan, loop: str, started: float, machine: str) -> None:
    print("# Forwarding cost: vio MediaRouter (passthrough) vs aiortc MediaRelay (transcoding)")
    print(f"machine: {machine}")
    print(f"commit: {h.git_head()}; date: {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"server loop: {loop}; window {plan.window_s:g} s "
          f"after {plan.warmup_s:g} s warm-up")
    print(f"media: video {VIDEO_SIZE} 15 fps VP8 (counter + chroma noise, ~300 kbit/s), "
          "audio Opus 20 ms frames; "
          "1 publisher -> K subscribers\n")
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
    print("## MediaRelay CPU per stream / vio CPU per stream")
    print(h.table(["kind", "K", "vio CPU % per stream", "MediaRelay CPU % per stream", "ratio"],
                  ratio_rows))
    for kind, k, _, _, ratio in ratio_rows:
        print(f"ratio {kind} K={k}: {ratio:.2f}")
    baseline = [r for r in rows if r.backend == "vio baseline"]
    if baseline:
        print("\n## vio CPU per packet / the baseline's, side by side")
        for old in baseline:
            new = by_key.get(("vio", old.kind, old.k))
            if new is not None:
                print(f"ratio vio / vio baseline {old.kind} K={old.k}: "
                      f"{new.us_per_packet / old.us_per_packet:.2f}")
    print(f"\nfinished in {time.monotonic() - started:.0f} s")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="K = 1, 2 and short windows")
    parser.add_argument("--smoke", action="store_true", help="K = 1, tiny windows (tests)")
    parser.add_argument("--kind", choices=["video", "audio", "both"], default="both")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="the servers' event loop")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run vio from the vio package in DIR (e.g. an older commit's, "
                             "from `git archive`), right after this checkout's")
    parser.add_argument("--janus", action="store_true",
                        help="also compare Janus (only if Debian's janus is installed)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    kinds = ["video", "audio"] if args.kind == "both" else [args.kind]
    started = time.monotonic()
    machine = h.machine()
    if args.janus:
        if shutil.which("janus") is None:
            print("janus: not installed (Debian package `janus`); skipping the Janus comparison",
                  file=sys.stderr)
        else:
            print("janus: installed, but driving it is not implemented here; see DESIGN.md "
                  "for the figures measured by hand", file=sys.stderr)
    variant, *others = h.variants(args.loop, args.baseline)
    rows: list[Row] = []
    for backend, v in [("vio", variant), *(("vio", o) for o in others), ("relay", variant)]:
        rows += await run_backend(backend, kinds, plan, v)
    report(rows, plan, args.loop, started, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
