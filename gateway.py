"""The Falcon gateway: maps each CLI verb and VM callback to a handler that enqueues a function.

`create_app` wires routes to resource instances; `get_app` builds one from the environment
(used by gunicorn: `gunicorn 'gateway:get_app()'`).
"""

from __future__ import annotations

import falcon

from config import logs
from config import metrics as process_metrics
from config.settings import Settings
from functions.model.clock import Clock, system_clock
from functions.store.runtime import connect
from handlers import callbacks, configs, envs, events, health, metrics, openapi, repo, scheduler, services, ui
from handlers.auth import AuthMiddleware
from handlers.deps import Deps
from handlers.errors import install_error_handlers
from handlers.media import install_json

ROUTE_MODULES = (health, services, scheduler, configs, repo, envs, events, callbacks, metrics, openapi, ui)


def create_app(settings: Settings, clock: Clock = system_clock) -> falcon.App:
    """A WSGI app serving every Carina route against the Redis in `settings`."""
    rt = connect(settings)
    deps = Deps(settings=settings, redis=rt.text, raw=rt.raw, queue=rt.queue, clock=clock)
    app = falcon.App(middleware=[AuthMiddleware(deps)])
    app.req_options.strip_url_path_trailing_slash = True
    install_json(app)
    install_error_handlers(app)
    for module in ROUTE_MODULES:
        module.add_routes(app, deps)
    return app


def get_app() -> falcon.App:
    """The app for the current environment variables, in a process logging JSON lines and recording
    metrics for /metrics (multiprocess mode: gunicorn runs several of these processes)."""
    settings = Settings.from_env()
    logs.setup("gateway")
    process_metrics.init_process(settings.home)
    return create_app(settings)
