"""``python -m pooler`` and the ``pooler`` command: the CLI, with a Ctrl-C during its imports answered in one
line like any other moment of start-up (pooler.cli installs its own handling once it is imported)."""

import sys


def run() -> int:
    try:
        from pooler.cli import main
    except KeyboardInterrupt:
        print("pooler: interrupted before it was ready; nothing was started", file=sys.stderr)
        return 1
    return main()


if __name__ == "__main__":
    sys.exit(run())
