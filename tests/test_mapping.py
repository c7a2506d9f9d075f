"""Pure mapping: database values -> Clever's letters. No I/O."""

from decimal import Decimal

import pytest
from conftest import clever_export as ce

ILLINOIS = ce.Profile()
WITH_DISTRICT_RACES = ce.Profile(studentrace_codes={"W": "W", "B": "B", "A": "A", "I": "I", "P": "P"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(16, "16"), (16.0, "16"), (" 16 ", "16"), ("16.0", "16"), (Decimal("16"), "16"), (None, None),
     ("", None), ("   ", None), (-1, "-1"), ("-1.0", "-1"), ("W", "W"), (" w ", "w"), (16.5, "16.5"),
     (True, "1")],
)  # fmt: skip
def test_code_text_normalises_numbers_strings_and_floats(raw, expected):
    assert ce.code_text(raw) == expected


@pytest.mark.parametrize(
    ("fer", "letter"),
    [(12, "I"), (13, "A"), (14, "B"), (15, "P"), (16, "W"), (17, "M"), (11, ""), (None, ""), (99, ""),
     ("15", "P"), (" 13 ", "A"), (14.0, "B"), ("17.0", "M"), (Decimal("12"), "I"), ("x", "")],
)  # fmt: skip
def test_race_from_fer(fer, letter):
    assert ce.race_letter(fer, None, None, ILLINOIS).value == letter


def test_fer_15_is_pacific_islander_not_american_indian():
    # The original script sent 15 to I.
    assert ce.race_letter(15, None, None, ILLINOIS) == ce.Letter("P", "")


@pytest.mark.parametrize(
    ("fedethnicity", "letter"),
    [(1, "Y"), (0, "N"), (-1, ""), (None, ""), ("1", "Y"), (" 0 ", "N"), (1.0, "Y"), (0.0, "N"),
     ("-1", ""), (7, ""), ("", "")],
)  # fmt: skip
def test_hispanic_from_fedethnicity(fedethnicity, letter):
    assert ce.hispanic_letter(fedethnicity, ILLINOIS).value == letter


def test_unanswered_ethnicity_is_blank_with_its_reason_never_n():
    assert ce.hispanic_letter(-1, ILLINOIS) == ce.Letter("", "unanswered (-1)")
    assert ce.hispanic_letter(None, ILLINOIS) == ce.Letter("", "no value")
    assert ce.hispanic_letter(5, ILLINOIS) == ce.Letter("", "unknown code 5")


@pytest.mark.parametrize(
    ("lep", "letter"),
    [(1, "Y"), (0, "N"), (None, "N"), ("1", "Y"), (" 1 ", "Y"), (1.0, "Y"), ("0", "N"), (2, "N")],
)
def test_ell_from_lep(lep, letter):
    assert ce.ell_letter(lep, ILLINOIS).value == letter


@pytest.mark.parametrize(
    ("raw", "text"),
    [(1013, "1013"), (1013.0, "1013"), ("1013", "1013"), (" 1013 ", "1013"), ("1013.0", "1013"),
     (Decimal("1013"), "1013"), (None, None), ("", None), ("abc", None), (1013.5, None)],
)  # fmt: skip
def test_student_number_is_an_integer(raw, text):
    assert ce.student_number_text(raw) == text


def test_hispanic_student_gets_race_from_studentrace_when_the_district_maps_codes():
    assert ce.race_letter(11, "W", 1, WITH_DISTRICT_RACES) == ce.Letter("W", "")
    assert ce.race_letter(11, "B", 2, WITH_DISTRICT_RACES) == ce.Letter("M", "")
    assert ce.race_letter(11, None, 0, WITH_DISTRICT_RACES).value == ""
    assert ce.race_letter(11, "Z", 1, WITH_DISTRICT_RACES) == ce.Letter("", "unknown RACECD Z")
    # Without a district map FER 11 stays blank, and says why.
    assert "carries no race" in ce.race_letter(11, "W", 1, ILLINOIS).reason
    # Non-Hispanic students keep FER's answer even when STUDENTRACE disagrees.
    assert ce.race_letter(13, "W", 1, WITH_DISTRICT_RACES).value == "A"


