"""The site configuration file (``vigie.engine.site_config``): packs, rules, sensitivity level
and cursors per hospital and ward, checked against the shipped packs.

Expectations come from the rule catalogue (``../shared/rule-catalogue.md``: each cursor's
default and range, e.g. ``k_max 5.5 in [5.0, 6.5]`` for bio.hyperkalaemia) and from the
clinical situations it describes, not from the code under test.
"""

from __future__ import annotations

import textwrap
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigie.engine import FactSet, evaluate, load_pack
from vigie.engine.errors import EngineError, PackError
from vigie.engine.load import LoadedPack
from vigie.engine.site_config import (
    SiteConfig,
    SiteConfigError,
    SiteConfigErrors,
    load_site_config,
    parse_site_config,
)
from vigie.errors import VigieError
from vigie.facts import Coding, LabResult, MedicationOrder, Patient, Sex, Source, Stay
from vigie.rules import compile_pack

REPO = Path(__file__).parents[1]
EXAMPLE = REPO / "docs/site-config.example.toml"
NOW = datetime(2024, 3, 4, 12, 0)

# Catalogue cursors (rule, catalogue name, default, range) and the pack parameter that is
# each one; the ranges are the catalogue's ("k_max 5.5 in [5.0, 6.5]"...).
CATALOGUE_CURSORS: dict[str, tuple[float, float, float, str | None]] = {
    "k_max": (5.5, 5.0, 6.5, "mmol/L"),  # bio.hyperkalaemia
    "k_min": (3.5, 3.0, 3.8, "mmol/L"),  # bio.hypokalaemia_qt
    "na_min": (130, 120, 135, "mmol/L"),  # bio.hyponatraemia
    "inr_max": (4, 3, 6, None),  # coag.vka_inr_high
    "metformin_egfr_max": (30, 20, 45, "mL/min/1.73m2"),  # renal.metformin_egfr egfr_max
    "metformin_egfr_window": (7, 1, 30, "d"),  # renal.metformin_egfr window
    "aki_rise_ratio": (1.5, 1.2, 2.0, None),  # renal.nephrotoxic_aki rise_ratio
    "aminoglycoside_delay": (48, 24, 72, "h"),  # tdm.aminoglycoside delay
    "antibiotic_days": (7, 5, 14, "d"),  # infect.duration days
    "mme_max": (90, 50, 200, "MME"),  # dose.opioid_mme
    "long_benzo_age_min": (75, 65, 85, "years"),  # elderly.long_benzo age_min
}


def _compile(path: Path) -> dict[str, Any]:
    ir, diagnostics = compile_pack(path.read_text(encoding="utf-8"), str(path))
    assert ir is not None, [d.message for d in diagnostics if d.is_error]
    return dict(ir)


@cache
def default_ir() -> dict[str, Any]:
    return _compile(REPO / "rules/packs/default.rules")


@cache
def default_pack() -> LoadedPack:
    return load_pack(default_ir())


@cache
def ansm_pack() -> LoadedPack:
    return load_pack(_compile(REPO / "rules/packs/ansm-interactions.rules"))


def site(text: str) -> SiteConfig:
    """A site file checked against the default pack's IR (which says where each parameter is
    declared)."""
    return parse_site_config(textwrap.dedent(text), "site.toml", [default_ir()])


def error_of(text: str) -> SiteConfigError:
    with pytest.raises(SiteConfigError) as caught:
        site(text)
    return caught.value


# A valid file, the example, the resolver ----------------------------------------------------------


