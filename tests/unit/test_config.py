import pytest

from annotator.config import Settings, load_settings
from annotator.errors import ConfigError


def test_env_overrides_toml_and_aliases(tmp_path, monkeypatch, settings):
    cfg = tmp_path / "annotator.toml"
    cfg.write_text('text_model = "from-toml"\ndevice = "cuda"\nlabel_studio_url = "http://toml"\n')
    monkeypatch.setenv("ANNOTATOR_CONFIG", str(cfg))
    monkeypatch.setenv("ANNOTATOR_DEVICE", "cpu")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "abc123")
    s = Settings()
    assert s.text_model == "from-toml"
    assert s.device == "cpu"  # environment beats the file
    assert s.label_studio_url == "http://toml"
    assert s.label_studio_api_key.get_secret_value() == "abc123"


def test_default_database_is_sqlite_in_data_dir(settings):
    assert settings.resolved_database_url == f"sqlite:///{settings.data_dir / 'annotator.db'}"


def test_half_configured_basic_auth_is_refused(monkeypatch, settings):
    monkeypatch.setenv("ANNOTATOR_BASIC_AUTH_USER", "me")
    with pytest.raises(ConfigError, match="BASIC_AUTH_PASS"):
        load_settings()


def test_bad_value_names_the_setting(monkeypatch, settings):
    monkeypatch.setenv("ANNOTATOR_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="ANNOTATOR_DEVICE.*auto"):
        load_settings()


def test_missing_config_file_is_named(monkeypatch, settings):
    monkeypatch.setenv("ANNOTATOR_CONFIG", "/nonexistent/annotator.toml")
    with pytest.raises(ConfigError, match="/nonexistent/annotator.toml"):
        load_settings()


def test_other_programs_variables_do_not_configure_us(monkeypatch, settings, tmp_path):
    """DATABASE_URL / DATA_DIR / DEVICE / BATCH_SIZE belong to whatever else runs on the host."""
    for name, value in {"DATABASE_URL": "postgresql://elsewhere/otherapp", "DATA_DIR": str(tmp_path / "theirs"),
                        "DEVICE": "cuda", "BATCH_SIZE": "7", "database_url": "sqlite:///lower.db"}.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.database_url is None and s.data_dir == settings.data_dir
    assert s.device == "auto" and s.batch_size == 32
    monkeypatch.setenv("ANNOTATOR_BATCH_SIZE", "8")  # our own names still work
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls:8080")  # and Label Studio's
    s = Settings()
    assert s.batch_size == 8 and s.label_studio_url == "http://ls:8080"
    cfg = tmp_path / "annotator.toml"  # bare names are for the TOML file
    cfg.write_text('batch_size = 16\ndevice = "cpu"\n')
    monkeypatch.setenv("ANNOTATOR_CONFIG", str(cfg))
    monkeypatch.delenv("ANNOTATOR_BATCH_SIZE")
    s = Settings()
    assert s.batch_size == 16 and s.device == "cpu"


def test_log_level_from_our_variable_or_the_ml_backend_convention(monkeypatch, settings):
    assert Settings().log_level == "INFO"
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"
    monkeypatch.setenv("ANNOTATOR_LOG_LEVEL", "warning")
    assert Settings().log_level == "WARNING"
    monkeypatch.setenv("ANNOTATOR_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="ANNOTATOR_LOG_LEVEL"):
        load_settings()


def test_project_names_cannot_point_outside_the_data_dir(settings, store):
    from annotator.errors import AnnotatorError
    from annotator.store import repo

    for name in ("../evil", "/abs/path", ".hidden", "a\\b", ".."):
        with pytest.raises(AnnotatorError, match="cannot name a folder"):
            settings.project_dir(name)
        with pytest.raises(AnnotatorError, match="cannot name a folder"), store.session() as s:
            repo.get_or_create_project(s, name=name)
    assert settings.project_dir("ls-3") == settings.data_dir / "projects" / "ls-3"
