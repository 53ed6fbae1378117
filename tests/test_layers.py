"""The layers: rooms and media know nothing of pages or Starlette; the message table is whole."""

from __future__ import annotations

import ast
from pathlib import Path

from vio.protocol import CLIENT_MESSAGES, MODERATOR_MESSAGES
from vio.rooms.messages import HANDLERS, Standing

VIO = Path(__file__).parent.parent / "vio"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth in the file (function-local ones too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "vio":
        return None
    base = VIO.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _reachable(start: Path) -> dict[str, set[str]]:
    """Module file -> what it imports, for everything in vio that ``start`` reaches."""
    seen: dict[str, set[str]] = {}
    todo = [start]
    while todo:
        path = todo.pop()
        if str(path) in seen:
            continue
        seen[str(path)] = imports = _imports(path)
        todo += [f for f in map(_module_file, imports) if f is not None]
    return seen


def test_rooms_and_media_import_neither_pages_nor_starlette():
    for layer in ("rooms", "media"):
        for path in sorted((VIO / layer).glob("*.py")):
            for module, imports in _reachable(path).items():
                bad = {i for i in imports if i.split(".")[0] == "starlette"
                       or i.startswith("vio.pages") or i == "vio.app"}
                assert not bad, f"{path.name} reaches {module}, which imports {sorted(bad)}"


def test_the_check_sees_an_import_of_pages():
    """The checker itself: a module importing vio.pages is caught."""
    assert "vio.pages.common" in _imports(VIO / "pages" / "signaling.py")


def test_every_client_message_has_one_handler():
    assert set(HANDLERS) == set(CLIENT_MESSAGES)
    moderators = {kind for kind, h in HANDLERS.items() if h.standing is Standing.THERAPIST}
    assert moderators == MODERATOR_MESSAGES
