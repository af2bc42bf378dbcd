"""Falcon resources: validate, authorize, enqueue, answer. No business logic lives here."""
