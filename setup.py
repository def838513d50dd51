"""Compiles the per-transaction path with Cython, and installs pure Python where that cannot be done.

Why a setup.py beside pyproject.toml: the metadata lives in pyproject.toml; this file only adds the
extension modules, the way uvloop, aiohttp, yarl and msgpack do. The modules listed in
``pooler/_compiled.py`` are ordinary Python (typed, mypy-checked, and what runs uncompiled); Cython
compiles the same source, with the ``.pxd`` file beside a module adding C types where they pay.

- No compiler, no Python headers, or a failing Cython: the build says so once and installs the pure
  Python package, which behaves the same, slower.
- ``POOLER_NO_EXTENSIONS=1`` at install time skips the build; at run time it makes an installed
  compiled package import its pure-Python source instead (see ``pooler/_compiled.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "pooler"))
from _compiled import COMPILED_MODULES, extensions_disabled  # noqa: E402

sys.path.pop(0)


class OptionalBuildExt(build_ext):
    """A build_ext whose failure is a warning: the package is whole without its extensions.

    All or nothing: the compiled modules use each other's C types (client.pxd names ServerConnection,
    Ledger, PoolStats, PartialMessage), so a compiled client beside a pure server cannot even be imported.
    The first failure stops the build and removes what was already built.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._give_up(exc)

    def build_extensions(self) -> None:
        for ext in self.extensions:
            try:
                self.build_extension(ext)
            except Exception as exc:
                self._give_up(exc)
                return

    def _give_up(self, exc: BaseException) -> None:
        for ext in self.extensions:
            with contextlib.suppress(OSError):
                os.remove(self.get_ext_fullpath(ext.name))
        self.extensions = []
        print(f"pooler: building the compiled core failed ({exc.__class__.__name__}: {exc}); "
              "installing pure Python, which works the same, slower", file=sys.stderr)


def extensions() -> list[object]:
    if extensions_disabled():
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("pooler: Cython is not installed; installing pure Python", file=sys.stderr)
        return []
    from setuptools import Extension

    # Stripped where the linker allows: the debug info would be most of each module's size, and never loaded.
    link_args = ["-s"] if sys.platform.startswith("linux") else []
    modules = [Extension(name, [name.replace(".", "/") + ".py"], extra_link_args=link_args)
               for name in COMPILED_MODULES]
    try:
        return list(cythonize(
            modules,
            compiler_directives={
                "language_level": "3",
                # Annotations stay Python's: they are for mypy, and typing from them would make Cython
                # reject subclasses of dict/list where Python accepts them. C types come from the .pxd files.
                "annotation_typing": False,
            },
            quiet=True,
        ))
    except Exception as exc:
        print(f"pooler: Cython could not translate the core ({exc}); installing pure Python", file=sys.stderr)
        return []


os.chdir(HERE)
setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
