"""Pure mapping: database values -> Clever's letters, rows -> lines and counts. No I/O."""

from decimal import Decimal

import pytest
from conftest import clever_export as ce

ILLINOIS = ce.Profile()
WITH_DISTRICT_RACES = ce.Profile(studentrace_codes={"W": "W", "B": "B", "A": "A", "I": "I", "P": "P"})
STUDENTRACE_ONLY = ce.Profile(race_source="studentrace", studentrace_codes={"1": "W", "2": "B"})


def row(statement, **values):
    """A row of the export statement, built by column name; unnamed columns are NULL."""
    unknown = set(values) - set(statement.columns)
    assert not unknown, f"not a column of the statement: {unknown}"
    values.setdefault("test_name", 0)
    return tuple(values.get(column) for column in statement.columns)


def export(profile, rows_of, compare=False, changed_only=False):
    """Lines and summary for rows built by rows_of(statement)."""
    statement = ce.export_statement(profile, compare)
    summary = ce.Summary(fields=profile.value_fields(), compared=compare)
    mapper = ce.StudentMapper(profile, statement, summary)
    lines = "".join(ce.export_lines([rows_of(statement)], mapper, changed_only)).splitlines()
    return lines, summary, mapper


def line_of(profile=ILLINOIS, **values):
    """The file line for a one-row student, or None if the student is skipped."""
    lines, _, _ = export(profile, lambda statement: [row(statement, dcid=1, **values)])
    return lines[0] if lines else None


# --- Codes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(16, "16"), (16.0, "16"), (" 16 ", "16"), ("16.0", "16"), (Decimal("16"), "16"), (None, None),
     ("", None), ("   ", None), (-1, "-1"), ("-1.0", "-1"), ("W", "W"), (" w ", "w"), (16.5, "16.5"),
     (True, "1"), ("016", "16"), ("1e3", "1e3"), ("16.5", "16.5"), (Decimal("16.0"), "16")],
)  # fmt: skip
def test_code_text_normalises_numbers_strings_and_floats(raw, expected):
    assert ce.code_text(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["1e99999999", "1e5000", "NaN", "Infinity", "9" * 5000, "-" + "9" * 5000, float("inf"), float("nan")],
)
def test_code_text_never_parses_a_huge_or_special_number(raw):
    # Plain text rules: these stay text (an unknown code), never a numeric parse.
    text = ce.code_text(raw)
    assert text is not None and text == (raw if isinstance(raw, str) else repr(raw))


def test_merged_code_agrees_or_conflicts():
    assert ce.merged_code([16, "16.0", " 16 "]) == "16"
    assert ce.merged_code([None, None]) is None
    assert ce.merged_code([]) is None
    assert ce.merged_code([14, 16]) is ce.CONFLICTING
    assert ce.merged_code([16, None]) is ce.CONFLICTING


# --- Race -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fer", "letter"),
    [(12, "I"), (13, "A"), (14, "B"), (15, "P"), (16, "W"), (17, "M"), (11, ""), (None, ""), (99, ""),
     ("15", "P"), (" 13 ", "A"), (14.0, "B"), ("17.0", "M"), (Decimal("12"), "I"), ("x", "")],
)  # fmt: skip
def test_race_from_fer(fer, letter):
    assert ce.race_letter(fer, (), ILLINOIS).value == letter


def test_fer_15_is_pacific_islander_not_american_indian():
    # The original script sent 15 to I.
    assert ce.race_letter(15, (), ILLINOIS) == ce.Letter("P", "")


def test_blank_race_says_why():
    assert ce.race_letter(None, (), ILLINOIS) == ce.Letter("", "no value")
    assert ce.race_letter(99, (), ILLINOIS) == ce.Letter("", "unknown code 99")
    assert ce.race_letter(ce.CONFLICTING, (), ILLINOIS) == ce.Letter("", "conflicting rows")


def test_hispanic_student_gets_race_from_studentrace_when_the_district_maps_codes():
    assert ce.race_letter(11, ["W"], WITH_DISTRICT_RACES) == ce.Letter("W", "")
    assert ce.race_letter(11, ["W", "B"], WITH_DISTRICT_RACES) == ce.Letter("M", "")
    assert ce.race_letter(11, [], WITH_DISTRICT_RACES) == ce.Letter("", "no STUDENTRACE row")
    assert ce.race_letter(11, ["Z"], WITH_DISTRICT_RACES) == ce.Letter("", "unknown RACECD Z")
    # Without a district map FER 11 stays blank, and says why.
    assert "carries no race" in ce.race_letter(11, ["W"], ILLINOIS).reason
    assert ce.race_letter(11, ["W"], ILLINOIS).value == ""
    # Non-Hispanic students keep FER's answer even when STUDENTRACE disagrees.
    assert ce.race_letter(13, ["W"], WITH_DISTRICT_RACES).value == "A"


