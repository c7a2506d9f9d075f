"""Secrets sealed at rest: systemd credentials made with the real systemd-creds
(and decrypted into a folder, as the service manager does before it starts the
unit), --seal-secrets with its all-or-nothing rewrite, the one precedence rule
--check shows, and secrets that reach no stream, log or file outside the store."""

import os
import shutil
import subprocess

import pytest
from conftest import SECRET_SFTP_PASSWORD, WINDOWS, Student, one_line
from conftest import clever_export as ce

systemd = pytest.mark.skipif(
    WINDOWS or shutil.which("systemd-creds") is None or os.geteuid() != 0,
    reason="systemd credentials: Linux, systemd-creds, and root to encrypt with the host key",
)
windows_vault = pytest.mark.skipif(not WINDOWS, reason="Windows Credential Manager: Windows only")


def encrypt(folder, name: str, value: str):
    subprocess.run(["systemd-creds", "encrypt", f"--name={name}", "-", str(folder / name)],
                   input=value.encode(), check=True, capture_output=True)  # fmt: skip
    return folder / name


def load_credentials(store, into):
    """What systemd does for LoadCredentialEncrypted= before it starts the unit."""
    into.mkdir(mode=0o700, exist_ok=True)
    for encrypted in store.iterdir():
        subprocess.run(["systemd-creds", "decrypt", f"--name={encrypted.name}", str(encrypted), str(into / encrypted.name)],
                       check=True, capture_output=True)  # fmt: skip
    return into


def env_file_of(app, **values: str):
    path = app.root / "clever_export.env"
    path.write_text("".join(f"{name}='{value}'\n" for name, value in values.items()), encoding="utf-8")
    path.chmod(0o600)
    return path


def secrets_nowhere(result, *places) -> None:
    for text in (
        result.stdout,
        result.stderr,
        result.log,
        *(p.read_bytes().decode("utf-8", "replace") for p in places),
    ):
        assert SECRET_SFTP_PASSWORD not in text


@systemd
def test_a_night_reads_its_password_from_a_systemd_credential_and_the_env_file_holds_none(
    uploading_app, sftp_server, tmp_path
):
    app = uploading_app
    sftp = sftp_server.env()
    password = sftp.pop("D118_SFTP_PASSWORD")
    env_file = env_file_of(app, **sftp)
    store = tmp_path / "credstore"
    store.mkdir()
    encrypt(store, "D118_SFTP_PASSWORD", password)
    app.env = {"PYTHONIOENCODING": "utf-8"}  # the settings come from the file and the credential only
    credentials = {"CREDENTIALS_DIRECTORY": str(load_credentials(store, tmp_path / "run-credentials"))}
    night = app.run(*app.base_args, env=credentials)
    assert night.returncode == 0, night.stderr
    assert sftp_server.remote().read_bytes() == app.output.read_bytes()
    check = app.run("--check", *app.base_args, env=credentials)
    assert "  D118_SFTP_PASSWORD: from systemd credential" in check.stdout and check.returncode == 0
    assert "[WARN]" not in check.stdout
    secrets_nowhere(night, env_file, app.output, app.log_path)
    secrets_nowhere(check)
    without = app.run(*app.base_args)  # cron: no credentials folder, no password
    assert without.returncode == 2 and "neither D118_SFTP_PASSWORD" in one_line(without.stderr)


@systemd
def test_check_warns_where_a_secret_sits_in_two_places_and_names_an_empty_credential(
    uploading_app, sftp_server, tmp_path
):
    app = uploading_app
    app.env = {"PYTHONIOENCODING": "utf-8"}
    env_file_of(app, **sftp_server.env())
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "D118_SFTP_PASSWORD").write_text("a-different-one")
    check = app.run("--check", *app.base_args, env={"CREDENTIALS_DIRECTORY": str(folder)})
    assert "[WARN] D118_SFTP_PASSWORD: the systemd credential overrides the env file's value" in check.stdout
    assert (
        "[WARN] D118_SFTP_PASSWORD is in the env file while the systemd credential can hold it"
        in check.stdout
    )
    assert "a-different-one" not in check.stdout + check.stderr
    (folder / "D118_SFTP_PASSWORD").write_text("\n")
    empty = app.run(*app.base_args, env={"CREDENTIALS_DIRECTORY": str(folder)})
    assert (
        empty.returncode == 2
        and "systemd credential" in one_line(empty.stderr)
        and "is empty" in empty.stderr
    )


