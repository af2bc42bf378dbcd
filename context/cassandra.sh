#!/bin/sh
# Cassandra context script (master and slaves), after the guide's getmount():
# MOUNTLIST is "<base>{<start>-<last>}" (backslashes and trailing commas from config.rb escaping are dropped).
# The master mounts <base><start>; slave N mounts <base><start+N+1>. The result goes to $HOME/mount.
#   init       compute the mount, report MASTER_INIT_DONE / SLAVE_<id>_INIT_DONE, or the failure:
#              MASTER_INIT_FAIL:MOUNTLIST_MISSING (or :MOUNTLIST_INVALID, :MOUNTLIST_EXHAUSTED) / SLAVE_<id>_INIT_FAIL
#   getmount   print the mount and exit (1: MOUNTLIST missing, 2: invalid, 3: exhausted)
#   add|remove|delete <ip> [<data>]   accepted, nothing to do (slaves find the seed through SEEDS)
#   show       print $HOME/mount

. "$(dirname "$0")/carina-lib.sh"


# getmount: sets and exports MOUNT; returns 1 (MOUNTLIST missing), 2 (invalid) or 3 (past the last mount).
getmount() {
    [ -n "${MOUNTLIST:-}" ] || return 1
    list=$(printf '%s' "$MOUNTLIST" | tr -d '\\' | sed 's/[, ]*$//')
    BASE=$(printf '%s\n' "$list" | awk -F '{' '{print $1}')
    RANGE=$(printf '%s\n' "$list" | awk -F '{' '{print $2}' | awk -F '}' '{print $1}')
    START=$(printf '%s\n' "$RANGE" | awk -F '-' '{print $1}')
    LAST=$(printf '%s\n' "$RANGE" | awk -F '-' '{print $2}')
    case "$START" in ""|*[!0-9]*) return 2 ;; esac
    case "$LAST" in *[!0-9]*) return 2 ;; esac
    if is_master; then
        MOUNT="$BASE$START"
    else
        case "${SLAVE_ID:-}" in ""|*[!0-9]*) return 2 ;; esac
        MOUNTINDEX=$(expr "$START" + "$SLAVE_ID" + 1)
        if [ -n "$LAST" ] && [ "$MOUNTINDEX" -gt "$LAST" ]; then return 3; fi
        MOUNT="$BASE$MOUNTINDEX"
    fi
    export MOUNT
    return 0
}

reason() {
    case "$1" in 1) echo MOUNTLIST_MISSING ;; 2) echo MOUNTLIST_INVALID ;; *) echo MOUNTLIST_EXHAUSTED ;; esac
}

case "${1:-init}" in
    init)
        if is_master; then role=MASTER; else role="SLAVE_${SLAVE_ID:-}"; fi
        getmount; rc=$?
        if [ "$rc" -ne 0 ]; then
            why=$(reason "$rc")
            echo "$(basename "$0"): cannot compute the mount: $why (MOUNTLIST='${MOUNTLIST:-}')" >&2
            if [ "$role" = MASTER ]; then appstatus "MASTER_INIT_FAIL:$why"; else appstatus "${role}_INIT_FAIL"; fi
            exit 1
        fi
        install_home
        printf '%s\n' "$MOUNT" > "$HOME/mount"
        echo "$(basename "$0"): mount $MOUNT"
        appstatus "${role}_INIT_DONE"
        ;;
    getmount)
        getmount; rc=$?
        if [ "$rc" -ne 0 ]; then echo "$(basename "$0"): $(reason "$rc")" >&2; exit "$rc"; fi
        printf '%s\n' "$MOUNT"
        ;;
    add|remove|delete) exit 0 ;;
    show) [ ! -f "$HOME/mount" ] || cat "$HOME/mount" ;;
    *) echo "usage: $(basename "$0") [init | getmount | add <ip> [<data>] | remove <ip> [<data>] | show]" >&2; exit 2 ;;
esac
