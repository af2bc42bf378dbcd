"""`python -m onesim [options]` runs the simulator; `python -m onesim fault ...` injects faults.

Defaults come from ONESIM_PORT (2633), ONESIM_AUTH (oneadmin:onesim), ONESIM_SSH_PORT (2222) and
CARINA_HOME (workdir $CARINA_HOME/onesim, made absolute at start, mode 0700; CARINA_HOME defaults to ./var).
Process guests run as ONESIM_GUEST_USER (carina-guest) in sandboxes under ONESIM_GUEST_ROOT (onesim.sandbox).
The cloud is kept in <workdir>/state across restarts (`--fresh` starts an empty one); RUNNING VMs get their
guests booted again. SIGTERM or SIGINT stops it cleanly (guests killed, state saved).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from onesim.model import DEFAULT_DELAYS, DELAY_NAMES, MONITORING_KEEP


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m onesim", description="OpenNebula-compatible simulator")
    p.add_argument("--port", type=int, default=int(env.get("ONESIM_PORT", "2633")))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--auth", default=env.get("ONESIM_AUTH", "oneadmin:onesim"), help="user:password accepted")
    p.add_argument("--inventory", type=Path, default=None, help="inventory YAML (default config/onesim.yaml)")
    p.add_argument("--guests", choices=["process", "synthetic", "none"], default="process")
    p.add_argument("--ssh-port", type=int, default=int(env.get("ONESIM_SSH_PORT", "2222")))
    p.add_argument("--workdir", type=Path, default=None, help="default $CARINA_HOME/onesim")
    p.add_argument("--fresh", action="store_true", help="discard the saved cloud and start an empty one")
    p.add_argument("--monitoring-keep", type=int, default=MONITORING_KEEP, metavar="N",
                   help=f"monitoring records kept per VM, 1..{MONITORING_KEEP} (about 0.5 KB each; "
                        f"default {MONITORING_KEEP})")
    for name in DELAY_NAMES:
        p.add_argument(f"--delay-{name}", type=float, default=DEFAULT_DELAYS[name], metavar="S",
                       help=f"seconds for {name} (default {DEFAULT_DELAYS[name]:g})")
    return p


def main(argv: list[str]) -> int:
    if argv[:1] == ["fault"]:
        from onesim.faults import cli

        return cli(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s onesim %(levelname)s %(message)s")
    from config.redisauth import ensure_private_dir
    from onesim.inventory import InventoryError
    from onesim.server import default_workdir, start_simulator

    delays = {name: getattr(args, f"delay_{name}") for name in DELAY_NAMES}
    stop = threading.Event()  # set before loading: a stop during a long load still saves and exits
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    workdir = (args.workdir or default_workdir()).resolve()  # guests never depend on the working directory
    try:
        ensure_private_dir(workdir)  # private (0700): the cloud's state names every VM's context, tokens included
        handle = start_simulator(args.port, auth=args.auth, inventory=args.inventory, guests=args.guests,
                                 ssh_port=args.ssh_port, delays=delays, workdir=workdir, host=args.host,
                                 persist=True, fresh=args.fresh,
                                 monitoring_keep=args.monitoring_keep)
    except (InventoryError, ValueError, OSError) as exc:
        print(f"onesim: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("onesim").info("serving %s (guests=%s, state in %s)", handle.url, args.guests, workdir)
    stop.wait()
    handle.stop()
    logging.getLogger("onesim").info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