def test_studentrace_source_two_or_more_races_is_m():
    profile = ce.Profile(race_source="studentrace", studentrace_codes={"1": "W", "2": "B"})
    assert ce.race_letter(None, 1, 1, profile).value == "W"
    assert ce.race_letter(None, "2.0", "1", profile).value == "B"
    assert ce.race_letter(None, 1, 2, profile).value == "M"
    assert ce.race_letter(None, None, 0, profile) == ce.Letter("", "no STUDENTRACE row")


COLUMNS = {name: i for i, name in enumerate(
    ("dcid", "student_number", "first_name", "last_name", "fedethnicity", "state_race", "lep",
     "race_code", "race_count"))}  # fmt: skip


def mapper(exclude=("TEST",), profile=ILLINOIS, columns=COLUMNS):
    return ce.RowMapper(profile, columns, exclude)


def line_of(row, **kwargs):
    """The file line for a row, or None if the student is skipped."""
    m = mapper(**kwargs)
    number, letters = m.letters(row)
    return None if number is None else m.line(number, letters)


def test_row_to_line():
    assert line_of((1, 1013.0, "Zoë", "Muñoz", " 1 ", "11", None, None, None)) == "1013\tY\t\tN"
    assert line_of((2, 1014, "Ann", "Lee", 0, 15.0, "1", None, None)) == "1014\tN\tP\tY"


def test_lines_follow_the_profiles_column_order():
    profile = ce.Profile(columns=("Race", "student_number", "ELL"))
    assert line_of((2, 1014, "Ann", "Lee", 0, 15, 1, None, None), profile=profile) == "P\t1014\tY"


@pytest.mark.parametrize(
    ("first", "last"), [("Test", "Doe"), ("Pat", "TEST"), (" test ", "x"), ("Ann", "tEsT")]
)
def test_test_students_are_skipped_case_insensitively(first, last):
    number, reason = mapper().letters((1, 1, first, last, 0, 16, 0, None, None))
    assert number is None and "test-student" in reason


@pytest.mark.parametrize(("first", "last"), [("Testa", "Doe"), ("Pat", "Contest"), ("Tes", "Doe")])
def test_exclusion_is_exact_not_a_substring(first, last):
    assert line_of((1, 1, first, last, 0, 16, 0, None, None)) == "1\tN\tW\tN"


def test_exclusion_list_can_be_changed():
    assert line_of((1, 1, "Test", "Doe", 0, 16, 0, None, None), exclude=("Dummy", "Sample")) is not None
    assert line_of((1, 1, "SAMPLE", "Doe", 0, 16, 0, None, None), exclude=("Dummy", "Sample")) is None


def test_student_without_a_number_is_skipped_with_a_reason():
    number, reason = mapper().letters((77, None, "Pat", "Doe", 0, 16, 0, None, None))
    assert number is None and "DCID 77" in reason


def changes_of(row):
    columns = {**COLUMNS, "current_hispanic": 9, "current_race": 10, "current_ell": 11}
    number, letters = mapper(columns=columns).letters(row)
    return ce.changed_fields(ce.StudentValues(number, *letters), row, columns)


def test_changes_against_current_values():
    assert changes_of((1, 204511, "A", "B", 0, 17, 0, None, None, "N", "W", "N")) == ("Race W \u2192 M",)
    assert changes_of((1, 204511, "A", "B", 0, 16, 0, None, None, "N", " W ", "N")) == ()
    assert changes_of((1, 204511, "A", "B", -1, 16, 0, None, None, None, None, None)) == (
        "Race (blank) \u2192 W",
        "ELL (blank) \u2192 N",
    )


def test_summary_counts_blanks_with_reasons():
    summary = ce.Summary()
    m = mapper()
    for row in [(1, 1, "a", "b", -1, 99, 0, None, None), (2, 2, "a", "b", 1, 16, 1, None, None)]:
        summary.count(m.letters(row)[1])
    assert summary.blanks("Hispanic_Latino") == 1 and summary.blanks("Race") == 1
    report = summary.report()
    assert "blank, unanswered (-1): 1" in report and "blank, unknown code 99: 1" in report
    assert "summary: written 0, skipped 0, active 2" in summary.line(1.5)
