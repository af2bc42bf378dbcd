"""The global scheduler's pure half: model, allocation, reclaim, global config, views (no Redis, no I/O)."""
