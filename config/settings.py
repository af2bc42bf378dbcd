"""Settings read from environment variables, with sane defaults (no Redis/RQ imports)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from config.redisauth import redis_password

ROOT = Path(__file__).resolve().parent.parent


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _positive(env: dict[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def home_from_env(env: dict[str, str] | None = None) -> Path:
    """CARINA_HOME (default `var`) as an absolute path; a relative value is taken from the working directory
    at the moment of the call (the Procfile's processes all start in the same one), so call it once at start."""
    env = os.environ if env is None else env
    return Path(env.get("CARINA_HOME") or "var").resolve()


def local_redis_url(home: Path, port: int) -> str:
    """The URL of the Procfile's Redis on 127.0.0.1:`port`, with the password of `home` (created, with `home`
    at mode 0700, if missing). Safe to run twice and from several processes at once."""
    return f"redis://:{quote(redis_password(home), safe='')}@127.0.0.1:{port}/0"


@dataclass(frozen=True)
class Settings:
    """Everything a Carina process needs to know about its surroundings."""

    port: int = 4567
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)   # may carry the password
    home: Path = ROOT / "var"          # from_env: $CARINA_HOME made absolute once, default ./var
    onesim_port: int = 2633
    onesim_auth: str = "oneadmin:onesim"
    onesim_ssh_port: int = 2222
    ssh_port: int = 2222                # port Carina SSHes to on VMs (22 on a real cloud)
    callback_addr: str = "127.0.0.1:4567"
    legacy_callbacks: bool = False
    create_deadline: int = 900          # seconds a create may wait for RUNNING / MASTER_INIT_*
    op_deadline: int = 900              # seconds a scale-down or remove may take (terminate refused, cloud down)
    drain_time_default: int = 30        # seconds between the master's `remove` and terminating the VM
    boot_grace: int = 300               # seconds a new VM is not judged broken by the policies (recreate)
    job_retention: int = 10000          # jobs and events kept per service / environment
    ssh_timeout: float = 20.0
    ssh_channels: int = 8               # commands run at once on one SSH connection to a master (1: one by one)
    queue_name: str = "carina"
    metrics_token: str = field(default="", repr=False)   # a scrape token for /metrics (besides the admin's)
    callback_rate: int = 60             # callbacks a minute per VM (token bucket refill) ...
    callback_burst: int = 20            # ... and how many may come at once
    upload_quota: int = 64 * 1024 * 1024   # bytes of uploaded .vm and context files per service (as stored)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from `env` (default: os.environ). Raises ValueError naming a bad variable.

        Without REDIS_URL the password comes from $CARINA_HOME/redis.pass, which is created then if missing."""
        env = dict(os.environ if env is None else env)
        port = _int(env, "CARINA_PORT", 4567)
        redis_port = _int(env, "REDIS_PORT", 6379)
        home = home_from_env(env)
        return cls(
            port=port,
            redis_url=env.get("REDIS_URL") or local_redis_url(home, redis_port),
            home=home,
            onesim_port=_int(env, "ONESIM_PORT", 2633),
            onesim_auth=env.get("ONESIM_AUTH") or "oneadmin:onesim",
            onesim_ssh_port=_int(env, "ONESIM_SSH_PORT", 2222),
            ssh_port=_int(env, "CARINA_SSH_PORT", _int(env, "ONESIM_SSH_PORT", 2222)),
            callback_addr=env.get("CARINA_CALLBACK_ADDR") or f"127.0.0.1:{port}",
            legacy_callbacks=env.get("CARINA_LEGACY_CALLBACKS", "").lower() in ("1", "yes", "true"),
            create_deadline=_int(env, "CARINA_CREATE_DEADLINE", 900),
            op_deadline=_int(env, "CARINA_OP_DEADLINE", 900),
            drain_time_default=_int(env, "CARINA_DRAIN_TIME", 30),
            boot_grace=_int(env, "CARINA_BOOT_GRACE", 300),
            job_retention=_int(env, "CARINA_JOB_RETENTION", 10000),
            ssh_channels=_positive(env, "CARINA_SSH_CHANNELS", 8),
            queue_name=env.get("CARINA_QUEUE") or "carina",
            metrics_token=env.get("CARINA_METRICS_TOKEN", "").strip(),
            callback_rate=_positive(env, "CARINA_CALLBACK_RATE", 60),
            callback_burst=_positive(env, "CARINA_CALLBACK_BURST", 20),
            upload_quota=_positive(env, "CARINA_UPLOAD_QUOTA", 64 * 1024 * 1024),
        )
