"""The compiled core and its pure-Python twin: one source, a switch, and an install that needs no compiler."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from pooler._compiled import COMPILED_MODULES

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


def test_build_without_a_compiler_installs_pure_python(tmp_path: Path) -> None:
    """Where no C compiler exists the wheel still builds, with the .py modules and no extension."""
    env = {**os.environ, "CC": "false", "LDSHARED": "false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("POOLER_NO_EXTENSIONS", None)
    source = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(source)], check=True)
    # The working tree's sources, not only the last commit's (tests run before a commit too).
    for path in ("setup.py", "pyproject.toml", "pooler"):
        subprocess.run(["cp", "-r", str(ROOT / path), str(source / Path(path).parent)], check=True)
    for built in [*source.rglob("*.so"), *source.rglob("*.c")]:
        built.unlink()
    wheel_command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                     "-w", str(tmp_path), str(source)]
    result = subprocess.run(wheel_command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "installing pure Python" in result.stderr + result.stdout
    [wheel] = tmp_path.glob("pooler-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")]
    for module in COMPILED_MODULES:
        assert module.replace(".", "/") + ".py" in names
