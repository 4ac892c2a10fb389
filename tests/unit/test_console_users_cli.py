"""``casebridge users``: accounts made and changed on a node's store from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli import main
from broker.node.store import Store


def settings_file(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("t" * 32, encoding="utf-8")
    doc = {
        "agency": "de.lka-berlin",
        "nats": {"url": "nats://127.0.0.1:4222"},
        "keys": {
            "signing_key": "k",
            "signing_cert": "c",
            "agreement_key": "k",
            "agreement_cert": "c",
        },
        "directory": {"file": "d", "root_cert": "r"},
        "store": "node.sqlite",
        "api": {"token_file": "token"},
        "console": {},
    }
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_add_list_disable_reset_role_are_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command changes the account and leaves an administration record under --by."""
    settings = settings_file(tmp_path)
    secret = tmp_path / "pw"
    secret.write_text("a long enough password\n", encoding="utf-8")
    common = ["--node-settings", str(settings), "--by", "admin"]
    assert (
        main(
            [
                "users",
                "add",
                "olga",
                "--name",
                "Olga",
                "--role",
                "officer",
                "--password-file",
                str(secret),
                "--totp",
                *common,
            ]
        )
        == 0
    )
    assert "otpauth://totp/" in capsys.readouterr().out
    assert main(["users", "disable", "olga", *common]) == 0
    assert main(["users", "role", "olga", "supervisor", *common]) == 0
    assert (
        main(["users", "reset", "olga", "--no-totp", "--password-file", str(secret), *common]) == 0
    )
    capsys.readouterr()
    assert main(["users", "list", "--json", *common]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [listed[0]]
    assert listed[0]["role"] == "supervisor"
    assert listed[0]["disabled"]
    assert not listed[0]["totp"]
    with Store(tmp_path / "node.sqlite") as store:
        records = store.query(
            lambda db: db.execute(
                "SELECT actor, detail FROM audit WHERE operation = 'administration'"
            ).fetchall()
        )
    assert [r[0] for r in records] == ["admin"] * 4
    assert "password" not in " ".join(r[1] for r in records).replace("reset", "")


def test_weak_password_and_duplicate_are_refused(tmp_path: Path) -> None:
    """A short password or an existing name is refused with exit status 2."""
    settings = settings_file(tmp_path)
    short = tmp_path / "short"
    short.write_text("short", encoding="utf-8")
    common = ["--node-settings", str(settings)]
    assert (
        main(
            [
                "users",
                "add",
                "olga",
                "--name",
                "O",
                "--role",
                "officer",
                "--password-file",
                str(short),
                *common,
            ]
        )
        == 2
    )
    short.write_text("a long enough password", encoding="utf-8")
    assert (
        main(
            [
                "users",
                "add",
                "olga",
                "--name",
                "O",
                "--role",
                "officer",
                "--password-file",
                str(short),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "users",
                "add",
                "olga",
                "--name",
                "O",
                "--role",
                "officer",
                "--password-file",
                str(short),
                *common,
            ]
        )
        == 2
    )
