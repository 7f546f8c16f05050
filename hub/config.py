"""Settings, loaded once from `HUB_*` environment variables or `hub.toml`, passed down."""

from __future__ import annotations

from pydantic import Field, PositiveInt, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    """Every setting of the hub. The README lists them with their defaults."""

    model_config = SettingsConfigDict(env_prefix="HUB_", toml_file="hub.toml", extra="ignore")

    database_url: str = "postgresql://postgres:postgres@127.0.0.1:5432/hub"
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    public_url: str = ""
    api_url: str = ""
    api_key: str = ""
    admin_key: str = ""
    allow_private_urls: bool = False
    trusted_hosts: str = ""  # comma-separated names/IPs exempt from the private-address guard
    metrics_token: str = ""
    metrics_cache_s: float = Field(default=2.0, ge=0)
    lookup_cache_s: float = Field(default=2.0, ge=0)
    api_max_in_flight: int = Field(default=256, ge=0)  # per API process; 0: no bound
    api_processes: int = Field(default=1, ge=0, le=256)  # on one port (SO_REUSEPORT); 0: per CPU
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    worker_nice: int = Field(default=10, ge=0, le=19)  # `hub worker` yields the CPU to the API
    voice_metrics_port: int = Field(default=9201, ge=0, le=65535)
    max_keys_per_app: PositiveInt = 20
    open_trunks: str = ""
    dashboard_login_s: float = Field(default=12 * 3600, gt=0)  # a dashboard login's lifetime
    dashboard_refresh_s: float = Field(default=5.0, gt=0)  # how often its pages poll

    audience_max: int = 1_000_000
    body_max_bytes: int = 64 * 1024 * 1024
    message_max_chars: int = 100_000
    subject_max_chars: int = 998

    uvloop: bool = True  # run the long-lived processes on uvloop when it is installed

    lease_s: float = 30.0
    batch_size: int = 200
    send_concurrency: int = 20
    reconcile_interval_s: float = 5.0
    job_max_s: float = 60.0
    idempotency_ttl_h: int = 24
    smtp_timeout_s: float = 30.0

    webhook_retry_schedule: str = "0,5,30,120,600,1800,7200,18000,36000,36000"
    webhook_timeout_s: float = 10.0
    webhook_concurrency: PositiveInt = 64
    webhook_per_url: PositiveInt = 4
    webhook_per_app: PositiveInt = 16

    fetch_max_bytes: int = 20 * 1024 * 1024
    fetch_timeout_s: float = 20.0

    ari_url: str = "http://127.0.0.1:8088"
    ari_user: str = "hub"
    ari_password: str = "hub"
    ari_rest_over_websocket: bool = True  # plays, hang-ups on REST websockets if Asterisk takes them
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "hub"
    ami_password: str = "hub"

    media_dir: str = "/var/lib/connect-hub/media"
    voice_id: str = ""
    voice_lease_s: float = 90.0
    voice_poll_s: float = 0.5
    voice_originates_in_flight: PositiveInt = 8  # calls being started at once per trunk
    agi_host: str = "127.0.0.1"  # the FastAGI server inside `hub voice` (DESIGN §8.5)
    agi_port: int = Field(default=4573, ge=0, le=65535)  # 0: no FastAGI server
    agi_max_calls: PositiveInt = 200  # concurrent AGI sessions; more are turned away
    callback_fallback: str = ""  # what unknown callers hear: an Asterisk sound; "" = spoken

    log_level: str = "INFO"

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if not parts or any(float(p) < 0 for p in parts):
            raise ValueError("a comma-separated list of non-negative seconds")
        return ",".join(parts)

    @property
    def webhook_delays_s(self) -> list[float]:
        return [float(p) for p in self.webhook_retry_schedule.split(",")]

    @property
    def open_trunk_names(self) -> frozenset[str]:
        """PJSIP endpoints every app may name in a voice transport (HUB_OPEN_TRUNKS)."""
        return frozenset(t.strip() for t in self.open_trunks.split(",") if t.strip())

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def client_api_url(self) -> str:
        return self.api_url or self.base_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(**overrides: object) -> Settings:
    """Read the settings once; callers pass the object down explicitly."""
    return Settings(**overrides)  # type: ignore[arg-type]

