"""The documentation stays true: every relative link resolves (anchors too), every
command line the README shows parses with the script's own parser, and the README's
one exit-code table equals EXIT_CODES (with the hex Task Scheduler shows)."""

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO

import clever_export

README = REPO / "README.md"
DOCS_DIR = REPO / "docs"
MARKDOWN = [
    README,
    REPO / "CHANGELOG.md",
    REPO / "CONTRIBUTING.md",
    REPO / "bench" / "README.md",
    *sorted(DOCS_DIR.glob("*.md")),
]
# Files whose code blocks and inline code show clever_export.py's flags (bench/README.md
# and CONTRIBUTING.md show bench.py's and other tools' flags).
SHOWS_SCRIPT_FLAGS = [README, *sorted(DOCS_DIR.glob("*.md"))]
README_MAX_LINES = 300  # issue 17: a README an admin reads to the end

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
SCRIPT = re.compile(r"clever_export\.py(?=[\s\"']|$)")
SHELL_OPERATORS = re.compile(r"&&|\|\||[|;<>]")
# A token that stands for a value the reader supplies: HOURS, <uuid>, ….
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]+$|<[^>]*>|…|\.\.\.")


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the text without markup, lower case,
    punctuation dropped, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _level, heading in HEADING.findall(FENCE.sub("", text_of(path))):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target for target in LINK.findall(prose(text_of(path))) if not re.match(r"^[a-z][a-z+.-]*:", target)
    ]


# --- (a) Links ---------------------------------------------------------------------


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_every_relative_link_resolves(path):
    assert path.is_file(), f"{rel(path)} is missing"
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {rel(linked)}")
    assert not broken, f"{rel(path)}: " + "; ".join(broken)


def test_the_readme_links_to_every_docs_page_and_the_moved_sections():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    expected = {*DOCS_DIR.glob("*.md"), REPO / "CONTRIBUTING.md", REPO / "bench" / "README.md"}
    assert list(DOCS_DIR.glob("*.md")), "docs/ holds no pages"
    missing = sorted(rel(path) for path in expected if path.resolve() not in linked)
    assert not missing, f"README.md does not link to {missing}"


def test_the_slugs_follow_github():
    assert github_slug("Monitoring (required)") == "monitoring-required"
    assert github_slug("What does `-v` add?") == "what-does--v-add"
    assert github_slug("Installing on the district's server") == "installing-on-the-districts-server"


# --- (b) Commands ------------------------------------------------------------------


def script_arguments(line: str) -> list[str] | None:
    """The arguments a shown command line passes to clever_export.py, or None when
    the line does not run it (a comment, `cp clever_export.py …`)."""
    stripped = line.strip()
    if stripped.startswith(("#", "REM ", "::")):
        return None
    found = SCRIPT.search(line)
    if found is None:
        return None
    rest = line[found.end() :]
    if line[: found.start()].count('"') % 2:  # inside a quoted string: /TR "… clever_export.py --quiet"
        rest = rest.partition('"')[0]
    rest = SHELL_OPERATORS.split(rest)[0].rstrip()
    rest = re.sub(r"\s[\^`\\]$", "", rest)  # cmd.exe, PowerShell and sh line continuations
    tokens = shlex.split(rest, comments=True)
    if tokens and not tokens[0].startswith("-"):
        return None
    return tokens


def shown_command_lines(path: Path) -> list[list[str]]:
    found = []
    for block in code_blocks(text_of(path)):
        for line in block.splitlines():
            arguments = script_arguments(line)
            if arguments is not None:
                found.append(arguments)
    return found


def unknown_flags(tokens: list[str]) -> list[str]:
    known = clever_export.build_parser()._option_string_actions
    flags = [token.partition("=")[0] for token in tokens if re.match(r"^--?[A-Za-z]", token)]
    return [flag for flag in flags if flag not in known]


def test_the_readme_shows_the_commands_an_admin_runs():
    shown = [" ".join(arguments) for arguments in shown_command_lines(README)]
    for needed in ("--demo", "--show-host-key", "--check", "--status", "--status --max-age 26"):
        assert any(needed in line.split("--ping-url")[0] for line in shown), f"README shows no {needed}"
    assert any("--ping-url" in line for line in shown), "README's monitoring shows no --ping-url"


@pytest.mark.parametrize("path", SHOWS_SCRIPT_FLAGS, ids=rel)
def test_every_command_line_shown_parses(path):
    for arguments in shown_command_lines(path):
        assert not unknown_flags(arguments), (
            f"{rel(path)}: {arguments}: --help does not know {unknown_flags(arguments)}"
        )
        if any(PLACEHOLDER.search(token) for token in arguments):
            continue  # a value for the reader to fill in: the flags are checked above
        try:
            clever_export.build_parser().parse_args(arguments)
        except SystemExit as stopped:  # --help, --version
            assert stopped.code in (0, None), f"{rel(path)}: {arguments}"
        except Exception as error:  # the parser's one-line error (ConfigError)
            pytest.fail(f"{rel(path)}: {arguments} does not parse: {error}")


@pytest.mark.parametrize("path", SHOWS_SCRIPT_FLAGS, ids=rel)
def test_every_flag_in_inline_code_is_known(path):
    """`--status --max-age 26` in the prose names real flags too (values are not checked:
    the text also shows wrong ones, such as `--timeout inf`)."""
    for _ticks, code in INLINE_CODE.findall(FENCE.sub("", text_of(path))):
        if code.lstrip().startswith("--") or SCRIPT.search(code):
            arguments = (
                script_arguments(code) if SCRIPT.search(code) else shlex.split(code.replace("\\", "/"))
            )
            assert not unknown_flags(arguments or []), f"{rel(path)}: `{code}` names an unknown flag"


