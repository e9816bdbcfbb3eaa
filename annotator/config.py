"""One Settings object: environment variables (``ANNOTATOR_*``) and an optional TOML file.

This is the only module that reads the environment. Everything else receives a ``Settings``.
Precedence, highest first: explicit keyword arguments, environment, the TOML file named by
``ANNOTATOR_CONFIG``, defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from annotator.errors import AnnotatorError, ConfigError

DEFAULT_MODEL = "default"  # the offline model shipped in a PyPI package, per modality


def debug_enabled() -> bool:
    """``ANNOTATOR_DEBUG=1`` shows tracebacks instead of one-line errors."""
    return os.environ.get("ANNOTATOR_DEBUG", "") not in ("", "0", "false")


def check_project_name(name: str) -> str:
    """A project name also names its artifact folder: refuse what would point outside the data dir."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or name.startswith(".") \
            or any(c in name for c in "/\\\0") or len(name) > 200:
        raise AnnotatorError(f"project name {name!r} cannot name a folder: use letters, digits, '-', '_' or '.', "
                          "not '/', '\\' or a leading '.', at most 200 characters")
    return name


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "annotator"


def _env(name: str, *also: str) -> AliasChoices:
    """Accept ``ANNOTATOR_<NAME>``, conventional aliases, and the bare field name (for TOML)."""
    return AliasChoices(f"ANNOTATOR_{name.upper()}", *also, name)


# Variables of other programs that configure us on purpose: Label Studio's own names for itself, and
# the log level and basic-auth pair every Label Studio ML backend container reads.
FOREIGN_VARIABLES = ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LOCAL_FILES_DOCUMENT_ROOT", "LOG_LEVEL",
                     "BASIC_AUTH_USER", "BASIC_AUTH_PASS")


class _OwnEnvironment(EnvSettingsSource):
    """The environment, limited to ``ANNOTATOR_*`` and `FOREIGN_VARIABLES`. The bare field names
    are for the TOML file only: a ``DATABASE_URL`` or ``DATA_DIR`` set for another program on the
    same host (usual on PaaS and in compose files) must not point annotator at that program's data."""

    def _load_env_vars(self):
        allowed = {name.lower() for name in FOREIGN_VARIABLES}
        return {k: v for k, v in super()._load_env_vars().items()
                if k.lower().startswith("annotator_") or k.lower() in allowed}