def test_studentrace_source_two_or_more_races_is_m():
    assert ce.race_letter(None, [1], STUDENTRACE_ONLY).value == "W"
    assert ce.race_letter(None, ["2.0"], STUDENTRACE_ONLY).value == "B"
    assert ce.race_letter(None, [1, 2], STUDENTRACE_ONLY).value == "M"
    assert ce.race_letter(None, [], STUDENTRACE_ONLY) == ce.Letter("", "no STUDENTRACE row")
    # The state code plays no part when race comes from STUDENTRACE alone.
    assert ce.race_letter(16, [2], STUDENTRACE_ONLY).value == "B"


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (["W "], ce.Letter("W", "")),  # trimmed
        ([" W", "W"], ce.Letter("W", "")),  # the same race twice is one race
        (["W", "C"], ce.Letter("W", "")),  # two district codes for one letter: one race
        (["W", "B"], ce.Letter("M", "")),
        (["W", "X"], ce.Letter("W", "")),  # a code mapped to "" is ignored
        (["X"], ce.Letter("", "RACECD X maps to blank")),
        (["Q"], ce.Letter("", "unknown RACECD Q")),
        (["W", "Q"], ce.Letter("", "unknown RACECD Q")),  # one known race and an unknown: not known
        (["W", "B", "Q"], ce.Letter("M", "")),  # two known races are M whatever the unknown one is
        ([None], ce.Letter("", "no STUDENTRACE row")),  # the LEFT JOIN's NULL for no row
        ([], ce.Letter("", "no STUDENTRACE row")),
    ],
)
def test_studentrace_letter(codes, expected):
    profile = ce.Profile(race_source="studentrace", studentrace_codes={"W": "W", "C": "W", "B": "B", "X": ""})
    assert ce.studentrace_letter(codes, profile) == expected


# --- Hispanic_Latino and ELL ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fedethnicity", "letter"),
    [(1, "Y"), (0, "N"), (-1, ""), (None, ""), ("1", "Y"), (" 0 ", "N"), (1.0, "Y"), (0.0, "N"),
     ("-1", ""), (7, ""), ("", "")],
)  # fmt: skip
def test_hispanic_from_fedethnicity(fedethnicity, letter):
    assert ce.hispanic_letter(fedethnicity, ILLINOIS).value == letter


def test_unanswered_ethnicity_is_blank_with_its_reason_never_n():
    assert ce.hispanic_letter(-1, ILLINOIS) == ce.Letter("", "unanswered (-1)")
    assert ce.hispanic_letter("2", ILLINOIS) == ce.Letter(
        "", "declined to specify (2)"
    )  # an answer, not Yes/No
    assert ce.hispanic_letter(3, ILLINOIS) == ce.Letter("", "unknown code 3")
    assert ce.hispanic_letter(None, ILLINOIS) == ce.Letter("", "no value")
    assert ce.hispanic_letter(5, ILLINOIS) == ce.Letter("", "unknown code 5")
    assert ce.hispanic_letter(ce.CONFLICTING, ILLINOIS) == ce.Letter("", "conflicting rows")


@pytest.mark.parametrize(
    ("lep", "letter"),
    [(1, "Y"), (0, "N"), (None, "N"), ("1", "Y"), (" 1 ", "Y"), (1.0, "Y"), ("0", "N"), ("", "N"),
     (2, ""), (-1, ""), ("Y", ""), ("Yes", "")],
)  # fmt: skip
def test_ell_from_lep(lep, letter):
    assert ce.ell_letter(lep, ILLINOIS).value == letter


def test_an_unknown_lep_code_is_blank_with_its_reason_never_n():
    assert ce.ell_letter(2, ILLINOIS) == ce.Letter("", "unknown LEP code 2")
    assert ce.ell_letter("Yes", ILLINOIS) == ce.Letter("", "unknown LEP code Yes")
    assert ce.ell_letter(ce.CONFLICTING, ILLINOIS) == ce.Letter("", "conflicting rows")


def test_a_profile_chooses_the_ell_codes():
    profile = ce.Profile(ell_yes=("Y",), ell_no=("N",))
    assert ce.ell_letter("Y", profile) == ce.Letter("Y", "")
    assert ce.ell_letter(" N ", profile) == ce.Letter("N", "")
    assert ce.ell_letter(None, profile) == ce.Letter("N", "")
    assert ce.ell_letter(1, profile) == ce.Letter("", "unknown LEP code 1")