@pytest.fixture
def sealing(uploading_app, tmp_path, monkeypatch):
    """The deployed script with its settings from the env file alone, sealing into a store of its own."""
    uploading_app.env = {"PYTHONIOENCODING": "utf-8"}
    store = tmp_path / "credstore"
    store.mkdir()
    monkeypatch.setattr(ce, "CREDSTORE", store)
    return uploading_app, store


@systemd
def test_seal_secrets_moves_every_secret_then_a_second_run_changes_nothing(sealing, sftp_server, tmp_path):
    app, store = sealing
    env_file = env_file_of(app, **sftp_server.env(), CLEVER_NOTIFY="json://127.0.0.1:1/Tok3n-never-shown")
    password_line = f"D118_SFTP_PASSWORD='{SECRET_SFTP_PASSWORD}'\n"
    env_file.write_text(env_file.read_text().replace(password_line, f"export\t{password_line}")
                        + "D118_SFTP_KEY_PASSPHRASE=\n")  # fmt: skip
    env_file.chmod(0o400)
    link = app.root / "linked.env"
    link.symlink_to(env_file)
    refused = app.run("--seal-secrets", "--env-file", str(link))
    assert refused.returncode == 2 and "is a link" in one_line(refused.stderr)
    sealed = app.run("--seal-secrets")
    assert sealed.returncode == 0, sealed.stderr
    assert sorted(path.name for path in store.iterdir()) == ["CLEVER_NOTIFY", "D118_SFTP_PASSWORD"]
    assert "LoadCredentialEncrypted=D118_SFTP_PASSWORD:" in sealed.stdout
    text = env_file.read_text()
    assert (
        SECRET_SFTP_PASSWORD not in text and "Tok3n" not in text and "# D118_SFTP_PASSWORD: sealed in" in text
    )
    assert env_file.stat().st_mode & 0o777 == 0o400  # its mode kept
    assert "D118_SFTP_KEY_PASSPHRASE=\n" in text  # an empty value is nothing to seal
    assert SECRET_SFTP_PASSWORD not in sealed.stdout + sealed.stderr and "Tok3n" not in sealed.stdout
    again = app.run("--seal-secrets")
    assert again.returncode == 0 and "holds no secret: nothing to seal" in again.stdout
    assert env_file.read_text() == text
    credentials = {"CREDENTIALS_DIRECTORY": str(load_credentials(store, tmp_path / "run-credentials"))}
    night = app.run(*app.base_args, env=credentials)
    assert night.returncode == 0, night.stderr


@systemd
def test_seal_secrets_is_all_or_nothing_when_the_store_refuses_a_write_half_way(sealing, sftp_server):
    app, store = sealing
    earlier = encrypt(store, "D118_SFTP_PASSWORD", "an-earlier-sealing").read_bytes()  # must survive
    # The third secret is over systemd's 1 MB limit for a credential: systemd-creds refuses it.
    env_file = env_file_of(app, POWERSCHOOL_DB_PASSWORD="Db-pa55-never-shown", **sftp_server.env(),
                           CLEVER_NOTIFY="json://127.0.0.1:1/" + "x" * (1 << 20))  # fmt: skip
    before = env_file.read_bytes()
    result = app.run("--seal-secrets")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "--seal-secrets did not finish (systemd-creds encrypt failed (Plaintext too long" in line, line
    assert "are as they were" in line
    assert env_file.read_bytes() == before  # nothing lost
    assert sorted(path.name for path in store.iterdir()) == ["D118_SFTP_PASSWORD"]  # the first one taken back
    assert (store / "D118_SFTP_PASSWORD").read_bytes() == earlier  # the earlier one put back as it was
    assert "Db-pa55" not in result.stdout + result.stderr and SECRET_SFTP_PASSWORD not in result.stderr


def test_the_env_files_default_name_is_protected_before_it_exists(app, db):
    for flag in ("--output", "--log-file"):
        result = app.run("--sqlite", str(db([Student(1)])), "--no-upload",
                         flag, "clever_export.env")  # fmt: skip
        assert result.returncode == 2 and "the env file's default name" in one_line(result.stderr), (
            result.stderr
        )
        assert not (app.root / "clever_export.env").exists()