def test_the_documented_example_loads_against_the_shipped_packs() -> None:
    config = load_site_config(EXAMPLE, [default_pack(), ansm_pack()])
    assert (config.hospital_id, config.file) == ("CHU-EXEMPLE", str(EXAMPLE))
    assert set(config.wards) == {"NEPHRO-1", "GER-1", "REA-1"}
    hospital = config.for_ward(None)
    # "2 d" in a parameter declared in hours (catalogue: delay 48 h in [24, 72])
    assert hospital.cursors["aminoglycoside_delay"] == 48.0
    assert hospital.packs == frozenset({"vigie-default", "ansm-interactions"})
    assert "infect.iv_to_oral" not in (hospital.enabled_rules or ())
    assert "bio.hyperkalaemia" in (hospital.enabled_rules or ())
    nephro = config.for_ward("NEPHRO-1")
    assert nephro.cursors["k_max"] == 6.0 and nephro.cursors["mme_max"] == 90
    geriatrics = config.for_ward("GER-1")
    assert geriatrics.level == 2 and "infect.iv_to_oral" in (geriatrics.enabled_rules or ())
    icu = config.for_ward("REA-1")
    assert icu.packs == frozenset({"vigie-default"})
    assert not any(rule.startswith("ansm.") for rule in icu.enabled_rules or ())
    assert "combo.opioid_benzo" not in (icu.enabled_rules or ())
    # a ward the file does not name runs the hospital's settings
    assert config.for_ward("CARDIO-1").cursors == hospital.cursors


def test_levels_select_the_ansm_precautions() -> None:
    """Catalogue: the ANSM "précaution d'emploi" pairs sit at a lower sensitivity level, off
    by default; the example's geriatrics ward (level 2) turns on every rule the packs declare at
    level 2 or below and none above."""
    config = load_site_config(EXAMPLE, [default_pack(), ansm_pack()])
    precautions = {r.id for r in ansm_pack().rules if r.id.startswith("ansm.pe.")}
    assert precautions
    assert not precautions & (config.for_ward(None).enabled_rules or frozenset())
    geriatrics = config.for_ward("GER-1").enabled_rules or frozenset()
    assert precautions <= geriatrics
    assert {r.id for r in ansm_pack().rules if r.level <= 2} <= geriatrics
    assert not {r.id for r in ansm_pack().rules if r.level > 2} & geriatrics


def test_quoted_ward_codes_are_located_and_named() -> None:
    error = error_of('[hospital]\n\n[wards."3.NORD".cursors]\nk_max = 9\n')
    assert (error.line, error.path) == (4, 'wards."3.NORD".cursors.k_max')
    ward = site('[wards."3.NORD".cursors]\nk_max = 6\n').for_ward("3.NORD")
    assert ward.cursors["k_max"] == 6.0


def test_a_key_written_twice_is_invalid_toml() -> None:
    error = error_of("[hospital]\nlevel = 1\nlevel = 2\n")
    assert error.line == 3 and "not valid TOML: Cannot overwrite a value" in str(error)
    at_end = error_of("[hospital]\nlevel =")
    assert at_end.line == 2 and "Invalid value" in str(at_end)


def test_the_readme_documents_the_site_file() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/site-config.example.toml" in readme


def test_a_valid_file_with_every_key() -> None:
    config = site(
        """
        [hospital]
        id = "H1"
        name = "Hôpital"
        packs = ["vigie-default"]
        level = 1
        enable = []
        disable = ["bio.digoxin"]
        [hospital.cursors]
        k_max = "5.8 mmol/L"
        inr_max = 5
        [wards.CARDIO-1]
        name = "Cardiologie"
        packs = ["vigie-default"]
        level = 1
        enable = ["bio.digoxin"]
        disable = []
        cursors = { k_max = 6.2 }
        """
    )
    hospital, cardio = config.for_ward(None), config.for_ward("CARDIO-1")
    assert dict(hospital.cursors) == {"k_max": 5.8, "inr_max": 5.0}
    assert dict(cardio.cursors) == {"k_max": 6.2, "inr_max": 5.0}
    assert "bio.digoxin" in hospital.disable and "bio.digoxin" not in (hospital.enabled_rules or ())
    assert "bio.digoxin" in (cardio.enabled_rules or ())
    with pytest.raises(AttributeError):
        config.name = "other"  # type: ignore[misc]


def test_durations_convert_to_the_declared_unit() -> None:
    # catalogue: infect.duration days 7 in [5, 14] (days); tdm.aminoglycoside delay 48 h
    config = site(
        """
        [hospital.cursors]
        antibiotic_days = "240 h"
        aminoglycoside_delay = "1.5 d"
        """
    )
    assert dict(config.for_ward(None).cursors) == {
        "antibiotic_days": 10.0,
        "aminoglycoside_delay": 36.0,
    }


