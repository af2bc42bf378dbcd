"""What every handler module receives: settings, Redis, the queue and the clock."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq import Queue

from config.settings import Settings
from functions.model.clock import Clock


@dataclass
class Deps:
    settings: Settings
    redis: Redis             # decode_responses=True client for Carina's keys
    raw: Redis               # bytes client (RQ)
    queue: Queue
    clock: Clock
