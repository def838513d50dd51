"""``python -m pooler`` and the ``pooler`` command (its entry point is ``run``): the CLI, with a Ctrl-C during
its imports answered in one line like any other moment of start-up (``pooler.cli.main`` installs its own
handling first thing once it is imported; this module imports nothing heavy, so the window before it is
the interpreter's own start)."""

import sys


def run() -> int:
    try:
        from pooler.cli import main

        return main()
    except KeyboardInterrupt:  # in the imports, or before main() had installed its own handling
        print("pooler: interrupted before it was ready; nothing was started", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
