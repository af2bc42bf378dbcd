#!/bin/sh
# Cassandra context script (master and slaves), after the guide's getmount():
# MOUNTLIST is "<base>{<start>-<last>}" (backslashes and trailing commas from config.rb escaping are dropped).
# The master mounts <base><start>; slave N mounts <base><start+N+1>. The result goes to $HOME/mount.
#   init       compute the mount, report MASTER_INIT_DONE / SLAVE_<id>_INIT_DONE, or the failure:
#              MASTER_INIT_FAIL:MOUNTLIST_MISSING (or :MOUNTLIST_INVALID, :MOUNTLIST_EXHAUSTED) / SLAVE_<id>_INIT_FAIL
#   getmount   print the mount and exit (1: MOUNTLIST missing, 2: invalid, 3: exhausted)
#   add|remove|delete <ip> [<data>]   accepted, nothing to do (slaves find the seed through SEEDS)
#   show       print $HOME/mount

urlencode() {
    printf '%s' "$1" | LC_ALL=C awk '
        BEGIN { for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i }
        { if (NR > 1) printf "%%0A"
          for (i = 1; i <= length($0); i++) {
              c = substr($0, i, 1)
              if (c ~ /[A-Za-z0-9._~-]/) printf "%s", c; else printf "%%%02X", ord[c]
          } }'
}

# appstatus STATUS: the updateappstatus callback to Carina (retried a few times).
appstatus() {
    url="http://$CARINA_IP/cgi-bin/updateappstatus.sh?service=$(urlencode "$SERVICE_NAME")&vmid=$(urlencode "$VMID")&envid=$(urlencode "$ENVID")&status=$(urlencode "$1")&token=$(urlencode "$CARINA_TOKEN")"
    for try in 1 2 3 4 5; do
        wget -q -T 10 -t 1 -O /dev/null "$url" && return 0
        echo "$(basename "$0"): callback $1 failed (try $try)" >&2
        sleep 2
    done
    return 1
}

is_master() {
    if [ -n "${CARINA_ROLE:-}" ]; then [ "$CARINA_ROLE" = master ]; else [ -z "${SLAVE_ID+x}" ]; fi
}

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
        self="$HOME/$(basename "$0")"
        if [ "$0" != "$self" ]; then cp "$0" "$self" && chmod 755 "$self"; fi
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