def test_the_readme_test_command_is_what_ci_runs():
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    test_command = next(line for line in ci_lines if line.endswith("-m pytest") and not line.startswith("#"))
    readme_lines = {line.strip() for block in code_blocks(text_of(README)) for line in block.splitlines()}
    assert test_command in readme_lines
    assert test_command in {line.strip() for line in text_of(REPO / "CONTRIBUTING.md").splitlines()}


# --- (c) Exit codes ----------------------------------------------------------------


def tables(text: str) -> list[list[list[str]]]:
    """Markdown tables outside code blocks: rows of stripped cells, header first, no rule."""
    found, current = [], []
    for line in [*FENCE.sub("", text).splitlines(), ""]:
        if line.lstrip().startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def is_exit_code_table(table: list[list[str]]) -> bool:
    return any(re.fullmatch(r"(exit )?code", cell.lower()) for cell in table[0])


def test_the_readme_has_one_exit_code_table_equal_to_exit_codes():
    exit_tables = [table for table in tables(text_of(README)) if is_exit_code_table(table)]
    assert len(exit_tables) == 1, f"README.md shows {len(exit_tables)} exit-code tables; keep one"
    header, *rows = exit_tables[0]
    assert header == ["code", "hex", "meaning"]
    shown = {}
    for code, hex_code, meaning in rows:
        assert hex_code == f"0x{int(code):X}", (
            f"exit {code}: Task Scheduler shows 0x{int(code):X}, not {hex_code}"
        )
        shown[int(code)] = meaning.replace("`", "")
    assert list(shown) == list(clever_export.EXIT_CODES), "codes differ from EXIT_CODES (or their order)"
    assert shown == clever_export.EXIT_CODES


@pytest.mark.parametrize("path", [path for path in MARKDOWN if path != README], ids=rel)
def test_no_other_page_repeats_the_exit_code_table(path):
    assert not [table for table in tables(text_of(path)) if is_exit_code_table(table)], (
        f"{rel(path)} has an exit-code table: link to the README's instead"
    )


def test_the_readme_stays_short():
    lines = len(text_of(README).splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


# --- (e) Tables that mirror the script's own tables --------------------------------

CONFIGURATION = DOCS_DIR / "configuration.md"


def table_rows(path: Path, heading: str) -> list[list[str]]:
    """The cells of the first table under `heading` (its header and rule left out)."""
    section = text_of(path).split(f"\n{heading}\n", 1)[1]
    rows = []
    for line in section.splitlines():
        if rows and not line.startswith("|"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    return rows[2:]


def shown_default(text: str) -> str | None:
    """What a flag's text gives as its default, as written: `20`, `raceethnicity.txt beside the script`."""
    found = re.search(r"\(default:? ([^;)]+)", text.replace("`", ""))
    return found[1].strip() if found else None


def test_the_flags_table_is_the_parsers_flags_defaults_and_exit_codes():
    documented = {}
    for first, meaning in table_rows(CONFIGURATION, "## Flags"):
        names = re.findall(r"`(-[^`]+)`", first)
        flag, *metavar = names[-1].split()
        documented[flag] = (metavar[0] if metavar else None, meaning)
    flags = {flag.names.split()[-1]: flag for flag in clever_export.FLAGS}
    assert set(documented) == {*flags, "--version"}
    for name, flag in flags.items():
        metavar, meaning = documented[name]
        assert metavar == flag.metavar, name
        help_text = flag.help % {"default": flag.default}
        assert shown_default(meaning) == shown_default(help_text), name
        codes = set(re.findall(r"\bexit (\d+)", meaning)) | set(re.findall(r"\bexit (\d+)", help_text))
        assert set(re.findall(r"\bexit (\d+)", meaning)) == set(re.findall(r"\bexit (\d+)", help_text)), name
        assert all(int(code) in clever_export.EXIT_CODES for code in codes), name


def test_every_setting_in_the_docs_and_the_env_example_is_the_scripts():
    documented = [
        re.fullmatch(r"`([A-Z0-9_]+)`", row[0])[1]
        for row in table_rows(CONFIGURATION, "## Environment variables")
    ]
    assert documented == list(clever_export.SETTINGS)
    example = re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text_of(REPO / "clever_export.env.example"), re.MULTILINE)
    assert sorted(set(example)) == sorted(clever_export.SETTINGS)
    for path in SHOWS_SCRIPT_FLAGS:
        for name in re.findall(r"\b((?:POWERSCHOOL|D118|CLEVER|ORACLE)_[A-Z0-9_]+)\b", text_of(path)):
            assert name in clever_export.SETTINGS or name == "CLEVER_EXPORT", (rel(path), name)


def test_the_changelogs_top_entry_is_the_version_the_script_prints():
    changelog = text_of(REPO / "CHANGELOG.md")
    versions = re.findall(
        r"^## ([0-9]+\.[0-9]+\.[0-9]+) — [0-9]{4}-[0-9]{2}-[0-9]{2}$", changelog, re.MULTILINE
    )
    assert versions and versions[0] == clever_export.__version__
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    assert "docs/switching.md" in text_of(README) and "CHANGELOG.md" in text_of(DOCS_DIR / "switching.md")
