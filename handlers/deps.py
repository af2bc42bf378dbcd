"""What every handler module receives: settings, Redis, the queue and the clock."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue

from config.settings import Settings
from functions.clock import Clock


@dataclass
class Deps:
    settings: Settings
    redis: redis.Redis       # decode_responses=True client for Carina's keys
    raw: redis.Redis         # bytes client (RQ)
    queue: Queue
    clock: Clock
