"""The benchmark scripts keep working: each runs with ``--quick --smoke`` in a subprocess.

Nothing here is timed: the scripts must exit 0 and print their tables' headers and summary
lines with positive numbers (``docs/benchmarks.md`` says how to read the real runs). Every
process they start stays on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import seconds, stop_process

BENCH = Path(__file__).resolve().parent.parent / "bench"
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def run(script: str, budget_s: float, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--smoke", *extra],
        capture_output=True, text=True, timeout=seconds(budget_s), cwd=BENCH.parent)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table_rows(out: str, *header: str) -> list[list[str]]:
    """The body of the Markdown table whose header starts with the columns ``header``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("|") and cells(line)[:len(header)] == list(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return rows


def test_forwarding_prints_costs_and_ratios() -> None:
    out = run("forwarding.py", 60)
    rows = table_rows(out, "backend", "kind", "K", "server CPU %", "CPU % per stream",
                      "fps min")
    assert {(r[0], r[1]) for r in rows} == {
        ("vio", "video"), ("vio", "audio"), ("relay", "video"), ("relay", "audio")}
    for row in rows:
        cpu, per_stream, fps_min = (float(x) for x in row[3:6])
        assert cpu > 0 and per_stream > 0 and fps_min > 0, row
        assert row[-1] == "0", f"frames that did not decode: {row}"
    ratios = dict(re.findall(rf"^ratio (video|audio) K=1: {NUMBER}$", out, re.MULTILINE))
    assert set(ratios) == {"video", "audio"}
    assert all(float(v) > 0 for v in ratios.values())


def janus_unavailable() -> str | None:
    """Why ``forwarding.py --janus`` cannot run here: the script's own answer."""
    sys.path.insert(0, str(BENCH))
    try:
        import janus  # bench/janus.py
    finally:
        sys.path.remove(str(BENCH))
    reason: str | None = janus.unavailable()
    return reason


def test_forwarding_compares_janus_at_the_same_packet_rate() -> None:
    """Janus VideoRoom, in a namespace the script makes, next to vio: costs and ratios."""
    reason = janus_unavailable()
    if reason is not None:
        pytest.skip(reason)  # a benchmark's optional peer, never required
    driver = subprocess.Popen(
        [sys.executable, str(BENCH / "forwarding.py"), "--quick", "--smoke", "--janus",
         "--backends", "vio", "--kind", "audio", "--ks", "1,2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=BENCH.parent)
    try:
        out, err = driver.communicate(timeout=seconds(90))
    finally:
        if driver.poll() is None:
            stop_process(driver)  # type: ignore[arg-type]  # SIGTERM: it removes its namespace
    assert driver.returncode == 0, f"forwarding.py --janus failed:\n{out}\n{err[-4000:]}"
    rows = table_rows(out, "backend", "kind", "K", "server CPU %", "CPU % per stream",
                      "fps min", "fps median", "packets/s out")
    assert {(r[0], r[2]) for r in rows} == {("vio", "1"), ("vio", "2"), ("janus", "1"),
                                             ("janus", "2")}
    for row in rows:
        cpu, fps_min, packets = float(row[3]), float(row[5]), float(row[7])
        assert cpu > 0 and fps_min > 0 and packets > 0, row
        assert row[-1] == "0", f"frames that did not decode: {row}"
    steps = table_rows(out, "backend", "kind", "K", "CPU % per added leg", "packets/s per leg")
    assert {(r[0], r[2]) for r in steps} == {("vio", "1->2"), ("janus", "1->2")}
    assert all(float(r[4]) > 0 for r in steps), steps  # each added leg was sent packets
    # Increments of one leg may drown in the machine's noise: the ratios are printed, not judged.
    ratio = re.search(r"^ratio vio/janus audio per leg: (-?[0-9.]+|nan), per packet: "
                      r"(-?[0-9.]+|nan)$", out, re.MULTILINE)
    assert ratio is not None, out[-2000:]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert f"viobench{driver.pid}" not in names, "the namespace was left behind"


def test_room_prints_cpu_frame_rates_and_late_joins() -> None:
    out = run("room.py", 60)
    (row,) = table_rows(out, "server", "N", "video legs", "audio legs", "server CPU %")
    assert row[1] == "4" and int(row[2]) == 12 and int(row[3]) == 12
    assert all(float(x) > 0 for x in row[4:11]), row
    summary = re.search(rf"^room asyncio N=4: cpu {NUMBER} %, per leg {NUMBER} %, "
                        rf"us/packet {NUMBER}$", out, re.MULTILINE)
    assert summary is not None and all(float(x) > 0 for x in summary.groups())
    (joins,) = table_rows(out, "server", "N", "joins", "first frame p50")
    assert int(joins[2]) > 0 and float(joins[3]) > 0 and float(joins[5]) > 0, joins


def test_signaling_prints_join_rate_and_moderation_round_trip() -> None:
    out = run("signaling.py", 60)
    (row,) = table_rows(out, "media", "clients", "joined", "joins/s")
    assert row[0] == "aiortc" and row[1] == row[2], "every client must get in"
    summary = re.search(rf"^signaling media=aiortc: joins/s {NUMBER}, mute p50 ms {NUMBER}, "
                        rf"p99 ms {NUMBER}$", out, re.MULTILINE)
    assert summary is not None and all(float(x) > 0 for x in summary.groups())


@pytest.mark.postgres
@pytest.mark.redis
def test_scale_prints_rooms_carried_on_one_and_two_nodes() -> None:
    out = run("scale.py", 120)
    ratio = re.search(rf"^ratio rooms carried W=2 / W=1: {NUMBER}$", out, re.MULTILINE)
    assert ratio is not None and float(ratio.group(1)) > 0, out[-2000:]
    for w in (1, 2):
        line = re.search(rf"^scale W={w} R=1: worst leg {NUMBER} %, server cpu ", out,
                         re.MULTILINE)
        assert line is not None and float(line.group(1)) > 0, out[-2000:]
