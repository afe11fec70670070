"""Rule tests as data: ``vigie rules test PACK... [TESTS...]``.

A test file (YAML, format in ``docs/rules.md``, "Testing rules") names the pack(s) it tests and
holds cases: a patient's facts in compact form with times relative to the case's evaluation
time, and the alerts expected (or their absence). The runner compiles the packs
(``rules.compile_pack``), builds the facts (units through the terminology tables, as a feed
would), evaluates (``vigie.engine.evaluate``) and compares; it prints one line per case like pytest,
a diff for each failure, and a coverage check: every rule of a tested pack needs a firing and a
non-firing case.

Each built fact's ``Source`` is ``feed="test"``, the test file, and ``case <name> / labs[2]
(line 34)``, so an alert's evidence points back to the line of the test file.

>>> import io
>>> out = io.StringIO()
>>> test_command([Path("no/such/file.yaml")], out=out)
1
>>> "no such file" in out.getvalue()
True
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from vigie import rules
from vigie.engine import evaluate as engine_evaluate
from vigie.engine.alerts import Alert
from vigie.engine.factset import FactSet
from vigie.rules.units import unit_factor

__all__ = [
    "CaseFileError",
    "CaseResult",
    "PackCache",
    "TestReport",
    "compare_alerts",
    "coverage_gaps",
    "discover_test_files",
    "load_test_file",
    "run_case",
    "run_tests",
    "test_command",
]

# Test files are collected by pytest only from tests/; the names below are not pytest tests.
from vigie.rules.testing.cases import (
    TEST_SUFFIXES,
    TESTS_FOLDER,
    CaseFileError,
    ExpectedAlert,
    Here,
    RuleTestCase,
    RuleTestFile,
    load_test_file,
    quantity,
    shown_path,
)

# Packs ------------------------------------------------------------------------------------------


class PackCache:
    """Compiled packs by path, compiled once per run (the ANSM pack takes seconds)."""

    def __init__(self) -> None:
        self._packs: dict[Path, rules.CompiledPack] = {}

    def preload(self, path: Path, compiled: rules.CompiledPack) -> None:
        """Use ``compiled`` wherever a case names ``path`` (a mutant of that pack, say)."""
        self._packs[path.resolve()] = compiled

    def get(self, path: Path) -> rules.CompiledPack:
        key = path.resolve()
        if key not in self._packs:
            self._packs[key] = rules.compile_files([key])[0]
        return self._packs[key]


# Running a case --------------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: RuleTestCase
    diff: list[str] = field(default_factory=list)
    error: str | None = None
    alerts: list[Alert] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and not self.diff

    @property
    def status(self) -> str:
        return "ERROR" if self.error else ("PASS" if self.passed else "FAIL")


Evaluate = Callable[..., list[Alert]]


def run_case(case: RuleTestCase, packs: PackCache, evaluate: Evaluate | None = None) -> CaseResult:
    """Evaluate one case against its packs and compare with what it expects."""
    result = CaseResult(case)
    evaluate = evaluate or engine_evaluate
    compiled = [packs.get(ref.path) for ref in case.packs]
    broken = [(ref, c) for ref, c in zip(case.packs, compiled, strict=True) if c.ir is None]
    if broken:
        ref, pack = broken[0]
        result.error = f"pack {shown_path(ref.path)} does not compile ({_first_error(pack)})"
        return result
    irs = [c.ir for c in compiled if c.ir is not None]
    unknown = _unknown_cursors(case, irs)
    if unknown:
        result.error = "; ".join(unknown)
        return result
    facts = FactSet(case.facts)
    for ir in irs:
        try:
            cursors = _cursor_values(case, ir)
        except CaseFileError as exc:
            result.error = str(exc)
            return result
        try:
            result.alerts += evaluate(
                ir, facts, case.as_of, cursors=cursors or None, level=case.level
            )
        except Exception as exc:  # the evaluator's bug must not stop the other cases
            result.error = f"the evaluator raised {type(exc).__name__}: {exc}"
            return result
    result.diff = compare_alerts(case, result.alerts)
    return result


def _first_error(compiled: rules.CompiledPack) -> str:
    errors = [d for d in compiled.diagnostics if d.is_error]
    return rules.render(errors[0], compiled.source).splitlines()[0] if errors else "no IR"


def _cursor_values(case: RuleTestCase, ir: dict[str, Any]) -> dict[str, float]:
    """This pack's cursor overrides, in each parameter's declared unit, inside its range."""
    params = ir["params"]
    values: dict[str, float] = {}
    for name, written, line in case.cursors:
        if name in params:
            here = Here(case.file, line, case.name, f"cursors.{name}")
            values[name] = _cursor_value(here, params[name], written)
    return values


def _unknown_cursors(case: RuleTestCase, irs: list[dict[str, Any]]) -> list[str]:
    """Cursors that no pack of the case declares (a typo must not pass silently)."""
    known = {name for ir in irs for name in ir["params"]}
    messages = []
    for name, _, line in case.cursors:
        if name not in known:
            hint = difflib.get_close_matches(name, sorted(known), n=1)
            near = f"; did you mean {hint[0]!r}?" if hint else ""
            here = Here(case.file, line, case.name, f"cursors.{name}")
            messages.append(str(here.error(f"unknown parameter {name!r}{near}")))
    return messages


def _cursor_value(here: Here, param: dict[str, Any], written: Any) -> float:
    try:
        amount, unit = quantity(written)
    except ValueError as exc:
        raise here.error(str(exc)) from None
    declared = param.get("unit")
    if unit is not None and declared is not None and unit != declared:
        factor = unit_factor(unit, declared)
        if factor is None:
            raise here.error(f"{unit} cannot be converted to the parameter's unit {declared}")
        amount *= factor
    low, high = param.get("min"), param.get("max")
    if (low is not None and amount < low) or (high is not None and amount > high):
        raise here.error(f"{amount:g} is outside the parameter's range {low:g} .. {high:g}")
    return amount


# Comparing alerts --------------------------------------------------------------------------------


def compare_alerts(case: RuleTestCase, alerts: Sequence[Alert]) -> list[str]:
    """The differences between what the case expects and the alerts: empty when it passes."""
    diff: list[str] = []
    for alert in alerts:
        if alert.rule_id in case.absent:
            diff.append(f"+ fired though listed absent: {_describe(alert)}")
    if case.expect is None:
        return diff
    pending = [a for a in alerts if not _ignored(a.rule_id, case.ignore)]
    for expected in case.expect:
        diff += _match(expected, pending)
    diff += [f"+ unexpected: {_describe(a)}" for a in pending if a.rule_id not in case.absent]
    return diff


def _ignored(rule_id: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rule_id, p) for p in patterns)


def _match(expected: ExpectedAlert, pending: list[Alert]) -> list[str]:
    """Take the alert matching ``expected`` out of ``pending``; its differences, if any."""
    candidates = [
        a for a in pending
        if a.rule_id == expected.rule
        and (expected.drugs is None or _order_ids(a) == expected.drugs)
    ]  # fmt: skip
    if not candidates:
        return [f"- missing: {expected.describe()} (line {expected.line})"]
    for alert in candidates:
        if not _field_diffs(expected, alert):
            pending.remove(alert)
            return []
    alert = candidates[0]
    pending.remove(alert)
    return [f"~ {_describe(alert, message=False)}: {d}" for d in _field_diffs(expected, alert)]


def _field_diffs(expected: ExpectedAlert, alert: Alert) -> list[str]:
    diffs = []
    for name, want, got in (
        ("problem", expected.problem, alert.problem.code),
        ("intervention", expected.intervention, alert.intervention.code),
        ("severity", expected.severity, alert.severity),
        ("title", expected.title, alert.title),
    ):
        if want is not None and want != got:
            diffs.append(f"{name}: expected {want}, got {got}")
    diffs += [
        f"message: expected to contain {text!r}, got {alert.message!r}"
        for text in expected.message
        if text not in alert.message
    ]
    for name, want in expected.evidence:
        diffs += _evidence_diff(alert, str(name), want)
    return diffs


def _evidence_diff(alert: Alert, name: str, want: Any) -> list[str]:
    """``evidence: {k: 5.9}``: the evidence named ``k`` has that value, to the digits written."""
    found = [e for e in _flatten_evidence(alert.evidence) if e.name == name]
    if not found:
        names = sorted({e.name for e in _flatten_evidence(alert.evidence)})
        return [f"evidence {name}: expected {want!r}, none in the alert (has {names})"]
    values = [e.value for e in found]
    if any(_same_value(want, v) for v in values):
        return []
    return [f"evidence {name}: expected {want!r}, got {', '.join(map(repr, values))}"]


def _flatten_evidence(evidence: Iterable[Any]) -> Iterator[Any]:
    for item in evidence:
        yield item
        yield from _flatten_evidence(item.inputs)


def _same_value(want: Any, got: Any) -> bool:
    """Numbers compare to the decimals the expected value is written with (28.9 ≈ 28.87)."""
    if isinstance(want, int | float) and not isinstance(want, bool):
        if not isinstance(got, int | float):
            return False
        text = repr(float(want)) if isinstance(want, float) else str(want)
        decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
        return round(float(got), decimals) == round(float(want), decimals)
    return str(want) == str(got)


def _order_ids(alert: Alert) -> tuple[str, ...]:
    return tuple(sorted(d.order_id for d in alert.drugs))


def _describe(alert: Alert, message: bool = True) -> str:
    text = f"{alert.rule_id} drugs [{', '.join(_order_ids(alert))}] {alert.severity}"
    return f"{text}: {alert.message!r}" if message else text


# Coverage ---------------------------------------------------------------------------------------


def coverage_gaps(
    files: Sequence[RuleTestFile], packs: Iterable[Path], cache: PackCache
) -> dict[str, list[str]]:
    """Rules of ``packs`` without a firing case or without a non-firing case.

    ``{rule id: ["no firing case" | "no non-firing case", ...]}``.
    """
    fires: set[str] = set()
    quiet: set[str] = set()
    for test_file in files:
        for case in test_file.cases:
            fires |= case.fires()
            quiet |= case.does_not_fire()
    gaps: dict[str, list[str]] = {}
    for path in packs:
        ir = cache.get(path).ir
        for rule in ir["rules"] if ir else ():
            missing = [
                text for text, covered in (("no firing case", rule["id"] in fires),
                                           ("no non-firing case", rule["id"] in quiet))
                if not covered
            ]  # fmt: skip
            if missing:
                gaps[rule["id"]] = missing
    return gaps


# The command ------------------------------------------------------------------------------------


@dataclass
class TestReport:
    __test__ = False  # not a pytest test class
    results: list[CaseResult] = field(default_factory=list)
    file_errors: list[str] = field(default_factory=list)
    covered_packs: list[Path] = field(default_factory=list)
    rules_checked: int = 0
    uncovered: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.file_errors and not self.uncovered and all(r.passed for r in self.results)

    def counts(self) -> tuple[int, int, int]:
        """(passed, failed, errors); a malformed file is one error."""
        passed = sum(r.status == "PASS" for r in self.results)
        failed = sum(r.status == "FAIL" for r in self.results)
        errored = sum(r.status == "ERROR" for r in self.results)
        return passed, failed, errored + len(self.file_errors)

    def lines(self) -> Iterator[str]:
        for error in self.file_errors:
            yield f"ERROR {error}"
        for result in self.results:
            yield f"{result.status} {result.case.id}"
            if result.error:
                yield f"    {result.error}"
            yield from (f"    {line}" for line in result.diff)
        yield from self._coverage_lines()
        passed, failed, errors = self.counts()
        yield (
            f"== {passed} passed, {failed} failed, {errors} error(s)"
            f"{', coverage incomplete' if self.uncovered else ''} in {self.seconds:.2f}s =="
        )

    def _coverage_lines(self) -> Iterator[str]:
        packs = ", ".join(shown_path(p) for p in self.covered_packs) or "no pack"
        if not self.uncovered:
            yield (
                f"coverage: {self.rules_checked} rule(s) of {packs}: each has a firing and a "
                "non-firing case"
            )
            return
        yield (
            f"coverage: {len(self.uncovered)} of {self.rules_checked} rule(s) of {packs} "
            "lack a firing or a non-firing case:"
        )
        for rule_id, missing in sorted(self.uncovered.items()):
            yield f"    {rule_id}: {', '.join(missing)}"


def discover_test_files(packs: Sequence[Path], folders: Iterable[Path] = ()) -> list[Path]:
    """Test files (in ``rules/tests/`` and beside the packs) that name one of ``packs``."""
    wanted = {p.resolve() for p in packs}
    places = {TESTS_FOLDER.resolve(), *(f.resolve() for f in folders)}
    for pack in wanted:
        places |= {pack.parent / "tests", pack.parent.parent / "tests"}
    found = []
    for path in sorted({t for place in places if place.is_dir() for t in _yaml_files(place)}):
        try:
            names = {ref.path for ref in load_test_file(path).packs}
        except CaseFileError:
            found.append(path)  # reported when run
            continue
        if names & wanted:
            found.append(path)
    return found


def _yaml_files(folder: Path) -> Iterator[Path]:
    for suffix in TEST_SUFFIXES:
        yield from folder.rglob(f"*{suffix}")


def _split_arguments(paths: Sequence[Path]) -> tuple[list[Path], list[Path], list[str]]:
    """(packs, test files, errors) from the command's arguments (folders are walked)."""
    packs: list[Path] = []
    tests: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            packs += sorted(path.rglob("*.rules"))
            tests += sorted(t for t in _yaml_files(path))
        elif not path.exists():
            errors.append(f"{path}: no such file or folder")
        elif path.suffix == ".rules":
            packs.append(path)
        elif path.suffix in TEST_SUFFIXES:
            tests.append(path)
        else:
            errors.append(f"{path}: neither a pack (.rules) nor a test file (.yaml)")
    return packs, tests, errors


