"""The compiled core and its pure-Python twin: one source, a switch, and an install that needs no compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from pooler._compiled import COMPILED_MODULES, stale_extensions

ROOT = Path(__file__).resolve().parent.parent

_REPORT = "import importlib, sys\nfor name in sys.argv[1:]:\n    print(importlib.import_module(name).__file__)\n"


def _module_files(**env: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", _REPORT, *COMPILED_MODULES], capture_output=True, text=True,
                            check=True, env={**os.environ, **env}, cwd=ROOT)
    return result.stdout.split()


def test_switch_makes_every_compiled_module_run_from_source() -> None:
    files = _module_files(POOLER_NO_EXTENSIONS="1")
    assert len(files) == len(COMPILED_MODULES)
    assert all(f.endswith(".py") for f in files), files


def test_switch_off_means_what_is_installed_runs() -> None:
    # "0" and "" leave the switch off: each module comes from an extension when one is built beside it.
    for value in ("0", ""):
        files = _module_files(POOLER_NO_EXTENSIONS=value)
        for name, file in zip(COMPILED_MODULES, files, strict=True):
            built = list((ROOT / name.replace(".", "/")).parent.glob(name.rsplit(".", 1)[1] + ".*.so"))
            assert file.endswith(".so") == bool(built), (name, file)


def _wheel_built_with(tmp_path: Path, cc: str) -> tuple[list[str], str]:
    """Build a wheel of the working tree with ``cc`` as the C compiler: (its file names, the build's output)."""
    env = {**os.environ, "CC": cc, "LDSHARED": f"{cc} -shared", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("POOLER_NO_EXTENSIONS", None)
    source = tmp_path / "src"
    source.mkdir()
    # The working tree's sources, not only the last commit's (tests run before a commit too).
    for path in ("setup.py", "pyproject.toml", "README.md", "pooler"):
        subprocess.run(["cp", "-r", str(ROOT / path), str(source)], check=True)
    for built in [*source.rglob("*.so"), *source.rglob("*.c"), *source.rglob("__pycache__")]:
        subprocess.run(["rm", "-rf", str(built)], check=True)
    wheel_command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                     "-w", str(tmp_path), str(source)]
    result = subprocess.run(wheel_command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = tmp_path.glob("pooler-*.whl")
    return zipfile.ZipFile(wheel).namelist(), result.stderr + result.stdout


def test_build_without_a_compiler_installs_pure_python(tmp_path: Path) -> None:
    """Where no C compiler exists the wheel still builds, with the .py modules and no extension."""
    names, output = _wheel_built_with(tmp_path, "false")
    assert "installing pure Python" in output
    assert not [n for n in names if n.endswith(".so")]
    for module in COMPILED_MODULES:
        assert module.replace(".", "/") + ".py" in names


def test_a_build_that_fails_on_one_module_installs_none(tmp_path: Path) -> None:
    """The compiled modules use each other's C types: one missing makes the others unimportable, so the
    build is all or nothing (here the compiler fails on the second module, after the first was built)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc is not None, "the compiled core's tests need a C compiler"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f'#!/bin/sh\nfor a; do case "$a" in *wire/framing.c) exit 1;; esac; done\nexec {gcc} "$@"\n')
    wrapper.chmod(0o755)
    names, output = _wheel_built_with(tmp_path, str(wrapper))
    assert "installing pure Python" in output
    assert not [n for n in names if n.endswith(".so")], "a partly compiled core cannot be imported"
    assert "pooler/net/client.py" in names


def test_a_leftover_extension_counts_as_stale(tmp_path: Path) -> None:
    """An in-place build outlives its module's removal from the compiled list (git does not track it): Python
    would still load it, so the check names it, like an extension older than its source."""
    (tmp_path / "setup.py").write_text("")
    package = tmp_path / "pooler" / "ops"
    package.mkdir(parents=True)
    (package / "admin.py").write_text("")
    (package / "admin.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    listed = tmp_path / "pooler" / "core"
    listed.mkdir()
    (listed / "ledger.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (listed / "ledger.py").write_text("")  # written after its extension: newer
    os.utime(listed / "ledger.cpython-311-x86_64-linux-gnu.so", (1, 1))
    (listed / "pool.py").write_text("")
    (listed / "pool.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    os.utime(listed / "pool.py", (1, 1))  # older than its extension: fine
    assert stale_extensions(str(tmp_path)) == ["pooler.core.ledger", "pooler.ops.admin"]
    (tmp_path / "setup.py").unlink()  # not a checkout (an installed package): nothing is judged by mtimes
    assert stale_extensions(str(tmp_path)) == []