def test_a_long_or_multiline_code_is_shortened_and_escaped_in_its_reason():
    reason = ce.ell_letter("7\nERROR forged" + "x" * 100, ILLINOIS).reason
    assert "\n" not in reason and "\\x0a" in reason
    assert len(reason) <= len("unknown LEP code ") + ce.REASON_CODE_LENGTH


# --- Student numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [(1013, "1013"), (1013.0, "1013"), ("1013", "1013"), (" 1013 ", "1013"), ("1013.0", "1013"),
     (Decimal("1013"), "1013"), (None, None), ("", None), ("abc", None), (1013.5, None), (-5, None),
     ("-5", None), ("1e3", None), ("1_000", None), ("²", None), ("١٠١٣", None), ("--7", None),
     ("1013.5", None), (float("inf"), None), (1e20, None), (True, None), ("9" * 5000, None)],
)  # fmt: skip
def test_student_number_is_a_whole_number_in_ascii_digits(raw, text):
    assert ce.student_number_text(raw) == text


# --- Rows -> lines ---------------------------------------------------------------------


def test_row_to_line():
    assert line_of(student_number=1013.0, fedethnicity=" 1 ", state_race="11", lep=None) == "1013\tY\t\tN"
    assert line_of(student_number=1014, fedethnicity=0, state_race=15.0, lep="1") == "1014\tN\tP\tY"


def test_output_line_follows_the_columns():
    assert ce.output_line("1014", ("N", "P", "Y"), ce.OUTPUT_COLUMNS) == "1014\tN\tP\tY"
    assert ce.output_line("1014", ("P", "Y"), ("Race", "student_number", "ELL")) == "P\t1014\tY"


def test_the_value_field_table_is_the_files_columns():
    assert ("student_number", *ce.VALUE_FIELDS) == ce.OUTPUT_COLUMNS


def test_lines_follow_the_profiles_column_order():
    profile = ce.Profile(columns=("Race", "student_number", "ELL"))
    assert line_of(profile, student_number=1014, state_race=15, lep=1) == "P\t1014\tY"


def test_a_student_flagged_by_the_database_as_a_test_student_is_skipped_with_a_reason():
    # The database flags test names (test_source checks the names end to end).
    rows = lambda s: [row(s, dcid=1, student_number=1, test_name=1, state_race=16, lep=0)]  # noqa: E731
    lines, summary, mapper = export(ILLINOIS, rows)
    assert lines == [] and summary.skipped == {"test-student name": 1}
    assert mapper.skips == []  # export_lines logged and cleared them


def test_student_without_a_number_is_skipped_with_a_reason():
    statement = ce.export_statement(ILLINOIS, False)
    summary = ce.Summary()
    mapper = ce.StudentMapper(ILLINOIS, statement, summary)
    assert mapper.student_of_rows([row(statement, dcid=77, student_number=None, state_race=16)]) is None
    assert summary.skipped == {"no numeric student_number": 1}
    assert "DCID 77" in mapper.skips[0].detail and mapper.skips[0].reason == "no numeric student_number"


def test_rows_of_one_student_are_merged_and_disagreeing_rows_give_blank():
    def rows(s):
        return [
            row(s, dcid=1, student_number=1, fedethnicity=0, state_race=16, lep=0),
            row(s, dcid=1, student_number=1, fedethnicity=0, state_race="16.0", lep=1),  # LEP disagrees
            row(s, dcid=2, student_number=2, fedethnicity=1, state_race=13, lep=1),
            row(s, dcid=2, student_number=2, fedethnicity=1, state_race=" 13", lep="1"),
        ]

    lines, summary, _ = export(ILLINOIS, rows)
    assert lines == ["1\tN\tW\t", "2\tY\tA\tY"]
    assert summary.reasons["ELL"] == {"conflicting rows": 1}


def test_one_row_per_studentrace_race_is_one_student():
    def rows(s):
        return [
            row(s, dcid=1, student_number=7, fedethnicity=1, state_race=11, lep=0, race_code=code)
            for code in "WB"
        ]

    lines, summary, _ = export(WITH_DISTRICT_RACES, rows)
    assert lines == ["7\tY\tM\tN"] and summary.exported == 1 and summary.written == 1