@windows_vault
def test_windows_credential_manager_entries_are_read_and_sealed_all_or_nothing(
    uploading_app, sftp_server, monkeypatch
):
    """CredWrite and CredRead under Wine, as in Windows: entries of this test's own prefix,
    so the suite's other runs in this account's vault never see them."""
    app = uploading_app
    app.env = {"PYTHONIOENCODING": "utf-8"}
    prefix = f"clever-export-test-{os.getpid()}"
    monkeypatch.setattr(ce, "CREDENTIAL_TARGET", prefix + ":{}")
    store = ce.SealedStore()
    try:
        sftp = sftp_server.env()
        store.write("D118_SFTP_PASSWORD", sftp.pop("D118_SFTP_PASSWORD"))
        env_file = env_file_of(app, **sftp)
        night = app.run(*app.base_args)
        assert night.returncode == 0, night.stderr
        check = app.run("--check", *app.base_args)
        assert "  D118_SFTP_PASSWORD: from Windows Credential Manager" in check.stdout, check.stdout
        secrets_nowhere(night, env_file, app.output, app.log_path)
        store.put_back("D118_SFTP_PASSWORD", None)

        # --seal-secrets refused half-way: a value over an entry's 2,560 bytes (Windows' CredWrite
        # refuses it; Wine's does not, so the script refuses it first). The first secret is put back.
        store.write("D118_SFTP_PASSWORD", "an-earlier-sealing")
        env_file = env_file_of(app, **sftp_server.env(), CLEVER_NOTIFY="json://127.0.0.1:1/" + "x" * 3000)
        before = env_file.read_bytes()
        refused = app.run("--seal-secrets")
        line = one_line(refused.stderr)
        assert refused.returncode == 2 and "CLEVER_NOTIFY is longer than a Windows Credential Manager" in line
        assert env_file.read_bytes() == before and store.read("D118_SFTP_PASSWORD") == "an-earlier-sealing"
        assert store.read("CLEVER_NOTIFY") is None and SECRET_SFTP_PASSWORD not in refused.stderr
        env_file = env_file_of(app, **sftp_server.env())
        assert app.run("--seal-secrets").returncode == 0
        assert SECRET_SFTP_PASSWORD not in env_file.read_text() and store.read("D118_SFTP_PASSWORD")
        assert app.run(*app.base_args).returncode == 0
        assert "nothing to seal" in app.run("--seal-secrets").stdout
    finally:
        for name in ce.SECRETS:
            store.put_back(name, None)
        assert store.read("D118_SFTP_PASSWORD") is None and store.read("CLEVER_NOTIFY") is None


@pytest.mark.skipif(WINDOWS, reason="systemd credentials and /etc/credstore.encrypted are Linux's")
def test_each_sealed_store_failure_is_one_named_line(uploading_app, sftp_server, tmp_path, monkeypatch):
    app = uploading_app
    app.env = {"PYTHONIOENCODING": "utf-8"}
    no_env_file = app.run("--seal-secrets")
    assert no_env_file.returncode == 2 and "there is none" in one_line(no_env_file.stderr)
    sftp = sftp_server.env()
    sftp.pop("D118_SFTP_PASSWORD")
    env_file_of(app, **sftp)
    folder = tmp_path / "credentials"
    (folder / "D118_SFTP_PASSWORD").mkdir(parents=True)  # not a file: it cannot be read
    unreadable = app.run(*app.base_args, env={"CREDENTIALS_DIRECTORY": str(folder)})
    line = one_line(unreadable.stderr)
    assert unreadable.returncode == 2 and "a systemd credential in" in line and "cannot be read" in line
    store = tmp_path / "credstore"
    store.mkdir()
    (store / "D118_SFTP_PASSWORD").write_bytes(b"encrypted")
    monkeypatch.setattr(ce, "CREDSTORE", store)
    by_hand = app.run(*app.base_args)  # sealed for the unit, run by hand: said so
    line = one_line(by_hand.stderr)
    assert by_hand.returncode == 2 and f"it is sealed in {store}, for the systemd unit only" in line