class Settings(BaseSettings):
    """Runtime configuration of annotator.

    Parameters
    ----------
    data_dir : Path
        Where artifacts live: models, indexes, the embedding cache, and the default SQLite file.
    database_url : str, optional
        SQLAlchemy URL. Default: ``sqlite:///<data_dir>/annotator.db`` (WAL mode).
    artifacts_url : str, optional
        Where every worker on every host finds model versions and indexes: any fsspec URL
        (``s3://bucket/annotator``; ``file:///mnt/shared/annotator``). Written there as well as in
        ``data_dir``, which then acts as a local copy. Unset: ``data_dir`` alone (one host).
    artifacts_poll_s : float, default=5
        How often a worker checks the shared artifacts for a newer index generation.
    device : {"auto", "cpu", "cuda"}
        Torch device; ``auto`` picks CUDA when available.
    runtime : {"auto", "torch", "onnx"}, default="auto"
        What runs the text and image networks: ``auto`` is ONNX Runtime on a CPU (exported once
        into ``~/.cache/annotator/onnx``; the torch vectors; measured 4× faster for the image
        network, 1.1× for text) and torch on a GPU. Whisper always runs on CTranslate2.
    int8 : bool, default=False
        Run the int8-quantised ONNX export (faster; other vectors: they get their own cache
        entries, and models trained on fp32 vectors ask for a retrain).
    text_model, image_model, audio_model : str
        Hugging Face id or local path, or ``"default"`` for the offline model shipped in a package
        (for audio also ``mfcc``, the MFCC-statistics baseline, and ``mfcc-gru``, the encoder
        ``annotator audio-encoder`` trained).
    batch_size : int, default=32
        Items per forward pass of an encoder. On a CPU, image networks run at most 8 at a time
        (EfficientNet on torch: 4): a convolutional network's large batches outgrow the cache.
    label_studio_url, label_studio_api_key : str, optional
        The operator's Label Studio and its legacy token or personal access token (also read as
        ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``). Its address is exempt from the media
        policy; a personal access token is exchanged for a short-lived access token before use.
    local_files_document_root : Path, optional
        Serve Label Studio's ``/data/local-files/?d=`` paths from this folder on disk (also read as
        ``LOCAL_FILES_DOCUMENT_ROOT``), only inside it.
    label_studio_venv : Path, optional
        Where ``annotator demo`` installs Label Studio. Default: ``<data_dir>/label-studio/venv``.
    basic_auth_user, basic_auth_pass : str, optional
        Basic authentication on every route but ``/webhook`` (also read as ``BASIC_AUTH_USER`` /
        ``BASIC_AUTH_PASS``, as ML-backend containers set them); see the security page.
    explanation_textarea : str, optional
        The name of a ``<TextArea>`` in the label config that each pre-label fills with a short
        explanation: per question, the answer, its score and the modality weights it rests on.
    parts : bool, default=False
        Also cache part-level features (text tokens, image regions; same forward pass as the
        pooled vectors), so the ``coattention`` head takes part in `retrain`'s model choice. Off
        by default for their size: about 49 KB per text and 40 KB per image (float16), against
        1.5 KB and 5 KB for the pooled vectors. Turning it on: the next `annotator embed` adds them.
    align_adversarial : float, default=0.0
        Weight of adversarial alignment (a modality discriminator against the projections, through
        gradient reversal) added to InfoNCE when the cross-modal aligner is fitted; 0 is InfoNCE
        alone (``bench_search_index`` compares them).
    vector_store : str, default="faiss"
        Where project indexes live: ``faiss`` (in-process, files under ``data_dir``), or Milvus for
        projects that outgrow one machine's memory: ``milvus://host:19530`` (``milvus+https://…``
        for TLS) or a Milvus Lite file (``milvus-lite:///path/vectors.db``; one process at a time).
    milvus_token : str, optional
        Milvus credentials (``user:password`` or an API key).
    milvus_index : str, default="auto"
        Milvus index type: ``auto`` chooses by size (FLAT while exact search is cheap, then HNSW on
        a server, IVF_FLAT on Milvus Lite); any Milvus type (``IVF_SQ8``, ``GPU_CAGRA``…) forces it.
    transcribe : {"auto", "off"}, default="auto"
        ``auto``: audio items of a Label Studio project are transcribed with Whisper where its
        label config has a ``<TextArea>`` on the audio (pre-filled with the transcript) or no text
        object (the transcript becomes the item's text, for fusion, zero-shot and search).
    transcribe_model : str, default="default"
        A CTranslate2 Whisper model folder or faster-whisper name; ``"default"`` is the packaged
        Whisper tiny.en (shared with the default audio encoder).
    model : str, default="auto"
        The model retraining fits: ``auto`` chooses it per project by cross-validation; a name
        (``logreg``, ``attention``, ``logreg [text]``…) forces it (`retrain`'s ``head``).
    next_batch_strategy : str, optional
        When set (e.g. ``entropy``), every automatic retrain also chooses the next
        ``next_batch_size`` tasks with this strategy and makes Label Studio serve them first
        (checked by the trainer at startup). Unset: Label Studio's uncertainty sampling follows the new model's confidence.
    next_batch_size : int, default=50
        How many tasks ``next_batch_strategy`` puts first.
    log_level : {"DEBUG", "INFO", "WARNING", "ERROR"}, default="INFO"
        The backend's log level (``ANNOTATOR_LOG_LEVEL``, or ``LOG_LEVEL`` as ML-backend containers set it).
    predict_budget_s : float, default=50
        How long /predict may encode before it answers (Label Studio gives it 100 s): tasks not
        encoded by then are answered as pending (model version ``<version>-pending``, no result),
        finished in the background and pushed to Label Studio in bulk.
    max_media_bytes : int, default=52428800
        Media larger than this (50 MiB) are not downloaded: that item fails, the others go on.
    media_timeout_s : float, default=30
        Timeout of one media download attempt.
    webhook_secret : str, optional
        Shared secret Label Studio sends in the ``X-Annotator-Secret`` header of its webhook
        (`annotator ls connect` puts it there). An event carrying it is trusted as Label Studio's;
        any other event is only a hint to pull the project from Label Studio's API. Unset,
        ``ls connect`` makes one per project.
    media_allow_hosts : str
        Comma-separated host names, addresses or networks (``10.0.0.0/8``) media may be fetched
        from although private or loopback; ``*`` allows every address. Label Studio's own origin
        is always allowed.
    media_roots : str
        Folders (separated by ``os.pathsep``) that local paths in Label Studio tasks, /predict and
        /search may be read from; empty: none. The operator's own imports are not restricted.
    media_proxy : str
        The HTTP proxy media downloads go through (``http://proxy:3128``). Empty: the environment's
        ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` with ``NO_PROXY``, as other programs read
        them; ``none``: no proxy whatever the environment says. Through a proxy, each target's
        host is resolved here and its addresses checked before the request leaves.
    max_audio_s, max_text_chars : float, int
        Audio beyond ``max_audio_s`` seconds (600) is not decoded; text beyond ``max_text_chars``
        characters (100,000) is not encoded: the encoders see far less, and memory stays bounded.
    keep_versions : int, default=10
        Model versions kept on disk per project besides the active one; older folders are pruned
        after each training (their database rows stay, marked retired).
    max_predict_tasks : int, default=20000
        Tasks one /predict request may carry.
    encode_concurrency : int, default=1
        Encoding jobs (of up to 128 tasks) one process runs at once; the encoder already uses
        every core, so more only adds memory.
    media_parallel, media_retries, media_retry_wait_s : int, int, float
        Media downloads in flight at once (8), retries of a download that timed out or got 429/5xx
        (3), and the first backoff wait in seconds (0.5, doubling, with jitter).
    self_training : {"auto", "on", "off"}, default="auto"
        Whether retraining also learns from the project's unlabelled items (confident
        pseudo-labels; see `FusionClassifier`'s ``pseudo_label_ratio``). ``auto``: only where
        cross-validation on the project's labels says it helps. ``true``/``false`` are read as
        ``on``/``off``.
    background_search : bool, default=True
        After a correction the backend refits the chosen model at once; the full model search runs
        in a background thread, at a lower priority, when it could change the choice (more labels
        by half, a new class, a lower score). False: the backend only refits, and the model is
        chosen by ``annotator retrain``.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)
    _label_studio_trusted: bool = PrivateAttr(default=True)  # see with_label_studio

    data_dir: Path = Field(default_factory=_default_data_dir, validation_alias=_env("data_dir"))
    database_url: str | None = Field(default=None, validation_alias=_env("database_url"))
    artifacts_url: str | None = Field(default=None, validation_alias=_env("artifacts_url"))
    artifacts_poll_s: float = Field(default=5.0, ge=0, validation_alias=_env("artifacts_poll_s"))
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", validation_alias=_env("device"))
    text_model: str = Field(default=DEFAULT_MODEL, validation_alias=_env("text_model"))
    image_model: str = Field(default=DEFAULT_MODEL, validation_alias=_env("image_model"))
    audio_model: str = Field(default=DEFAULT_MODEL, validation_alias=_env("audio_model"))
    batch_size: int = Field(default=32, ge=1, validation_alias=_env("batch_size"))
    runtime: Literal["auto", "torch", "onnx"] = Field(default="auto", validation_alias=_env("runtime"))
    int8: bool = Field(default=False, validation_alias=_env("int8"))
    parts: bool = Field(default=False, validation_alias=_env("parts"))
    explanation_textarea: str | None = Field(default=None, validation_alias=_env("explanation_textarea"))
    align_adversarial: float = Field(default=0.0, ge=0, validation_alias=_env("align_adversarial"))
    vector_store: str = Field(default="faiss", validation_alias=_env("vector_store"))
    milvus_token: SecretStr | None = Field(default=None, validation_alias=_env("milvus_token"))
    milvus_index: str = Field(default="auto", validation_alias=_env("milvus_index"))
    transcribe: Literal["auto", "off"] = Field(default="auto", validation_alias=_env("transcribe"))
    transcribe_model: str = Field(default=DEFAULT_MODEL, validation_alias=_env("transcribe_model"))

    label_studio_url: str | None = Field(
        default=None, validation_alias=_env("label_studio_url", "LABEL_STUDIO_URL")
    )
    label_studio_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("label_studio_api_key", "LABEL_STUDIO_API_KEY")
    )
    local_files_document_root: Path | None = Field(
        default=None,
        validation_alias=_env("local_files_document_root", "LOCAL_FILES_DOCUMENT_ROOT"),
    )
    label_studio_venv: Path | None = Field(default=None, validation_alias=_env("label_studio_venv"))
    basic_auth_user: str | None = Field(default=None, validation_alias=_env("basic_auth_user", "BASIC_AUTH_USER"))
    basic_auth_pass: SecretStr | None = Field(default=None, validation_alias=_env("basic_auth_pass", "BASIC_AUTH_PASS"))

    model: str = Field(default="auto", validation_alias=_env("model"))
    next_batch_strategy: str | None = Field(default=None, validation_alias=_env("next_batch_strategy"))
    next_batch_size: int = Field(default=50, ge=1, validation_alias=_env("next_batch_size"))
    self_training: Literal["auto", "on", "off"] = Field(default="auto", validation_alias=_env("self_training"))
    background_search: bool = Field(default=True, validation_alias=_env("background_search"))

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias=_env("log_level", "LOG_LEVEL"))

    max_media_bytes: int = Field(default=50 * 1024 * 1024, ge=1, validation_alias=_env("max_media_bytes"))
    media_timeout_s: float = Field(default=30.0, gt=0, validation_alias=_env("media_timeout_s"))
    predict_budget_s: float = Field(default=50.0, gt=0, validation_alias=_env("predict_budget_s"))
    encode_concurrency: int = Field(default=1, ge=1, le=64, validation_alias=_env("encode_concurrency"))
    media_parallel: int = Field(default=8, ge=1, le=256, validation_alias=_env("media_parallel"))
    media_retries: int = Field(default=3, ge=0, le=20, validation_alias=_env("media_retries"))
    media_retry_wait_s: float = Field(default=0.5, ge=0, validation_alias=_env("media_retry_wait_s"))
    webhook_secret: SecretStr | None = Field(default=None, validation_alias=_env("webhook_secret"))
    media_allow_hosts: str = Field(default="", validation_alias=_env("media_allow_hosts"))
    media_roots: str = Field(default="", validation_alias=_env("media_roots"))
    media_proxy: str = Field(default="", validation_alias=_env("media_proxy"))
    max_audio_s: float = Field(default=600.0, gt=0, validation_alias=_env("max_audio_s"))
    max_text_chars: int = Field(default=100_000, ge=1, validation_alias=_env("max_text_chars"))
    keep_versions: int = Field(default=10, ge=1, validation_alias=_env("keep_versions"))
    max_predict_tasks: int = Field(default=20_000, ge=1, validation_alias=_env("max_predict_tasks"))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, _OwnEnvironment(settings_cls)]
        config_file = os.environ.get("ANNOTATOR_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise ConfigError(f"ANNOTATOR_CONFIG points at {config_file}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("basic_auth_pass", "webhook_secret", mode="after")
    @classmethod
    def _empty_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value and value.get_secret_value() else None

    @field_validator("basic_auth_user", mode="after")
    @classmethod
    def _empty_user_is_none(cls, value: str | None) -> str | None:
        return value or None  # compose files pass unset variables as empty strings

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value):
        return str(value).strip().upper()

    @field_validator("self_training", mode="before")
    @classmethod
    def _self_training_words(cls, value):
        words = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, bool):
            return "on" if value else "off"
        return words.get(str(value).strip().lower(), str(value).strip().lower())

    @model_validator(mode="after")
    def _auth_pair(self) -> Settings:
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both ANNOTATOR_BASIC_AUTH_USER and ANNOTATOR_BASIC_AUTH_PASS, or neither")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL in use: the configured one, or SQLite inside ``data_dir``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'annotator.db'}"

    def project_dir(self, project: str) -> Path:
        """Artifact folder of one project (models, index); the name is checked first."""
        return self.data_dir / "projects" / check_project_name(project)

    def with_label_studio(self, url: str, api_key: str, *, trusted: bool = True) -> Settings:
        """A copy that reaches Label Studio at ``url`` with ``api_key`` (legacy token or PAT).
        ``trusted`` False: the URL was told by an unauthenticated caller (a /setup without basic
        auth), so the media policy does not exempt its address (`label_studio_trusted`)."""
        copy = self.model_copy(update={"label_studio_url": url, "label_studio_api_key": SecretStr(api_key)})
        copy._label_studio_trusted = trusted
        return copy

    @property
    def label_studio_trusted(self) -> bool:
        """Whether ``label_studio_url`` is the operator's (configured, or stored by an authenticated
        path), and so a private or loopback address may be reached there (`MediaPolicy`)."""
        return self._label_studio_trusted

    @property
    def resolved_label_studio_venv(self) -> Path:
        """Where `annotator demo` installs Label Studio (its own virtualenv)."""
        return self.label_studio_venv or self.data_dir / "label-studio" / "venv"

    @property
    def media_allow_host_list(self) -> list[str]:
        return [h.strip() for h in self.media_allow_hosts.split(",") if h.strip()]

    @property
    def media_root_list(self) -> list[Path]:
        return [Path(p).expanduser() for p in self.media_roots.split(os.pathsep) if p.strip()]

    @property
    def cache_dir(self) -> Path:
        """Embedding cache, shared by all projects (keyed by content hash and encoder)."""
        return self.data_dir / "embeddings"


def load_settings(**overrides: Any) -> Settings:
    """Build `Settings`, turning validation failures into one readable `ConfigError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