def test_two_students_under_one_number_are_written_once_if_they_agree_and_not_at_all_if_not():
    def rows(s):
        return [
            row(s, dcid=1, student_number=5, fedethnicity=0, state_race=16, lep=0),
            row(s, dcid=2, student_number=5, fedethnicity="0", state_race=16.0, lep="0"),  # agrees
            row(s, dcid=3, student_number=6, fedethnicity=0, state_race=16, lep=0),
            row(s, dcid=4, student_number=6, fedethnicity=0, state_race=14, lep=0),  # disagrees
        ]

    lines, summary, _ = export(ILLINOIS, rows)
    assert lines == ["5\tN\tW\tN"]
    assert summary.skipped == {"duplicate student_number with different values": 1}
    assert summary.exported == 1 and summary.written == 1


def test_the_memo_is_bounded_and_every_student_is_still_counted():
    statement = ce.export_statement(ILLINOIS, False)
    summary = ce.Summary()
    mapper = ce.StudentMapper(ILLINOIS, statement, summary)
    mapper.MEMO_LIMIT = 3
    rows = [row(statement, dcid=n, student_number=n, state_race=f"x{n % 7}", lep=0) for n in range(50)]
    text = "".join(ce.export_lines([rows[:20], rows[20:]], mapper, False))
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 50 and len(mapper.memo) <= 3
    assert summary.exported == 50 and summary.blanks("Race") == 50
    assert sum(summary.reasons["Race"].values()) == 50 and summary.reasons["Race"]["unknown code x3"] == 7


# --- Current values, --changed-only, counts ----------------------------------------------------


def test_changes_against_current_values():
    letters = (ce.Letter("N", ""), ce.Letter("M", ""), ce.Letter("N", ""))
    fields = tuple(ce.VALUE_FIELDS)
    assert ce.changed_fields(letters, ("N", "W", "N"), fields) == ("Race W \u2192 M",)
    assert ce.changed_fields(letters, ("N", " M ", "N"), fields) == ()
    blank_hispanic = (ce.Letter("", "unanswered (-1)"), ce.Letter("W", ""), ce.Letter("N", ""))
    assert ce.changed_fields(blank_hispanic, (None, None, None), fields) == (
        "Race (blank) \u2192 W",
        "ELL (blank) \u2192 N",
    )


def test_a_current_value_cannot_start_a_log_line():
    letters = (ce.Letter("N", ""), ce.Letter("W", ""), ce.Letter("N", ""))
    (change,) = ce.changed_fields(letters, ("N", "W\nERROR forged", "N"), tuple(ce.VALUE_FIELDS))
    assert change == "Race W\\x0aERROR forged \u2192 W"


def test_changed_only_writes_only_students_whose_values_differ():
    def rows(s):
        return [
            row(s, dcid=1, student_number=1, state_race=16, lep=0, fedethnicity=0,
                current_hispanic_latino="N", current_race="W", current_ell="N"),
            row(s, dcid=2, student_number=2, state_race=17, lep=0, fedethnicity=0,
                current_hispanic_latino="N", current_race="W", current_ell="N"),
            row(s, dcid=3, student_number=3, state_race=16, lep=0, fedethnicity=0),
        ]  # fmt: skip

    lines, summary, _ = export(ILLINOIS, rows, compare=True, changed_only=True)
    assert lines == ["2\tN\tM\tN", "3\tN\tW\tN"]
    assert summary.changed == 2 and summary.exported == 3 and summary.written == 2
    all_lines, summary, _ = export(ILLINOIS, rows, compare=True, changed_only=False)
    assert len(all_lines) == 3 and summary.changed == 2


def test_summary_counts_blanks_with_reasons():
    def rows(s):
        return [
            row(s, dcid=1, student_number=1, fedethnicity=-1, state_race=99, lep=0),
            row(s, dcid=2, student_number=2, fedethnicity=1, state_race=16, lep=1),
        ]

    _, summary, _ = export(ILLINOIS, rows)
    assert summary.blanks("Hispanic_Latino") == 1 and summary.blanks("Race") == 1
    report = summary.report()
    assert "blank, unanswered (-1): 1" in report and "blank, unknown code 99: 1" in report
    assert "summary: written 2, skipped 0, exported 2" in summary.line(1.5)
    assert "would change: not compared" in report


def test_summary_line_and_report_count_skips_by_reason():
    summary = ce.Summary()
    summary.add((ce.Letter("Y", ""), ce.Letter("W", ""), ce.Letter("N", "")), 3)
    summary.written = 3
    summary.skip("test-student name")
    summary.skip("test-student name")
    summary.skip("no numeric student_number")
    assert summary.line(0.5) == (
        "summary: written 3, skipped 3, exported 3, blank Hispanic_Latino 0, blank Race 0, blank ELL 0, seconds 0.50"
    )
    report = summary.report().splitlines()
    assert report[report.index("  skipped: 3") + 1 :][:2] == [
        "    test-student name: 2",
        "    no numeric student_number: 1",
    ]
