"""HPRIM Santé connector: the libHprim samples, delimiters, continuations, bad input, fuzz.

Golden files: ``tests/golden/hprim/<sample>.json`` hold the facts and non-fatal errors of each
sample. After a deliberate change, regenerate them with
``VIGIE_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_hprim.py -k golden`` and review the diff.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie import settings as vigie_settings
from vigie.connectors import hprim
from vigie.connectors.base import FeedError, ParseOutcome, RawMessage
from vigie.facts import Fact, FlagCode, LabResult, Patient, Sex
from vigie.terminology import Terminology

GOLDEN = Path(__file__).parent / "golden" / "hprim"
ORU_21 = "libhprim_test_oru_h2.1.hpr"
TRUNCATED_22 = "libhprim_simpleexample_h2.2_truncated.hpr"
SAMPLES = (ORU_21, TRUNCATED_22)


def sample(shared_data: Path, name: str) -> bytes:
    return (shared_data / "hprim" / name).read_bytes()


def load(name: str, content: bytes, terminology: Terminology | None = None) -> ParseOutcome:
    """All facts and errors of a document (several messages merged)."""
    outcome = ParseOutcome()
    for raw in hprim.split(name, content):
        if terminology is None:
            outcome.extend(hprim.parse(raw))
        else:
            outcome.extend(hprim.parse_message(raw, terminology))
    return outcome


def labs(outcome: ParseOutcome) -> dict[str, LabResult]:
    return {fact.code.code: fact for fact in outcome.facts if isinstance(fact, LabResult)}


def patients(outcome: ParseOutcome) -> list[Patient]:
    return [fact for fact in outcome.facts if isinstance(fact, Patient)]


def message(*records: str, eol: str = "\r") -> bytes:
    header = "H|~^\\&|T.HPR||LAB||ORU|||ME||P|H2.2~C|202401020800"
    return eol.join([header, *records, "L|1", ""]).encode("utf-8")


PATIENT = "P|1|P42|||DOE~JOHN||19500101|F"
REQUEST = "OBR|1|S1||||202401020700"


# The samples --------------------------------------------------------------------------------


def test_both_samples_are_sniffed_as_hprim(shared_data: Path) -> None:
    for name in SAMPLES:
        assert hprim.sniff(sample(shared_data, name)[:4096], name)
    assert not hprim.sniff(b"MSH|^~\\&|SENDER|", "adt.hl7")
    assert not hprim.sniff(b'<?xml version="1.0"?><Messages>', "pn13.xml")
    assert not hprim.sniff(b"Hello|world", "notes.txt")


def test_oru_21_results_keep_value_unit_range_and_time(shared_data: Path) -> None:
    outcome = load(ORU_21, sample(shared_data, ORU_21))
    assert outcome.errors == []
    tgo = labs(outcome)["OT1"]
    assert (tgo.value, tgo.unit, tgo.original_value, tgo.original_unit) == (16, "U/L", "16", "UI/l")
    assert (tgo.reference_low, tgo.reference_high) == (10, 40)
    assert tgo.time == datetime(2012, 4, 28, 14, 38)
    assert tgo.abnormal_flag == "N"
    assert tgo.code.display == "TGO ADVIA"
    # TGO (AST) is not one of our concepts: kept, value and all, and flagged
    assert tgo.concept is None
    assert [flag.code for flag in tgo.flags] == [FlagCode.UNMAPPED_CODE]
    assert tgo.source.position == "line 5, OBX[1]"
    hematocrit = labs(outcome)["HT"]
    assert (hematocrit.value, hematocrit.unit, hematocrit.time) == (
        38.2,
        "%",
        datetime(2012, 4, 28, 15, 4),
    )


def test_oru_21_patient_is_p_field_3(shared_data: Path) -> None:
    [patient] = patients(load(ORU_21, sample(shared_data, ORU_21)))
    assert patient.patient_id == "398"
    assert (patient.birth_date, patient.sex) == (date(1937, 3, 25), Sex.FEMALE)
    assert all(
        lab.patient_id == "398" for lab in labs(load(ORU_21, sample(shared_data, ORU_21))).values()
    )


def test_file_reference_result_is_kept_as_non_numeric(shared_data: Path) -> None:
    text = labs(load(ORU_21, sample(shared_data, ORU_21)))["TEXTE"]
    assert text.value is None
    assert text.original_value == "GALAXIE~AL213202.j1~TXT"
    assert {flag.code for flag in text.flags} == {
        FlagCode.UNMAPPED_CODE,
        FlagCode.NON_NUMERIC_VALUE,
    }
    # no OBX time: the sampling time of the request (OBR field 8) stands in
    assert text.time == datetime(2012, 4, 28, 14, 12)


def test_continuation_record_is_glued_to_the_previous_line(shared_data: Path) -> None:
    [raw] = hprim.split(ORU_21, sample(shared_data, ORU_21))
    records = hprim.read_records(raw)
    assert [r.kind for r in records] == ["H", "P", "OBR", "OBX", "C", "OBX", "OBX", "L"]
    request = records[2]
    assert request.field(17) == "PILO~DR PITO OLIV~L~TESTHP~Clinique HP~L"
    assert request.field(18) == "0468638395"
    assert request.field(33) == "VBIO"
    # repeated tests in OBR field 5 use '^' as the repeat separator
    assert request.field(5).split("^")[1] == "TGP1~TGP ADVI~L"


def test_continuation_inside_a_result_value() -> None:
    content = message(
        PATIENT, REQUEST, "OBX|1|NM|GLY~Glyc~L||5,", "A|2|mmol/l|||||F|||202401020750"
    )
    assert labs(load("cont.hpr", content))["GLY"].original_value == "5,2"


def test_truncated_sample_loads_its_good_part_and_says_what_is_wrong(shared_data: Path) -> None:
    outcome = load(TRUNCATED_22, sample(shared_data, TRUNCATED_22))
    [patient] = patients(outcome)
    assert (patient.patient_id, patient.birth_date, patient.sex) == (
        "01234",
        date(1979, 1, 1),
        Sex.FEMALE,
    )
    red_cells = labs(outcome)["GR"]
    assert (red_cells.value, red_cells.unit, red_cells.abnormal_flag) == (3.98, "/mm3", "L")
    assert red_cells.time == datetime(2007, 5, 29, 16, 44)
    # '7 - 5.7' is not a range: reported, not used
    assert (red_cells.reference_low, red_cells.reference_high) == (None, None)
    errors = [str(error) for error in outcome.errors]
    assert len(errors) == 3
    assert "line 1, H[1] field 14: expected a date YYYYMMDD[HHMM[SS]], got '200700'" in errors[0]
    assert "line 5, OBX[1] field 8: expected a reference range" in errors[1]
    assert "line 7: expected an L record ending the message" in errors[2]
    assert all(error.startswith(TRUNCATED_22) for error in errors)


def test_several_messages_in_one_file(shared_data: Path) -> None:
    content = sample(shared_data, ORU_21) + sample(shared_data, TRUNCATED_22)
    raws = list(hprim.split("both.hpr", content))
    assert [raw.position for raw in raws] == ["line 1", "line 10"]
    assert len({raw.message_id for raw in raws}) == 2
    outcome = load("both.hpr", content)
    assert {p.patient_id for p in patients(outcome)} == {"398", "01234"}
    # positions are document lines, also in the second message
    assert labs(outcome)["GR"].source.position == "line 14, OBX[1]"


@pytest.mark.parametrize("eol", ["\r", "\n", "\r\n"])
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_line_endings_and_encodings_give_the_same_facts(eol: str, encoding: str) -> None:
    text = message(
        PATIENT, REQUEST, "OBX|1|NM|HT~Hématocrite~L||38.2|%|35 - 48|N|||F|||202401020750", eol=eol
    )
    outcome = load("x.hpr", text.decode("utf-8").encode(encoding))
    assert outcome.errors == []
    assert labs(outcome)["HT"].code.display == "Hématocrite"
    assert labs(outcome)["HT"].source.position == "line 4, OBX[1]"


def test_delimiters_are_read_from_the_header(shared_data: Path) -> None:
    original = sample(shared_data, ORU_21).decode("latin-1")
    swapped = original.translate(str.maketrans("|~^\\&", "!@#$*")).encode("latin-1")
    assert hprim.sniff(swapped, "x.hpr")
    facts = {fact.fact_id: fact.model_dump(exclude={"source"}) for fact in load("x", swapped).facts}
    expected = {
        fact.fact_id: fact.model_dump(exclude={"source"})
        for fact in load("x", sample(shared_data, ORU_21)).facts
    }
    facts_text = json.dumps(facts, default=str).replace(
        "GALAXIE@AL213202.j1@TXT", "GALAXIE~AL213202.j1~TXT"
    )
    assert json.loads(facts_text) == json.loads(json.dumps(expected, default=str))


def test_escape_sequences_are_resolved() -> None:
    content = message(
        PATIENT, REQUEST, "OBX|1|ST|COM~A\\S\\B\\T\\C~L||x\\F\\y|||||||||202401020750"
    )
    lab = labs(load("esc.hpr", content))["COM"]
    assert lab.code.display == "A~B&C"
    assert lab.original_value == "x|y"


def test_fact_ids_are_stable_and_unique(shared_data: Path) -> None:
    content = sample(shared_data, ORU_21)
    first = [fact.fact_id for fact in load(ORU_21, content).facts]
    again = [fact.fact_id for fact in load("renamed.hpr", content).facts]
    assert first == again
    assert len(set(first)) == len(first)
    assert "hprim:398:idechantillo/20428E9575:OT1" in first


# Message identity and versions ------------------------------------------------------------


def test_message_id_is_the_sender_and_the_requests(shared_data: Path) -> None:
    """Read from the samples: H field 5 (sender id~name), P field 3, OBR fields 3 and 4."""
    # H|~^\&|Test1.HPR||PO~LABM|...; P|1|398|...; OBR|1|idechantillo~|~20428E9575|...
    [oru] = hprim.split(ORU_21, sample(shared_data, ORU_21))
    assert oru.message_id == "PO|398:idechantillo/20428E9575"
    # H|~^\&|TEST.HPR||code~labo|...; P|1|01234|...; OBR|1|~|227dc251e1~70528100180|...
    [truncated] = hprim.split(TRUNCATED_22, sample(shared_data, TRUNCATED_22))
    assert truncated.message_id == "code|01234:227dc251e1/70528100180"
    [renamed] = hprim.split("renamed.hpr", sample(shared_data, ORU_21))
    assert renamed.message_id == oru.message_id


def test_message_id_names_every_request() -> None:
    content = message(PATIENT, "OBR|1||S2", "OBR|2||S1", "P|2|P7", "OBR|1|A~B|C")
    [raw] = hprim.split("x.hpr", content)
    assert raw.message_id == "LAB|P42:S1,P42:S2,P7:A/B/C"


def test_without_a_request_number_or_a_sender_the_id_is_a_content_hash() -> None:
    for content in (
        message(PATIENT, "OBR|1||", "OBX|1|NM|K~K~L||4|mmol/l|||||F|||202401020750"),
        message(PATIENT, REQUEST).replace(b"||LAB||", b"||||"),
        message(PATIENT),
    ):
        [raw] = hprim.split("x.hpr", content)
        assert raw.message_id == hashlib.sha256(content).hexdigest()[:16]


def test_many_requests_give_a_storable_id() -> None:
    requests = [f"OBR|{n}||SPECIMEN-NUMBER-{n:04}" for n in range(100)]
    [raw] = hprim.split("x.hpr", message(PATIENT, *requests))
    assert raw.message_id.startswith("LAB|requests:") and len(raw.message_id) < 40


def test_version_time_is_the_header_date(shared_data: Path) -> None:
    """H field 14 of the 2.1 sample, ``201204292059`` (tests read times as UTC)."""
    [raw] = hprim.split(ORU_21, sample(shared_data, ORU_21))
    outcome = hprim.parse(raw)
    assert outcome.version_time == datetime(2012, 4, 29, 20, 59)
    assert {fact.source.version_time for fact in outcome.facts} == {outcome.version_time}
    # the 2.2 sample's field 14 is '200700', not a date: reported, and no version time
    [raw] = hprim.split(TRUNCATED_22, sample(shared_data, TRUNCATED_22))
    assert hprim.parse(raw).version_time is None


def correction_of(original: bytes) -> bytes:
    """The 2.1 sample sent again the next day: TGO corrected from 16 to 18 UI/l (status C)."""
    corrected = original.replace(b"P|H2.1~C|201204292059", b"P|H2.1~C|201204300815")
    corrected = corrected.replace(
        b"OBX|1|NM|OT1~TGO ADVIA~L||16|UI/l|10 - 40|N|||F|",
        b"OBX|1|NM|OT1~TGO ADVIA~L||18|UI/l|10 - 40|N|||C|",
    )
    assert corrected.count(b"||18|UI/l") == 1 and b"201204300815" in corrected
    return corrected


def test_a_correction_is_a_new_version_of_the_same_message(shared_data: Path) -> None:
    original = sample(shared_data, ORU_21)
    [first] = hprim.split(ORU_21, original)
    [second] = hprim.split("next-day.hpr", correction_of(original))
    assert first.message_id == second.message_id and first.sha256 != second.sha256
    before, after = hprim.parse(first), hprim.parse(second)
    assert (before.version_time, after.version_time) == (
        datetime(2012, 4, 29, 20, 59),
        datetime(2012, 4, 30, 8, 15),
    )
    assert (labs(before)["OT1"].value, labs(after)["OT1"].value) == (16, 18)
    assert labs(before)["OT1"].fact_id == labs(after)["OT1"].fact_id


@pytest.mark.parametrize("status", ["D", "W"])
def test_a_deleted_or_wrong_result_is_a_retraction(shared_data: Path, status: str) -> None:
    original = sample(shared_data, ORU_21)
    withdrawn = original.replace(
        b"||16|UI/l|10 - 40|N|||F|", f"||16|UI/l|10 - 40|N|||{status}|".encode()
    )
    assert withdrawn != original
    [raw] = hprim.split(ORU_21, withdrawn)
    outcome = hprim.parse(raw)
    [retraction] = outcome.retractions
    assert (retraction.kind, retraction.fact_id, retraction.patient_id) == (
        "lab",
        labs(load(ORU_21, original))["OT1"].fact_id,
        "398",
    )
    assert retraction.source.position == "line 5, OBX[1]"
    assert retraction.source.version_time == datetime(2012, 4, 29, 20, 59)
    assert "OT1" not in labs(outcome) and "HT" in labs(outcome)


def test_final_and_corrected_results_are_facts(shared_data: Path) -> None:
    for status in ("F", "C", "P"):
        content = message(PATIENT, REQUEST, f"OBX|1|NM|K~K~L||4|mmol/l|||||{status}|||202401020750")
        [raw] = hprim.split("x.hpr", content)
        outcome = hprim.parse(raw)
        assert (len(labs(outcome)), outcome.retractions) == (1, []), status


# Mapping through the terminology ------------------------------------------------------------


@pytest.fixture
def site_terminology(tmp_path: Path) -> Terminology:
    """A site table mapping two local codes; nothing is mapped by label."""
    (tmp_path / "site_lab_codes.csv").write_text(
        "system,code,concept,implied_unit\nHPRIM,K,potassium,mmol/L\nLOCAL,CREA,creatinine,\n",
        encoding="utf-8",
    )
    return Terminology(site_dir=tmp_path)


def test_mapped_code_is_converted_to_the_canonical_unit(site_terminology: Terminology) -> None:
    content = message(
        PATIENT,
        REQUEST,
        "OBX|1|NM|K~Potassium~L||5,9|mmol/l|3,5 - 5,0|H|||F|||202401020750",
        "OBX|2|NM|CREA~Créatinine~L||12|mg/l|6 - 12|N|||F|||202401020750",
        "OBX|3|NM|KAL~Potassium~L||4.1|mmol/l|||||F|||202401020750",
    )
    results = labs(load("m.hpr", content, site_terminology))
    potassium = results["K"]
    assert (potassium.concept, potassium.value, potassium.unit) == ("potassium", 5.9, "mmol/L")
    assert (potassium.reference_low, potassium.reference_high) == (3.5, 5.0)
    assert potassium.flags == ()
    creatinine = results["CREA"]  # found under the LOCAL system
    assert (creatinine.concept, creatinine.value, creatinine.unit) == (
        "creatinine",
        106.104,
        "µmol/L",
    )
    assert (creatinine.reference_low, creatinine.reference_high) == (53.052, 106.104)
    # same label, unmapped code: no guessing
    assert results["KAL"].concept is None


def test_unknown_unit_keeps_the_original_and_flags_it(site_terminology: Terminology) -> None:
    content = message(PATIENT, REQUEST, "OBX|1|NM|K~Potassium~L||5.9|mg/dL|||||F|||202401020750")
    potassium = labs(load("u.hpr", content, site_terminology))["K"]
    assert (potassium.concept, potassium.value, potassium.unit) == ("potassium", None, None)
    assert (potassium.original_value, potassium.original_unit) == ("5.9", "mg/dL")
    assert [flag.code for flag in potassium.flags] == [FlagCode.UNKNOWN_UNIT]


# Bad input --------------------------------------------------------------------------------


def raw_of(content: bytes) -> RawMessage:
    [raw] = hprim.split("bad.hpr", content)
    return raw


@pytest.mark.parametrize(
    ("content", "where", "expected"),
    [
        (b"H|||||\rP|1|P1\rL|1\r", "line 1, H field 2", "five distinct delimiters"),
        (b"H|~~\\&|F\rL|1\r", "line 1, H field 2", "five distinct delimiters"),
        (b"H|~^\r", "line 1, H field 2", "five distinct delimiters"),
        (b"Hello world\r", "line 1, H field 2", "five distinct delimiters"),
        (b"MSH|^~\\&|LAB\r", "line 1", "an H header record first"),
        ("H|~^\\&|x\r".encode("utf-16"), "line 1", "UTF-8 or Latin-1"),
        (b"H|~^\\&|x\rP|1|P\x00\rL|1\r", "line 2", "UTF-8 or Latin-1"),
    ],
)
def test_unusable_messages_raise_a_located_error(content: bytes, where: str, expected: str) -> None:
    with pytest.raises(FeedError) as caught:
        hprim.parse(raw_of(content))
    assert caught.value.document == "bad.hpr"
    assert caught.value.position == where
    assert expected in caught.value.expected


@pytest.mark.parametrize(
    ("records", "where", "expected"),
    [
        (
            (PATIENT, REQUEST, "OBX|1|NM|K~K~L||4|mmol/l|||||F|||20121340"),
            "OBX[1] field 15",
            "a date",
        ),
        (("P|1|P42|||DOE~JOHN||19501301|F",), "P[1] field 8", "a date"),
        (("P|1|P42|||DOE~JOHN||19500101|X",), "P[1] field 9", "a sex"),
        (
            ("P|1||||DOE~JOHN||19500101|F", REQUEST, "OBX|1|NM|K~K~L||4|||||||||202401020750"),
            "P[1] field 3",
            "a patient identifier",
        ),
        ((REQUEST, "OBX|1|NM|K~K~L||4|||||||||202401020750"), "OBX[1]", "a P record"),
        ((PATIENT, "OBX|1|NM|K~K~L||4|mmol/l|||||F"), "OBX[1] field 15", "an observation time"),
        (
            (PATIENT, REQUEST, "OBX|1|NM|||4|mmol/l|||||F|||202401020750"),
            "OBX[1] field 4",
            "a result code",
        ),
        (
            (PATIENT, REQUEST, "OBX|1|NM|K~K~L||4|mmol/l|abc||||F|||202401020750"),
            "OBX[1] field 8",
            "a reference range",
        ),
        ((PATIENT, "ZZZ|1|what"), "ZZZ[1] field 1", "a record type"),
    ],
)
def test_bad_fields_are_located_and_the_rest_loads(
    records: tuple[str, ...], where: str, expected: str
) -> None:
    good = "OBX|9|NM|NA~Sodium~L||140|mmol/l|||||F|||202401020750"
    content = message(*records, good) if records[0] == PATIENT else message(*records)
    outcome = hprim.parse(raw_of(content))
    assert outcome.errors, "the problem must be reported"
    error = outcome.errors[0]
    assert error.position is not None and error.position.endswith(where)
    assert error.position.startswith("line ")
    assert expected in error.expected
    if records[0] == PATIENT:
        assert "NA" in labs(outcome)


def test_bad_error_message_reads_like_the_contract() -> None:
    content = message(PATIENT, REQUEST, "OBX|1|NM|K~K~L||4|mmol/l|||||F|||2012")
    [error] = hprim.parse(raw_of(content)).errors
    assert str(error).startswith("bad.hpr: message ")
    assert str(error).endswith(
        "line 4, OBX[1] field 15: expected a date YYYYMMDD[HHMM[SS]] "
        "(a result without its time is not loaded), got '2012'"
    )


# Golden files -----------------------------------------------------------------------------


def golden_form(outcome: ParseOutcome) -> dict[str, object]:
    facts = sorted(outcome.facts, key=lambda fact: (fact.kind, fact.fact_id))
    return {
        "facts": [{"kind": fact.kind, **fact.model_dump(mode="json")} for fact in facts],
        "errors": [str(error) for error in outcome.errors],
    }


@pytest.mark.parametrize("name", SAMPLES)
def test_golden(shared_data: Path, name: str) -> None:
    actual = golden_form(load(name, sample(shared_data, name)))
    path = GOLDEN / f"{Path(name).stem}.json"
    if vigie_settings.value("regenerate_golden"):
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert actual == json.loads(path.read_text(encoding="utf-8"))


# Fuzz -------------------------------------------------------------------------------------


def parse_all(name: str, content: bytes) -> None:
    """Facts or FeedError for each message; anything else is a bug."""
    for raw in hprim.split(name, content):
        try:
            outcome = hprim.parse(raw)
        except FeedError as error:
            assert error.document == name
            continue
        assert all(isinstance(fact, Fact) for fact in outcome.facts)
        assert all(isinstance(error, FeedError) for error in outcome.errors)


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    from tests.conftest import SHARED_DATA

    content = bytearray((SHARED_DATA / "hprim" / draw(st.sampled_from(SAMPLES))).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        if not content:
            break
        at = draw(st.integers(0, len(content) - 1))
        action = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
        piece = draw(
            st.sampled_from(
                [
                    b"|",
                    b"~",
                    b"^",
                    b"\\",
                    b"&",
                    b"\r",
                    b"\n",
                    b"A|",
                    b"H|~^\\&|",
                    b"OBX|",
                    b"P|",
                    b"9",
                    b"\x00",
                    b"\xe9",
                    b"\xff",
                ]
            )
        )
        if action == "replace":
            content[at : at + 1] = piece
        elif action == "delete":
            del content[at : at + draw(st.integers(1, 20))]
        elif action == "insert":
            content[at:at] = piece
        else:
            del content[at:]
    return bytes(content)


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_samples())
def test_fuzz_mutated_samples(content: bytes) -> None:
    parse_all("fuzz.hpr", content)


@pytest.mark.property
@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.text(alphabet="HPOBXCLA|~^\\&\r\n0123456789.,- ", max_size=300).map(
            lambda text: ("H|~^\\&|" + text).encode("utf-8")
        ),
    )
)
def test_fuzz_random_text(content: bytes) -> None:
    parse_all("fuzz.hpr", content)
