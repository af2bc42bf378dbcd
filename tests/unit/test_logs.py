"""config/logs.py: one JSON object per line, bound and per-call context fields, gunicorn access lines,
and secrets scrubbed from every text field."""

from __future__ import annotations

import io
import json
import logging
import threading

from hypothesis import example, given
from hypothesis import strategies as st

from config import logs

TOKEN_CHARS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=8,
                      max_size=64)


def capture(process: str = "worker") -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter(process))
    logger = logging.getLogger(f"carina.test.{process}.{id(out)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_the_bound_context():
    logs.clear()         # a request handled earlier on this thread leaves its fields bound for gunicorn's access line
    logger, out = capture()
    with logs.bound(envid="12", service="oneenv1"):
        with logs.bound(jobid="40"):
            logger.info("env %s: %s", "12", "master m: VM 3 allocated\nsecond line")
        logger.warning("after", extra={"jobid": "41"})
    logger.info("outside")
    first, second, third = lines(out)
    assert first["msg"] == "env 12: master m: VM 3 allocated\nsecond line" and first["level"] == "INFO"
    assert (first["envid"], first["jobid"], first["service"], first["process"]) == ("12", "40", "oneenv1", "worker")
    assert first["ts"].endswith("Z") and isinstance(first["pid"], int)
    assert second["jobid"] == "41" and second["envid"] == "12"
    assert "envid" not in third and "jobid" not in third
    assert len(out.getvalue().splitlines()) == 3


def test_bind_and_clear_are_per_thread():
    logs.clear()
    logs.bind(service="a", envid="", jobid=None)
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(logs.context()))
    thread.start()
    thread.join()
    assert logs.context() == {"service": "a"} and seen == {}
    logs.clear()
    assert logs.context() == {}


def test_exceptions_are_one_field_of_the_same_line():
    logger, out = capture()
    try:
        raise ValueError("boom with token=abcdefgh123")
    except ValueError:
        logger.exception("step failed")
    (doc,) = lines(out)
    assert doc["level"] == "ERROR" and "ValueError: boom" in doc["exc"] and "abcdefgh123" not in doc["exc"]


def test_gunicorn_access_lines_carry_method_path_status_and_no_query():
    logger, out = capture("gateway")
    access = logging.getLogger("gunicorn.access")
    record = access.makeRecord("gunicorn.access", logging.INFO, __file__, 1, '%(h)s "%(r)s" %(s)s',
                               ({"h": "127.0.0.1", "m": "GET", "U": "/cgi-bin/s&envid=3&token=Zm9vYmFyYmF6",
                                 "q": "token=Zm9vYmFyYmF6", "s": "200", "D": 2500,
                                 "r": "GET /cgi-bin/x?token=Zm9vYmFyYmF6 HTTP/1.1"},), None)
    logger.handle(record)
    (doc,) = lines(out)
    assert (doc["method"], doc["status"], doc["duration_ms"], doc["remote"]) == ("GET", "200", 2.5, "127.0.0.1")
    assert doc["path"] == "/cgi-bin/s&envid=3&token=***" and "Zm9vYmFyYmF6" not in json.dumps(doc)


@given(TOKEN_CHARS)
@example("CARINA_T")
def test_secrets_never_survive_scrubbing(secret):
    """No more copies of the secret are left than the text around it holds by itself (a secret like "CARINA_T"
    is part of the key name CARINA_TOKEN)."""
    templates = ["GET /cgi-bin/updateappstatus.sh?vmid=1&token=\0&status=X", "Authorization: Bearer \0",
                 "ENDPOINT = {:oneauth => 'oneadmin:\0'}", '{"oneauth": "oneadmin:\0"}', 'CARINA_TOKEN = "\0"',
                 "-----BEGIN OPENSSH PRIVATE KEY-----\n\0\n-----END OPENSSH PRIVATE KEY-----"]
    for template in templates:
        text = template.replace("\0", secret)
        assert logs.scrub(text).count(secret) <= template.count(secret), text


def test_scrubbing_keeps_ordinary_text():
    text = "env 12: master m: VM 3 RUNNING at 10.0.0.3 (MASTER_INIT_DONE)"
    assert logs.scrub(text) == text


def test_setup_replaces_the_root_handlers_and_is_safe_twice():
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        out = io.StringIO()
        logs.setup("scheduler", stream=out)
        logs.setup("scheduler", stream=out)
        logging.getLogger("rq_scheduler.scheduler").info("registered %s", "tick")
        assert len(root.handlers) == 1
        (doc,) = lines(out)
        assert doc["process"] == "scheduler" and doc["msg"] == "registered tick"
    finally:
        root.handlers = saved
        root.setLevel(level)
        logging.captureWarnings(False)


def test_gunicorn_logconfig_is_a_valid_dict_config():
    config = logs.gunicorn_logconfig("gateway")
    assert config["formatters"]["json"]["()"] == "config.logs.JsonFormatter"
    assert set(config["loggers"]) == {"gunicorn.error", "gunicorn.access"}
