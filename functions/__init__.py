"""Carina's queued functions and the pure logic they use."""
