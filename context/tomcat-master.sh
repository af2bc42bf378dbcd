#!/bin/sh
# Load-balancer master context script. Carina runs it at boot (`init`) and later over SSH:
#   init                 copy this script to $HOME, create $HOME/backends, report MASTER_INIT_DONE
#   add <ip> [<port>]    add backend ip:port to $HOME/backends (no-op if present)
#   remove|delete <ip> [<port>]   drop it (no-op if absent)
#   show                 print the backends, one per line
BACKENDS="$HOME/backends"

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
        self="$HOME/$(basename "$0")"
        if [ "$0" != "$self" ]; then cp "$0" "$self" && chmod 755 "$self"; fi
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