def test_without_packs_only_the_shape_is_checked() -> None:
    config = parse_site_config("[wards.X]\nlevel = 3\n[wards.X.cursors]\nanything = 1\n", "s.toml")
    ward = config.for_ward("X")
    assert ward.level == 3 and ward.enabled_rules is None and ward.cursors["anything"] == 1
    with pytest.raises(SiteConfigError, match="not checked against pack 'vigie-default'"):
        evaluate(default_pack(), FactSet([]), NOW, site=config)


# Errors: each kind, with its message and position -------------------------------------------------


def test_invalid_toml_gives_the_line_and_column() -> None:
    error = error_of("[hospital]\nlevel = = 2\n")
    assert (error.file, error.line, error.column) == ("site.toml", 2, 9)
    assert str(error).startswith("site.toml:2:9: not valid TOML")


def test_unknown_pack() -> None:
    error = error_of(
        """
        [hospital]
        packs = ["vigie-default", "vigie-defualt"]
        """
    )
    assert error.line == 3 and error.path == "hospital.packs[1]"
    assert "unknown pack 'vigie-defualt'; expected one of: vigie-default" in str(error)
    assert str(error).startswith("site.toml:3:")


def test_unknown_rule_id_in_a_multiline_list() -> None:
    error = error_of(
        """
        [wards.GER-1]
        disable = [
            "bio.digoxin",
            "bio.hyperkalemia",
        ]
        """
    )
    assert (error.line, error.column) == (5, 5)
    assert error.path == "wards.GER-1.disable[1]"
    assert "unknown rule id 'bio.hyperkalemia' (did you mean 'bio.hyperkalaemia'?)" in str(error)


def test_unknown_cursor() -> None:
    error = error_of(
        """
        [hospital]
        level = 1

        [wards.CARDIO-1.cursors]
        k_maxi = 6.0
        """
    )
    assert (error.line, error.column, error.path) == (6, 1, "wards.CARDIO-1.cursors.k_maxi")
    assert "unknown cursor 'k_maxi' (did you mean 'k_max'?)" in str(error)
    assert "expected a parameter of the packs vigie-default" in str(error)


def test_cursor_out_of_range_names_the_range_and_unit() -> None:
    # catalogue: k_max 5.5 in [5.0, 6.5] mmol/L
    error = error_of(
        """
        [wards.CARDIO-1.cursors]
        k_max = 7.0
        """
    )
    assert (error.line, error.path) == (3, "wards.CARDIO-1.cursors.k_max")
    assert "7.0 mmol/L is outside the declared range 5.0 .. 6.5 mmol/L of cursor k_max" in str(
        error
    )
    assert "default.rules:" in str(error)  # where the parameter is declared


def test_cursor_out_of_range_checked_against_loaded_packs_names_the_declaration(
    tmp_path: Path,
) -> None:
    # `vigie batch --config` checks the file against loaded packs, not IR dicts: the error
    # still names where the cursor is declared (README, "Site configuration").
    path = tmp_path / "site.toml"
    path.write_text("[wards.NEPHRO-1.cursors]\nk_max = 7.0\n", encoding="utf-8")
    with pytest.raises(SiteConfigError) as caught:
        load_site_config(path, [default_pack()])
    declared = next(
        number
        for number, line in enumerate(
            (REPO / "rules/packs/default.rules").read_text(encoding="utf-8").splitlines(), 1
        )
        if line.startswith("param k_max ")
    )
    message = str(caught.value)
    assert "of cursor k_max (Seuil d'hyperkaliémie, " in message
    assert message.endswith(f"default.rules:{declared})")


def test_cursor_in_an_inline_table_points_at_its_key() -> None:
    error = error_of("[wards.CARDIO-1]\ncursors = { k_max = 4.0 }\n")
    assert (error.line, error.path) == (2, "wards.CARDIO-1.cursors.k_max")


def test_wrong_unit() -> None:
    error = error_of('[hospital.cursors]\nk_max = "6.0 mg/dL"\n')
    assert error.line == 2
    assert "wrong unit 'mg/dL' for cursor k_max: expected mmol/L" in str(error)
    unitless = error_of('[hospital.cursors]\ninr_max = "5 mmol/L"\n')
    assert "expected a plain number (the parameter has no unit)" in str(unitless)
    duration = error_of('[hospital.cursors]\naminoglycoside_delay = "2 mmol/L"\n')
    assert "expected h (or another duration" in str(duration)
    not_a_number = error_of("[hospital.cursors]\nk_max = true\n")
    assert 'expected a number or a string "NUMBER UNIT", got a boolean (true)' in str(not_a_number)


