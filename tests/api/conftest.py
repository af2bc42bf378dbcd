"""Fixtures for the API tests: the real gateway app on the session's redis-server, services and tokens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import falcon.testing
import pytest
import redis

from config.settings import Settings
from functions.model.clock import FakeClock
from functions.store import tenants
from gateway import create_app
from tests.harness import RedisServer


@dataclass
class Api:
    client: falcon.testing.TestClient
    r: redis.Redis
    clock: FakeClock
    admin: str

    def service(self, name: str, cls: str = "silver") -> str:
        """Create a service; its token."""
        return tenants.add_service(self.r, name, cls, clock=self.clock)


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


@pytest.fixture
def api(rdb: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    clock = FakeClock()
    app = create_app(Settings(redis_url=redis_server.url, home=tmp_path), clock=clock)
    admin = tenants.ensure_admin_token(rdb, tmp_path)
    yield Api(client=falcon.testing.TestClient(app), r=rdb, clock=clock, admin=admin)
