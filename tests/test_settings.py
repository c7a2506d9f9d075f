"""Settings: where each one came from, one precedence rule, each checked once.

A process variable with a value wins over the env file (and --check warns);
an empty or blank one never hides the file's value; --check names each
setting's source, never its value."""

from conftest import SECRET_SFTP_PASSWORD, one_line


def move_sftp_settings_to_file(app, **extra) -> dict[str, str]:
    path = app.root / "clever_export.env"
    values = {**app.env, **extra}
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items() if key.startswith("D118_")))
    path.chmod(0o600)
    app.env = {key: value for key, value in app.env.items() if not key.startswith("D118_")}
    return values


def test_an_empty_process_variable_never_hides_the_files_value(uploading_app, sftp_server):
    move_sftp_settings_to_file(uploading_app)
    for empty in ("", "   "):
        result = uploading_app.run(*uploading_app.base_args, env={"D118_SFTP_PASSWORD": empty})
        assert result.returncode == 0, result.stderr


def test_a_process_variable_with_a_value_wins_and_check_warns(uploading_app, sftp_server):
    move_sftp_settings_to_file(uploading_app)
    stale = {"D118_SFTP_PASSWORD": "left-from-the-old-script"}
    result = uploading_app.run(*uploading_app.base_args, env=stale)
    assert result.returncode == 4 and "SFTP login as clever" in one_line(result.stderr)
    checked = uploading_app.run("--check", *uploading_app.base_args, env=stale)
    assert "  D118_SFTP_PASSWORD: from process environment" in checked.stdout
    assert "  D118_SFTP_ADDRESS: from env file " in checked.stdout
    assert (
        "[WARN] D118_SFTP_PASSWORD: the process environment overrides the env file's value" in checked.stdout
    )
    assert SECRET_SFTP_PASSWORD not in checked.stdout and "left-from-the-old-script" not in checked.stdout


def test_check_names_no_override_when_there_is_none(uploading_app, sftp_server):
    move_sftp_settings_to_file(uploading_app)
    checked = uploading_app.run("--check", *uploading_app.base_args)
    assert checked.returncode == 0, checked.stdout
    assert "overrides the env file" not in checked.stdout


def test_a_bom_in_the_middle_of_the_env_file_is_a_bad_line_named(uploading_app, sftp_server):
    move_sftp_settings_to_file(uploading_app)
    path = uploading_app.root / "clever_export.env"
    lines = path.read_bytes().count(b"\n")
    path.write_bytes(path.read_bytes() + "\ufeffD118_SFTP_PORT=22\n".encode())  # two files pasted together
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"env file {path}: line {lines + 1} holds a byte-order mark" in line, line


def test_repeated_notify_lines_add_targets(uploading_app, sftp_server):
    move_sftp_settings_to_file(uploading_app)
    path = uploading_app.root / "clever_export.env"
    with path.open("a") as env_file:
        env_file.write(
            "CLEVER_NOTIFY=json://127.0.0.1:9/a\nCLEVER_NOTIFY=json://127.0.0.2:9/b  json://127.0.0.3:9/c\n"
        )
    checked = uploading_app.run("--check", *uploading_app.base_args)
    assert "notifications: json://127.0.0.1:9, json://127.0.0.2:9, json://127.0.0.3:9" in checked.stdout


def test_flags_are_never_abbreviated(app):
    result = app.run("--dry")
    assert result.returncode == 2 and "unrecognized arguments: --dry" in one_line(result.stderr)
