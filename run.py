"""Start vio: the same as ``vio serve`` with the same options."""

import sys

from vio.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *sys.argv[1:]]))
