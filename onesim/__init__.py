"""onesim: the embedded OpenNebula-compatible cloud (XML-RPC at /RPC2, hosts, VMs, guests, faults).

Entry points: `onesim.server.start_simulator(...)` in-process, `python -m onesim` as a service.
"""
