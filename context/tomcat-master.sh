#!/bin/sh
# Load-balancer master context script. Carina runs it at boot (`init`) and later over SSH:
#   init                 copy this script to $HOME, create $HOME/backends, report MASTER_INIT_DONE
#   add <ip> [<port>]    add backend ip:port to $HOME/backends (no-op if present)
#   remove|delete <ip> [<port>]   drop it (no-op if absent)
#   show                 print the backends, one per line
BACKENDS="$HOME/backends"

. "$(dirname "$0")/carina-lib.sh"

entry() {
    case "$1" in ""|*[!0-9A-Za-z.:_-]*) echo "$(basename "$0"): bad backend address: '$1'" >&2; exit 2 ;; esac
    case "$2" in *[!0-9]*) echo "$(basename "$0"): bad backend port: '$2'" >&2; exit 2 ;; esac
    if [ -n "$2" ]; then printf '%s:%s' "$1" "$2"; else printf '%s' "$1"; fi
}

usage() {
    echo "usage: $(basename "$0") [init | add <ip> [<port>] | remove <ip> [<port>] | delete <ip> [<port>] | show]" >&2
    exit 2
}

cmd="${1:-init}"
case "$cmd" in
    init)
        install_home
        touch "$BACKENDS"
        echo "$(basename "$0"): load balancer ready, backends in $BACKENDS"
        appstatus MASTER_INIT_DONE
        ;;
    add)
        [ $# -ge 2 ] && [ $# -le 3 ] || usage
        e=$(entry "$2" "${3:-}") || exit 2
        touch "$BACKENDS"
        grep -qxF -- "$e" "$BACKENDS" || printf '%s\n' "$e" >> "$BACKENDS"
        echo "added $e"
        ;;
    remove|delete)
        [ $# -ge 2 ] && [ $# -le 3 ] || usage
        e=$(entry "$2" "${3:-}") || exit 2
        touch "$BACKENDS"
        grep -vxF -- "$e" "$BACKENDS" > "$BACKENDS.tmp"
        mv "$BACKENDS.tmp" "$BACKENDS"
        echo "removed $e"
        ;;
    show)
        [ ! -f "$BACKENDS" ] || cat "$BACKENDS"
        ;;
    *)
        usage
        ;;
esac
exit 0
