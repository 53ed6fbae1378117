"""The attendance bench runs end to end at its quick size and prints every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import seconds

BENCH = Path(__file__).resolve().parent.parent / "bench" / "attendance.py"
FIGURES = ("baseline", "weekly dosage report", "one patient's dosage", "CSV export, one week",
           "FHIR export, one week")


def test_quick_bench_runs():
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True,
                          text=True, timeout=seconds(60), check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("seeded 60 patients x 3 weeks")
    report = json.loads(lines[-1])
    for figure in FIGURES:
        assert any(label.startswith(figure) for label in report["seconds"]), figure
    assert all(value > 0 for value in report["seconds"].values())