def test_unknown_keys_at_every_level() -> None:
    top = error_of('[hospitals]\nid = "x"\n')
    assert (top.line, top.path) == (1, "hospitals")
    assert "unknown key 'hospitals' in the top level; expected one of: hospital, wards" in str(top)
    ward = error_of("[wards.REA-1]\nlevels = 2\n")
    assert (ward.line, ward.path) == (2, "wards.REA-1.levels")
    assert "expected one of: name, packs, level, enable, disable, cursors" in str(ward)
    not_a_table = error_of('[wards]\nREA-1 = "off"\n')
    assert (not_a_table.line, not_a_table.path) == (2, "wards.REA-1")
    assert "expected a table (a ward's section)" in str(not_a_table)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", '"2"', "true"])
def test_bad_level(value: str) -> None:
    error = error_of(f"[hospital]\nid = 'H'\nlevel = {value}\n")
    assert (error.line, error.path) == (3, "hospital.level")
    assert "bad level" in str(error) and "expected a whole number >= 1" in str(error)


def test_a_level_above_every_pack_is_refused() -> None:
    # the default pack's rules are all at level 1 (catalogue; ANSM precautions sit higher)
    error = error_of("[hospital]\nlevel = 4\n")
    assert "expected a whole number >= 1 and <= 1, the highest level of the packs" in str(error)


def test_a_rule_both_enabled_and_disabled() -> None:
    error = error_of('[hospital]\nenable = ["bio.digoxin"]\ndisable = ["bio.digoxin"]\n')
    assert (error.line, error.path) == (3, "hospital.disable")
    assert "both enabled and disabled" in str(error)


def test_errors_are_engine_and_vigie_errors_and_unreadable_files_say_so(tmp_path: Path) -> None:
    assert issubclass(SiteConfigError, EngineError) and issubclass(SiteConfigError, VigieError)
    missing = tmp_path / "nope.toml"
    with pytest.raises(SiteConfigError, match=r"nope\.toml: cannot read the file"):
        load_site_config(missing, [default_pack()])


# Every problem of a file at once ------------------------------------------------------------------

# Three independent mistakes: a misspelt key (line 3), a cursor outside the catalogue's range
# (k_max 5.5 in [5.0, 6.5], line 6) and a rule id that is not in the catalogue (line 9, its
# string at column 12).
THREE_MISTAKES = """\
[hospital]
id = "CHU-TEST"
levle = 1

[wards.CARDIO-1.cursors]
k_max = 7.0

[wards.GER-1]
disable = ["bio.hyperkalemia"]
"""
THREE_POSITIONS = [
    (3, 1, "hospital.levle", "unknown key 'levle' in hospital;"),
    (6, 1, "wards.CARDIO-1.cursors.k_max", "7.0 mmol/L is outside the declared range 5.0 .."),
    (9, 12, "wards.GER-1.disable[0]", "unknown rule id 'bio.hyperkalemia'"),
]


def test_every_mistake_of_a_file_is_reported_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(THREE_MISTAKES, encoding="utf-8")
    with pytest.raises(SiteConfigErrors) as caught:
        load_site_config(path, [default_pack()])
    error = caught.value
    assert isinstance(error, SiteConfigError)  # existing callers catch the one error type
    found = [(e.line, e.column, e.path) for e in error.errors]
    assert found == [(line, column, key) for line, column, key, _ in THREE_POSITIONS]
    for problem, (line, column, key, detail) in zip(error.errors, THREE_POSITIONS, strict=True):
        assert str(problem).startswith(f"{path}:{line}:{column}: {key}: {detail}")
        assert str(problem) in str(error)
    assert str(error).startswith(f"{path}: 3 errors\n")
    assert "(did you mean 'level'?)" in str(error.errors[0])
    assert "(did you mean 'bio.hyperkalaemia'?)" in str(error.errors[2])
    assert (error.line, error.path) == (3, "hospital.levle")  # the first one's, as before


