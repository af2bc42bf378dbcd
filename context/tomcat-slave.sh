#!/bin/sh
# Tomcat slave context script: reports SLAVE_${SLAVE_ID}_INIT_DONE (SLAVE_ID may be empty, as in the guide).

. "$(dirname "$0")/carina-lib.sh"

case "${1:-init}" in
    init)
        echo "$(basename "$0"): slave ${SLAVE_ID:-} ready (package: ${APP_PACKAGE:-none}, master: ${MASTER:-unknown})"
        appstatus "SLAVE_${SLAVE_ID:-}_INIT_DONE"
        ;;
    *)
        echo "usage: $(basename "$0") [init]" >&2
        exit 2
        ;;
esac
