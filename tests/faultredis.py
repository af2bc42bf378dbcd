"""A real redis-py client with a hook before each command, for tests that inject a failure at the N-th one."""

from __future__ import annotations

from typing import Any

import redis
from redis.client import Pipeline


class TickingRedis(redis.Redis):
    """A real client that calls `tick()` before each command it sends: a plain command, a command a pipeline runs
    at once (a WATCH), and a pipeline's EXEC (counting as one). Subclasses raise in `tick` to inject a failure."""

    def tick(self) -> None:
        """Called before each command; does nothing here."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.tick()
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        client = self

        class TickingPipeline(Pipeline):
            def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
                client.tick()
                return super().immediate_execute_command(*args, **options)

            def execute(self, raise_on_error: bool = True) -> Any:
                if self.command_stack:
                    client.tick()
                return super().execute(raise_on_error)

        return TickingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