def test_every_bad_item_of_a_section_is_reported() -> None:
    error = error_of(
        """
        [hospital]
        packs = ["vigie-defualt", 3]
        level = 0
        enable = ["bio.digoxine", "bio.hyperkalaemia", "bio.hyperkalemia"]
        [hospital.cursors]
        k_max = 9
        k_min = 1
        """
    )
    assert isinstance(error, SiteConfigErrors)
    assert [(e.line, e.path) for e in error.errors] == [
        (3, "hospital.packs[0]"),
        (3, "hospital.packs[1]"),
        (4, "hospital.level"),
        (5, "hospital.enable[0]"),
        (5, "hospital.enable[2]"),
        (7, "hospital.cursors.k_max"),
        (8, "hospital.cursors.k_min"),
    ]


def test_vigie_batch_config_prints_every_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vigie.api.cli import main

    config = tmp_path / "site.toml"
    config.write_text(THREE_MISTAKES, encoding="utf-8")
    out = tmp_path / "alerts.json"
    args = ["--input", str(tmp_path), "--as-of", "2025-01-10T12:00Z", "--out", str(out)]
    code = main(["batch", *args, "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"vigie batch: configuration error: {config}: 3 errors\n")
    for line, column, key, detail in THREE_POSITIONS:
        assert f"{config}:{line}:{column}: {key}: {detail}" in err
    assert not out.exists()


# Hypothesis: inside the declared range loads, outside fails ---------------------------------------


@st.composite
def cursor_values(draw: st.DrawFn) -> tuple[str, float, bool]:
    name = draw(st.sampled_from(sorted(CATALOGUE_CURSORS)))
    _, low, high, _ = CATALOGUE_CURSORS[name]
    inside = draw(st.booleans())
    if inside:
        value = draw(st.floats(min_value=low, max_value=high))
    else:
        value = draw(
            st.floats(max_value=low, exclude_max=True, allow_nan=False, allow_infinity=False)
            | st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False)
        )
    return name, value, inside


@settings(max_examples=200, deadline=None)
@given(cursor_values(), st.sampled_from(["hospital", "wards.CARDIO-1"]))
def test_any_value_inside_the_declared_range_loads_any_outside_fails(
    drawn: tuple[str, float, bool], section: str
) -> None:
    name, value, inside = drawn
    unit = CATALOGUE_CURSORS[name][3]
    text = f"[{section}.cursors]\n{name} = {value!r}\n"
    ward = None if section == "hospital" else "CARDIO-1"
    if inside:
        assert site(text).for_ward(ward).cursors[name] == value
        if unit is not None:  # the same value with its unit written
            quoted = f'[{section}.cursors]\n{name} = "{value!r} {unit}"\n'
            assert site(quoted).for_ward(ward).cursors[name] == value
    else:
        error = error_of(text)
        assert error.line == 2 and error.path == f"{section}.cursors.{name}"
        assert "outside the declared range" in str(error)


def test_the_catalogue_ranges_are_the_packs_ranges() -> None:
    """The table above is the catalogue's; the property test relies on the pack declaring the
    same ranges (a pack that moved one would be caught here, not silently tested)."""
    params = default_pack().params
    for name, (default, low, high, unit) in CATALOGUE_CURSORS.items():
        spec = params[name]
        assert (spec.value, spec.min, spec.max, spec.unit) == (default, low, high, unit), name


# Applied by the evaluator, per ward --------------------------------------------------------------


def _src(position: str) -> Source:
    return Source(feed="hl7v2", document="adt.hl7", message_id="MSG1", position=position)


def _patient_in(pid: str, ward: str, k: float, extra: tuple[str, ...] = ()) -> list[Any]:
    """A patient on ramipril (an ACE inhibitor: potassium-raising) with a K+ of ``k`` this
    morning, in ``ward``; ``extra`` adds active lines by ATC."""
    lines = [("C09AA05", "ramipril 5 mg"), *((atc, atc) for atc in extra)]
    return [
        Patient(
            fact_id=pid, patient_id=pid, source=_src("PID"), birth_date=datetime(1950, 1, 1).date(),
            sex=Sex.FEMALE,
        ),
        Stay(
            fact_id=f"S-{pid}", patient_id=pid, source=_src("PV1"), stay_id=f"S-{pid}",
            ward=ward, admit_time=datetime(2024, 3, 1), status="in-progress",
        ),
        *(
            MedicationOrder(
                fact_id=f"{pid}-{atc}", patient_id=pid, source=_src("RXE"),
                order_id=f"{pid}-{atc}", drug=Coding(system="ATC", code=atc, display=label),
                atc=atc, label=label, dose=10.0, dose_unit="mg", frequency_per_day=1.0,
                daily_dose=10.0, route="oral", start=datetime(2024, 3, 1), status="active",
            )
            for atc, label in lines
        ),
        LabResult(
            fact_id=f"K-{pid}", patient_id=pid, source=_src("OBX"), concept="potassium",
            code=Coding(system="LOINC", code="2823-3"), value=k, unit="mmol/L",
            time=datetime(2024, 3, 4, 8, 0),
        ),
    ]  # fmt: skip


def test_a_ward_cursor_quiets_an_alert_there_and_not_elsewhere() -> None:
    """Catalogue: bio.hyperkalaemia fires when K+ > k_max (5.5 by default, in [5.0, 6.5]),
    critical when K+ >= 6.0. A K+ of 5.8 alerts in a ward at the default, not in a ward that
    moved k_max to 6.0; a K+ of 6.2 alerts in both."""
    config = site("[wards.NEPHRO-1.cursors]\nk_max = 6.0\n")
    facts = FactSet(
        [
            *_patient_in("cardio-58", "CARDIO-1", 5.8),
            *_patient_in("nephro-58", "NEPHRO-1", 5.8),
            *_patient_in("nephro-62", "NEPHRO-1", 6.2),
        ]
    )
    fired = {
        (a.patient_id, a.ward, a.severity)
        for a in evaluate(default_pack(), facts, NOW, site=config)
        if a.rule_id == "bio.hyperkalaemia"
    }
    assert fired == {("cardio-58", "CARDIO-1", "major"), ("nephro-62", "NEPHRO-1", "critical")}
    # without the file, the default 5.5 holds everywhere
    plain = {a.patient_id for a in evaluate(default_pack(), facts, NOW)}
    assert {"cardio-58", "nephro-58", "nephro-62"} <= plain


def test_a_hospital_cursor_applies_to_every_ward_unless_a_ward_says_otherwise() -> None:
    config = site("[hospital.cursors]\nk_max = 6.0\n[wards.CARDIO-1.cursors]\nk_max = 5.0\n")
    facts = FactSet([*_patient_in("a", "CARDIO-1", 5.8), *_patient_in("b", "GER-1", 5.8)])
    fired = {a.patient_id for a in evaluate(default_pack(), facts, NOW, site=config)}
    assert fired == {"a"}


def test_rules_and_packs_off_per_ward() -> None:
    """Catalogue: combo.opioid_benzo fires when an opioid (N02A) and a benzodiazepine (N05BA)
    are both active. Turned off in one ward, it still fires in another; a pack off in a ward
    gives nothing there."""
    config = site(
        """
        [wards.REA-1]
        disable = ["combo.opioid_benzo"]
        [wards.SSR-1]
        packs = []
        """
    )
    both = ("N02AA01", "N05BA04")  # morphine, oxazepam
    facts = FactSet(
        [
            *_patient_in("icu", "REA-1", 4.0, both),
            *_patient_in("med", "MED-1", 4.0, both),
            *_patient_in("ssr", "SSR-1", 5.8, both),
        ]
    )
    fired = {(a.patient_id, a.rule_id) for a in evaluate(default_pack(), facts, NOW, site=config)}
    assert ("med", "combo.opioid_benzo") in fired
    assert ("icu", "combo.opioid_benzo") not in fired
    assert not any(patient == "ssr" for patient, _ in fired)


def test_a_site_and_explicit_cursors_are_not_mixed() -> None:
    config = site("[hospital]\nlevel = 1\n")
    with pytest.raises(PackError, match="either a site configuration or cursors"):
        evaluate(default_pack(), FactSet([]), NOW, site=config, cursors={"k_max": 6.0})
