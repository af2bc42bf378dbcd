#!/bin/sh
# Demo master script that always fails its setup: reports MASTER_INIT_FAIL:DEMO_FAILURE (tests the failure path).

. "$(dirname "$0")/carina-lib.sh"

case "${1:-init}" in
    init)
        echo "$(basename "$0"): failing on purpose"
        appstatus "MASTER_INIT_FAIL:DEMO_FAILURE"
        exit 1
        ;;
    add|remove|delete|show) exit 0 ;;
    *) echo "usage: $(basename "$0") [init]" >&2; exit 2 ;;
esac
