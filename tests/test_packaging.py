"""The built wheel: everything under one ``vigie`` package, every module and data file inside it.

The repository keeps its folders at the top level (``engine/``, ``rules/``...); installed, they
must not land in site-packages as bare ``engine``, ``rules``... (a clash with other
distributions). The wheel is built, unpacked away from the repository, and run from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE_FOLDERS = sorted(p.name for p in (ROOT / "vigie").iterdir() if p.is_symlink())


def _tracked_copy(target: Path) -> Path:
    """The files git tracks, as they are in the working tree (links kept): what a clone holds,
    and the build writes its ``build/`` there, not in the repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, listed):
        source, copy = ROOT / name, target / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, copy)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    tree = _tracked_copy(tmp_path_factory.mktemp("clone"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "--disable-pip-version-check", "-w", str(out), str(tree)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (built,) = out.glob("vigie-*.whl")
    return built


def _tracked_package_files() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--", "vigie", *PACKAGE_FOLDERS],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    names = set()
    for name in listed:
        top = name.split("/")[0]
        if top == "vigie" and (ROOT / name).is_symlink():
            continue
        if name.endswith((".md",)):  # documentation beside the code is not shipped
            continue
        names.add(name if top == "vigie" else f"vigie/{name}")
    return names


@pytest.mark.slow
def test_wheel_installs_everything_under_vigie_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"vigie"}
    missing = _tracked_package_files() - set(names)
    assert not missing, f"not in the wheel: {sorted(missing)}"


@pytest.mark.slow
def test_unpacked_wheel_runs_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    """The installed layout finds its data files (packs, terminology, mappings) by itself."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    cwd = tmp_path  # not the repository: nothing may be found through it

    def vigie(*args: str) -> subprocess.CompletedProcess[str]:
        code = "import sys; from vigie.api.cli import main; sys.exit(main(sys.argv[1:]))"
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=cwd, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip

    code = "import vigie.engine, vigie.connectors; print(vigie.engine.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(site)), where
    pack = site / "vigie" / "rules" / "packs" / "default.rules"
    checked = vigie("rules", "check", str(pack))
    assert checked.returncode == 0, checked.stderr
    out = tmp_path / "hospital"
    generated = vigie(
        "generate", "--beds", "4", "--days", "1", "--format", "csv", "--out", str(out)
    )
    assert generated.returncode == 0, generated.stderr
    quality = vigie("quality", "--input", str(out))
    assert quality.returncode == 0, quality.stderr + quality.stdout
