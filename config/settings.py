"""Settings read from environment variables, with sane defaults (no Redis/RQ imports)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Everything a Carina process needs to know about its surroundings."""

    port: int = 4567
    redis_url: str = "redis://127.0.0.1:6379/0"
    home: Path = ROOT / "var"
    onesim_port: int = 2633
    onesim_auth: str = "oneadmin:onesim"
    onesim_ssh_port: int = 2222
    ssh_port: int = 2222                # port Carina SSHes to on VMs (22 on a real cloud)
    callback_addr: str = "127.0.0.1:4567"
    legacy_callbacks: bool = False
    create_deadline: int = 900          # seconds a create may wait for RUNNING / MASTER_INIT_*
    drain_time_default: int = 30        # seconds between the master's `remove` and terminating the VM
    boot_grace: int = 300               # seconds a new VM is not judged broken by the policies (recreate)
    job_retention: int = 10000          # jobs and events kept per service / environment
    ssh_timeout: float = 20.0
    queue_name: str = "carina"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from `env` (default: os.environ). Raises ValueError naming a bad variable."""
        env = dict(os.environ if env is None else env)
        port = _int(env, "CARINA_PORT", 4567)
        redis_port = _int(env, "REDIS_PORT", 6379)
        home = Path(env.get("CARINA_HOME") or ROOT / "var").resolve()
        return cls(
            port=port,
            redis_url=env.get("REDIS_URL") or f"redis://127.0.0.1:{redis_port}/0",
            home=home,
            onesim_port=_int(env, "ONESIM_PORT", 2633),
            onesim_auth=env.get("ONESIM_AUTH") or "oneadmin:onesim",
            onesim_ssh_port=_int(env, "ONESIM_SSH_PORT", 2222),
            ssh_port=_int(env, "CARINA_SSH_PORT", _int(env, "ONESIM_SSH_PORT", 2222)),
            callback_addr=env.get("CARINA_CALLBACK_ADDR") or f"127.0.0.1:{port}",
            legacy_callbacks=env.get("CARINA_LEGACY_CALLBACKS", "").lower() in ("1", "yes", "true"),
            create_deadline=_int(env, "CARINA_CREATE_DEADLINE", 900),
            drain_time_default=_int(env, "CARINA_DRAIN_TIME", 30),
            boot_grace=_int(env, "CARINA_BOOT_GRACE", 300),
            job_retention=_int(env, "CARINA_JOB_RETENTION", 10000),
            queue_name=env.get("CARINA_QUEUE") or "carina",
        )
