"""gunicorn settings shared by the Procfile, the demo and the tests (`gunicorn -c config/gunicorn.conf.py`):
gunicorn's own error and access logs as JSON lines (config/logs.py). Bind address, workers and threads stay
on the command line."""

from config.logs import gunicorn_logconfig

logconfig_dict = gunicorn_logconfig("gateway")