def run_tests(
    paths: Sequence[Path], evaluate: Evaluate | None = None, cache: PackCache | None = None
) -> TestReport:
    """Run the test files among (or found for) ``paths``; see ``test_command``."""
    started = time.perf_counter()
    cache = cache or PackCache()
    packs, test_paths, errors = _split_arguments(paths)
    report = TestReport(file_errors=errors)
    if packs and not test_paths:
        test_paths = discover_test_files(packs)
        if not test_paths:
            report.file_errors.append(
                f"no test file names {', '.join(map(shown_path, packs))} (looked in rules/tests/)"
            )
    files = []
    for path in dict.fromkeys(test_paths):
        try:
            files.append(load_test_file(path))
        except CaseFileError as exc:
            report.file_errors.append(str(exc))
    for test_file in files:
        report.results += [run_case(case, cache, evaluate) for case in test_file.cases]
    report.covered_packs = _covered_packs(packs, files)
    report.uncovered = coverage_gaps(files, report.covered_packs, cache)
    irs = [cache.get(p).ir for p in report.covered_packs]
    report.rules_checked = sum(len(ir["rules"]) for ir in irs if ir is not None)
    report.seconds = time.perf_counter() - started
    return report


def _covered_packs(packs: Sequence[Path], files: Sequence[RuleTestFile]) -> list[Path]:
    """Packs whose every rule must be covered: the packs named on the command line and those
    the test files name, except a pack only ever named with ``coverage: false`` (a generated
    pack such as the ANSM interactions, tested by sample)."""
    chosen: dict[Path, bool] = {p.resolve(): False for p in packs}
    for test_file in files:
        for ref in test_file.packs:
            chosen[ref.path] = chosen.get(ref.path, False) or ref.coverage
    exempt = {ref.path for f in files for ref in f.packs if not ref.coverage}
    return [p for p, cover in chosen.items() if cover or p not in exempt]


def test_command(paths: Sequence[Path], out: TextIO | None = None) -> int:
    """``vigie rules test PACK... [TESTS...]``: 0 when every case passes and every rule of the
    tested packs has a firing and a non-firing case, 1 otherwise.

    Arguments are packs (``.rules``), test files (``.yaml``) or folders of either; with packs
    only, the test files of ``rules/tests/`` that name those packs are run.
    """
    out = out or sys.stdout
    report = run_tests(paths)
    for line in report.lines():
        print(line, file=out)
    return 0 if report.ok else 1


test_command.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
