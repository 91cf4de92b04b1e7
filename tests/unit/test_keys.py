"""The API key store on real files: hashing, create, revoke, rotate, import, map rendering, locking."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from feedbackbot import keys
from feedbackbot.cli import main as cli_main
from feedbackbot.errors import KeyNotFound, KeyStoreError
from feedbackbot.keys import KeyStore, hash_key, key_id_for


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "api-keys.json", tmp_path / "gateway")


def map_lines(store: KeyStore) -> list[str]:
    return [line for line in store.map_path.read_text().splitlines() if not line.startswith("#")]


def test_hash_matches_sha256_hex() -> None:
    # The same digest as gateway/api-key-hash.js computes with njs for the header "test".
    assert hash_key("test") == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert key_id_for(hash_key("test")) == "k-9f86d081884c"


def test_create_stores_hash_not_key(store: KeyStore) -> None:
    record, key = store.create("submit", "web form")

    text = store.path.read_text()
    assert key not in text
    assert record.sha256 == hash_key(key)
    assert record.id == key_id_for(record.sha256)
    assert record.label == "web form"
    assert record.revoked_at is None
    assert keys.KEY_PATTERN.match(key)
    assert json.loads(text)["keys"][0]["sha256"] == record.sha256


def test_store_and_lock_are_private(store: KeyStore) -> None:
    store.create("admin")

    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.lock_path.stat().st_mode & 0o777 == 0o600


def test_create_renders_map(store: KeyStore) -> None:
    record, key = store.create("analyst")

    assert map_lines(store) == [f'"{record.sha256}" "analyst {record.id}";']
    assert key not in store.map_path.read_text()


def test_create_rejects_unknown_role(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="invalid role 'reader'"):
        store.create("reader")

    assert not store.path.exists()


@pytest.mark.parametrize("label", ["line\nbreak", "x" * (keys.MAX_LABEL_CHARS + 1)])
def test_create_rejects_bad_label(store: KeyStore, label: str) -> None:
    with pytest.raises(KeyStoreError, match="invalid label"):
        store.create("submit", label)


def test_revoke_removes_key_from_map(store: KeyStore) -> None:
    kept, _ = store.create("submit")
    revoked, _ = store.create("submit")

    record, changed = store.revoke(revoked.id)

    assert changed
    assert record.revoked_at is not None
    assert store.get(revoked.id).revoked
    assert map_lines(store) == [f'"{kept.sha256}" "submit {kept.id}";']


def test_revoke_twice_changes_nothing(store: KeyStore) -> None:
    record, _ = store.create("submit")
    first, _ = store.revoke(record.id)

    second, changed = store.revoke(record.id)

    assert not changed
    assert second.revoked_at == first.revoked_at


def test_revoke_unknown_id(store: KeyStore) -> None:
    store.create("submit")

    with pytest.raises(KeyNotFound, match="unknown key id 'k-000000000000'"):
        store.revoke("k-000000000000")


def test_rotate_keeps_role_and_label(store: KeyStore) -> None:
    old, old_key = store.create("analyst", "dashboard")

    revoked, new, new_key = store.rotate(old.id)

    assert revoked.id == old.id
    assert revoked.revoked
    assert new.role == "analyst"
    assert new.label == "dashboard"
    assert new_key != old_key
    assert new.sha256 == hash_key(new_key)
    assert map_lines(store) == [f'"{new.sha256}" "analyst {new.id}";']


def test_rotate_revoked_key_rejected(store: KeyStore) -> None:
    record, _ = store.create("submit")
    store.revoke(record.id)

    with pytest.raises(KeyStoreError, match="cannot be rotated"):
        store.rotate(record.id)


def test_import_plain_hashes_and_deletes(store: KeyStore, tmp_path: Path) -> None:
    plain = tmp_path / "api-keys.txt"
    submit_key, admin_key = keys.new_api_key(), keys.new_api_key()
    plain.write_text(f"# comment\nsubmit {submit_key}\n\nadmin {admin_key}\nsubmit {submit_key}\n")

    added = store.import_plain(plain)

    assert not plain.exists()
    assert [record.role for record in added] == ["submit", "admin"]
    assert [record.sha256 for record in added] == [hash_key(submit_key), hash_key(admin_key)]
    assert added[0].label == "imported from api-keys.txt line 2"
    assert submit_key not in store.path.read_text()
    assert admin_key not in store.map_path.read_text()


def test_import_plain_skips_known_keys(store: KeyStore, tmp_path: Path) -> None:
    record, key = store.create("submit")
    plain = tmp_path / "api-keys.txt"
    plain.write_text(f"submit {key}\n")

    added = store.import_plain(plain)

    assert added == []
    assert [existing.id for existing in store.load()] == [record.id]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("owner abcdefghijklmnop", "line 1: invalid role 'owner'"),
        ("submit short", "line 1: invalid key"),
        ("submit abcdefghijklmnop extra", "line 1: expected 'ROLE KEY'"),
    ],
)
def test_import_plain_rejects_bad_line(store: KeyStore, tmp_path: Path, line: str, message: str) -> None:
    plain = tmp_path / "api-keys.txt"
    plain.write_text(line + "\n")

    with pytest.raises(KeyStoreError, match=message):
        store.import_plain(plain)

    assert plain.exists()
    assert not store.path.exists()


def test_load_rejects_invalid_json(store: KeyStore) -> None:
    store.path.write_text("submit fbk_abcdefghijklmnop\n")

    with pytest.raises(KeyStoreError, match="not a valid key store.*feedbackbot keys import"):
        store.load()


def test_load_rejects_tampered_id(store: KeyStore) -> None:
    store.create("submit")
    document = json.loads(store.path.read_text())
    document["keys"][0]["id"] = "k-000000000000"
    store.path.write_text(json.dumps(document))

    with pytest.raises(KeyStoreError, match="key #1 has the id 'k-000000000000'"):
        store.load()


def test_load_rejects_unknown_version(store: KeyStore) -> None:
    store.path.write_text(json.dumps({"version": 99, "keys": []}))

    with pytest.raises(KeyStoreError, match="version 99"):
        store.load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_load_unreadable_store(store: KeyStore) -> None:
    store.create("submit")
    store.path.chmod(0o000)

    with pytest.raises(KeyStoreError, match="cannot read the key store"):
        store.load()


def test_load_store_path_is_folder(store: KeyStore) -> None:
    store.path.mkdir()

    with pytest.raises(KeyStoreError, match="cannot read the key store"):
        store.load()


def test_failed_change_keeps_store(store: KeyStore) -> None:
    record, _ = store.create("submit")
    before = store.path.read_text()

    with pytest.raises(KeyNotFound):
        store.rotate("k-ffffffffffff")

    assert store.path.read_text() == before
    assert [existing.id for existing in store.load()] == [record.id]


def _create_keys(path: str, count: int, queue: multiprocessing.Queue) -> None:
    store = KeyStore(Path(path), Path(path).parent / "gateway")
    queue.put([store.create("submit", f"process {os.getpid()}")[0].id for _ in range(count)])


def test_concurrent_creates_lose_nothing(store: KeyStore) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_create_keys, args=(str(store.path), 10, queue)) for _ in range(4)]
    for process in processes:
        process.start()
    created = [key_id for _ in processes for key_id in queue.get(timeout=60)]
    for process in processes:
        process.join(timeout=60)

    stored = [record.id for record in store.load()]
    assert sorted(stored) == sorted(created)
    assert len(stored) == 40
    assert len(map_lines(store)) == 40


def test_render_command_without_store_names_import(tmp_path: Path) -> None:
    (tmp_path / "api-keys.txt").write_text(f"submit {keys.new_api_key()}\n")

    result = subprocess.run(
        [sys.executable, "-m", "feedbackbot.keys", "render", "--keys-file", str(tmp_path / "api-keys.json"),
         "--gateway-dir", str(tmp_path / "gateway")],
        capture_output=True,
        text=True,
    )  # fmt: skip

    assert result.returncode == 1
    assert "feedbackbot keys import" in result.stderr
    assert not (tmp_path / "gateway" / keys.MAP_FILE_NAME).exists()


def test_reload_without_gateway_returns_none(tmp_path: Path) -> None:
    assert keys.reload_gateway(tmp_path / "gateway") is None


def test_reload_signals_master_and_waits_for_worker(tmp_path: Path) -> None:
    # A stand-in for the Nginx master: on SIGHUP it starts a child, as Nginx starts new workers.
    script = (
        "import signal, subprocess, time\n"
        "children = []\n"
        "signal.signal(signal.SIGHUP, lambda *_: children.append(subprocess.Popen(['sleep', '30'])))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    master = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert master.stdout.readline() == "ready\n"
        gateway_dir = tmp_path / "gateway"
        gateway_dir.mkdir()
        (gateway_dir / "nginx.pid").write_text(f"{master.pid}\n")

        assert keys.reload_gateway(gateway_dir, timeout_s=10.0) == master.pid
        assert keys._children(master.pid)
    finally:
        for child in keys._children(master.pid):
            os.kill(child, signal.SIGTERM)
        master.kill()
        master.wait()


def test_reload_times_out_without_new_worker(tmp_path: Path) -> None:
    # A master that ignores SIGHUP, as Nginx does in effect when it rejects the new configuration.
    master = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert master.stdout.readline() == "ready\n"
        gateway_dir = tmp_path / "gateway"
        gateway_dir.mkdir()
        (gateway_dir / "nginx.pid").write_text(f"{master.pid}\n")

        with pytest.raises(KeyStoreError, match="started no new workers"):
            keys.reload_gateway(gateway_dir, timeout_s=0.5)
    finally:
        master.kill()
        master.wait()


def test_cli_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = str(tmp_path / "api-keys.json")

    assert cli_main(["keys", "create", "--role", "analyst", "--label", "bi team", "--keys-file", keys_file]) == 0
    created = capsys.readouterr()
    key = created.out.strip()
    assert key.startswith("fbk_")
    assert "No gateway runs" in created.err

    assert cli_main(["keys", "list", "--format", "json", "--keys-file", keys_file]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["role"], row["label"], row["revoked_at"]) for row in listed] == [("analyst", "bi team", None)]
    assert key not in json.dumps(listed)

    assert cli_main(["keys", "revoke", listed[0]["id"], "--keys-file", keys_file]) == 0
    assert "Revoked key" in capsys.readouterr().err

    assert cli_main(["keys", "list", "--keys-file", keys_file]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["ID", "ROLE", "CREATED", "REVOKED", "LABEL"]
    assert listed[0]["id"] in table
    assert key not in table


def test_cli_unknown_id_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = str(tmp_path / "api-keys.json")

    assert cli_main(["keys", "rotate", "k-123456789abc", "--keys-file", keys_file]) == 2
    assert "unknown key id 'k-123456789abc'" in capsys.readouterr().err


def test_cli_bad_role_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "create", "--role", "root", "--keys-file", str(tmp_path / "k.json")]) == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err


def test_cli_unreadable_store_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = tmp_path / "api-keys.json"
    keys_file.write_text("{not json")

    assert cli_main(["keys", "list", "--keys-file", str(keys_file)]) == 1
    assert "is not a valid key store" in capsys.readouterr().err
