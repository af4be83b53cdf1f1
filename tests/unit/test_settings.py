"""Settings refuse what cannot work (spec §1): many workers need a shared broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from app.settings import Settings, SettingsError, from_env

SETTING_ENVS = (
    "PAYCODE_DATABASE_URL",
    "PAYCODE_BROKER_URL",
    "PAYCODE_PUBLIC_URL",
    "PAYCODE_CURRENCY",
    "PAYCODE_ADMIN_TOKEN",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI writes its flags back to the environment; monkeypatch restores it afterwards.
    for name in SETTING_ENVS:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_many_workers_with_the_memory_broker_are_refused() -> None:
    """--workers > 1 with memory:// is refused with a message that names the fix."""
    with pytest.raises(SettingsError, match=r"redis://"):
        Settings(workers=2).validate()
    with pytest.raises(SettingsError):
        from_env({"PAYCODE_BROKER_URL": "memory://"}).with_overrides(workers=4).validate()


def test_many_workers_with_redis_are_accepted() -> None:
    """redis:// and rediss:// brokers allow any number of workers."""
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380/1"):
        settings = from_env({"PAYCODE_BROKER_URL": url}).with_overrides(workers=8).validate()
        assert settings.workers == 8
        assert settings.broker_scheme in ("redis", "rediss")


def test_unknown_broker_and_zero_workers_are_refused() -> None:
    """Only memory:// and redis:// brokers exist; at least one worker must run."""
    with pytest.raises(SettingsError):
        Settings(broker_url="kafka://broker:9092").validate()
    with pytest.raises(SettingsError):
        Settings(workers=0, broker_url="redis://127.0.0.1:6379/0").validate()


def test_serve_refuses_workers_with_memory_broker_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`paycode serve --workers 2` on memory:// exits with status 2 and a clear message before
    it migrates a database or binds a port."""
    db_file = f"{tmp_path}/never-created.db"
    code = main(
        [
            "serve",
            "--workers",
            "2",
            "--broker-url",
            "memory://",
            "--database-url",
            f"sqlite:///{db_file}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--workers > 1 needs a shared broker" in err
    assert "PAYCODE_BROKER_URL=redis://" in err
    assert not Path(db_file).exists()


def test_the_purge_interval_comes_from_the_environment_and_zero_turns_it_off() -> None:
    """PAYCODE_PURGE_INTERVAL is seconds between purge passes (default 60; 0 = off); text
    that is no number, or a negative or day-long-plus interval, is refused at start."""
    assert from_env({}).purge_interval == 60.0
    assert from_env({"PAYCODE_PURGE_INTERVAL": "0"}).validate().purge_interval == 0.0
    assert from_env({"PAYCODE_PURGE_INTERVAL": "2.5"}).validate().purge_interval == 2.5
    for bad in ("soon", "-1", "86401"):
        with pytest.raises(SettingsError, match="PAYCODE_PURGE_INTERVAL"):
            from_env({"PAYCODE_PURGE_INTERVAL": bad}).validate()
