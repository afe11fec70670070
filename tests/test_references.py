"""Files and modules that the code and the docs mention exist.

A docstring that cites a file or a module by a name it no longer has
sends a newcomer nowhere. Every repository path (``folder/file.ext``) and every ``vigie.``
module path written in the sources, docs and README must resolve.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

from vigie import settings

ROOT = Path(__file__).parents[1]
SHARED_DATA = Path(settings.value("shared_data"))  # ../shared/data unless VIGIE_SHARED_DATA

# Paths written as examples, not as references (each with the reason).
NOT_REFERENCES = {
    "no/such/file.yaml": "the runner's doctest of a missing test file",
    "../packs/default.rules": "a test file's pack path, relative to rules/tests/",
    "mg/": "a dose unit cut by a line end in an ANSM text",
    "build/": "the folder a wheel build writes, not a repository folder",
    "mappings/": "README's connectors/tabular/ row names its subfolder (the Layout test checks it)",
    "exports/orders.csv": "a document name in a CSV test: the same export under a folder",
    "metrics/export.csv": "the audit log's name of the resource GET /metrics/export.csv",
    "rules/p.rules": "the source file name a store test gives a pack version",
}

_PATH = re.compile(
    r"(?<![\w./-])((?:\.\./)?[A-Za-z_][\w.-]*/[\w./-]*"
    r"\.(?:py|csv|toml|rules|lark|yaml|md|json|gz|hl7|ndjson|xml|ini|txt))\b"
)
_FOLDER = re.compile(
    r"(?:(?<=[\s(`'\"])|^)((?:\.\./)?[a-z_][a-z0-9_.-]*(?:/[a-z0-9_.-]+)*/)(?=[\s)`'\",.:;]|$)"
)
_MODULE = re.compile(r"(?<![\w./-])(vigie(?:\.[A-Za-z_]\w*)+)")
_FILE_SUFFIXES = frozenset({"db", "toml", "rules", "json", "csv", "md", "py"})


def _documents() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", "*.rules", "*.yaml", "*.lark"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return [ROOT / name for name in listed if not name.startswith("tests/golden/")]


def _mentions(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    found = []
    for path in _documents():
        if not path.exists():  # deleted in the working tree, not yet in git
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in pattern.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{number}", match.group(1)))
    return found


def test_every_mentioned_folder_exists() -> None:
    missing = [
        f"{where}: {reference}"
        for where, reference in _mentions(_FOLDER)
        if reference not in NOT_REFERENCES and not _path_exists(where, reference)
    ]
    assert not missing, "\n".join(missing)


def _path_exists(where: str, reference: str) -> bool:
    document = ROOT / where.split(":")[0]
    bases = (ROOT, document.parent, SHARED_DATA, SHARED_DATA.parent, SHARED_DATA.parent.parent)
    return any((base / reference).exists() for base in bases)


def test_every_mentioned_path_exists() -> None:
    missing = [
        f"{where}: {reference}"
        for where, reference in _mentions(_PATH)
        if reference not in NOT_REFERENCES and "*" not in reference
        if not _path_exists(where, reference)
    ]
    assert not missing, "\n".join(missing)


def _resolves(dotted: str) -> bool:
    """A module, or an attribute path under the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


@pytest.mark.slow
def test_every_mentioned_vigie_module_exists() -> None:
    missing = sorted(
        {
            f"{where}: {dotted}"
            for where, dotted in _mentions(_MODULE)
            if dotted.rpartition(".")[2] not in _FILE_SUFFIXES and not _resolves(dotted)
        }
    )
    assert not missing, "\n".join(missing)


_ROW = re.compile(r"^\| `([\w./-]+/)` \| (.*) \|$")
_FILE_TOKEN = re.compile(r"`([\w.*-]+(?:/[\w.*-]+)*/?)`")
_FILE_SUFFIX = re.compile(r"\.(py|csv|toml|rules|lark|yaml|md|json)$")


def _layout_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for line in section.splitlines() if (m := _ROW.match(line))}


def test_readme_layout_names_every_folder_and_only_what_exists() -> None:
    rows = _layout_rows()
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    folders = {name.split("/")[0] + "/" for name in tracked if "/" in name}
    packages = {
        str(Path(name).parent) + "/"
        for name in tracked
        if name.endswith("/__init__.py") and not name.startswith("tests/")
    }
    wanted = (folders | packages) - {".ci/"}
    assert not wanted - set(rows), f"folders missing from README's Layout: {wanted - set(rows)}"
    wrong = []
    for folder, text in rows.items():
        base = ROOT / folder
        if not base.is_dir():
            wrong.append(f"{folder}: no such folder")
            continue
        for token in _FILE_TOKEN.findall(text):
            if not (token.endswith("/") or _FILE_SUFFIX.search(token)):
                continue  # a class, a command, a variable
            if not (list(base.glob(f"**/{token}")) or list(ROOT.glob(token))):
                wrong.append(f"{folder}: {token} not found")
    assert not wrong, "\n".join(wrong)
