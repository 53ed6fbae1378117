"""Run one browser scenario module in a loopback-only network namespace, from a test.

``python -m tests.browser.<module> [args]`` runs under ``unshare -n`` (root, Debian's Chromium)
and prints one JSON object last; this returns it. Where the namespace or the browser cannot be
had, the test skips with the reason, or fails under ``VIO_TEST_REQUIRE_SERVICES``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_SERVICES, seconds

ROOT = Path(__file__).parent.parent.parent
SCENARIO_SECONDS = 240.0
"""The longest one scenario module may take (scaled by ``VIO_TEST_TIMEOUT_SCALE``)."""


def scenario_result(module: str, *args: str) -> dict[str, Any]:
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    chromium = os.environ.get("VIO_TEST_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        missing.append(chromium)
    if missing or os.geteuid() != 0:
        why = f"needs root and {', '.join(missing)}" if missing else "needs root for unshare -n"
        if REQUIRE_SERVICES:
            pytest.fail(f"browser tests cannot run: {why}")
        pytest.skip(f"browser tests cannot run: {why}")
    result = subprocess.run(
        ["unshare", "-n", "--", sys.executable, "-m", f"tests.browser.{module}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds(SCENARIO_SECONDS))
    assert result.returncode == 0, result.stderr[-4000:]
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found
