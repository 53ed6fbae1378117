"""The documents are part of the contract: they must name what the code has."""

from pathlib import Path

from vio.settings import settings_table

ROOT = Path(__file__).parent.parent


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("## ", 1)[0]
    assert "make run" in head and "make test" in head


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    for variable, default, _ in settings_table():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{variable}`")),
                   None)
        assert row is not None, f"{variable} is missing from the README settings table"
        assert (f"`{default}`" in row) if default else "(empty)" in row, variable


def test_ci_calls_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
