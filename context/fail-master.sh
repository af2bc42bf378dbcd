#!/bin/sh
# Demo master script that always fails its setup: reports MASTER_INIT_FAIL:DEMO_FAILURE (tests the failure path).

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

case "${1:-init}" in
    init)
        echo "$(basename "$0"): failing on purpose"
        appstatus "MASTER_INIT_FAIL:DEMO_FAILURE"
        exit 1
        ;;
    add|remove|delete|show) exit 0 ;;
    *) echo "usage: $(basename "$0") [init]" >&2; exit 2 ;;
esac
