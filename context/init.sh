#!/bin/sh
# Carina context entry point, run once at boot from the context CD (${MNT:-/mnt}).
# Installs the controller's key for SSH, reports the network (network.sh), then runs the
# application's context script ($APP_CONTEXT_SCRIPT init), which reports *_INIT_DONE / *_INIT_FAIL.
# Without an application script it reports *_INIT_DONE itself.
MNT="${MNT:-/mnt}"

urlencode() {
    printf '%s' "$1" | LC_ALL=C awk '
        BEGIN { for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i }
        { if (NR > 1) printf "%%0A"
          for (i = 1; i <= length($0); i++) {
              c = substr($0, i, 1)
              if (c ~ /[A-Za-z0-9._~-]/) printf "%s", c; else printf "%%%02X", ord[c]
          } }'
}

# appstatus STATUS: the updateappstatus callback (retried a few times).
appstatus() {
    url="http://$CARINA_IP/cgi-bin/updateappstatus.sh?service=$(urlencode "$SERVICE_NAME")&vmid=$(urlencode "$VMID")&envid=$(urlencode "$ENVID")&status=$(urlencode "$1")&token=$(urlencode "$CARINA_TOKEN")"
    for try in 1 2 3 4 5; do
        wget -q -T 10 -t 1 -O /dev/null "$url" && return 0
        echo "init.sh: callback $1 failed (try $try)" >&2
        sleep 2
    done
    return 1
}

is_master() {
    if [ -n "${CARINA_ROLE:-}" ]; then [ "$CARINA_ROLE" = master ]; else [ -z "${SLAVE_ID+x}" ]; fi
}

if [ -f "$MNT/authorized_keys" ]; then
    mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh"
    cp "$MNT/authorized_keys" "$HOME/.ssh/authorized_keys" && chmod 600 "$HOME/.ssh/authorized_keys"
    echo "init.sh: installed authorized_keys in $HOME/.ssh"
else
    echo "init.sh: no $MNT/authorized_keys on the context CD" >&2
fi

if [ -f "$MNT/network.sh" ]; then
    sh "$MNT/network.sh" || echo "init.sh: network.sh failed" >&2
else
    echo "init.sh: no $MNT/network.sh on the context CD" >&2
fi

if [ -z "${APP_CONTEXT_SCRIPT:-}" ]; then
    # No application script (the guide's minimal example): nothing more to set up, so say so.
    if is_master; then appstatus MASTER_INIT_DONE; else appstatus "SLAVE_${SLAVE_ID:-}_INIT_DONE"; fi
    exit $?
fi
case "$APP_CONTEXT_SCRIPT" in
    */*|.*) echo "init.sh: APP_CONTEXT_SCRIPT must be a plain file name: $APP_CONTEXT_SCRIPT" >&2; ok=no ;;
    *) if [ -f "$MNT/$APP_CONTEXT_SCRIPT" ]; then ok=yes; else ok=no
           echo "init.sh: APP_CONTEXT_SCRIPT $APP_CONTEXT_SCRIPT is not on the context CD" >&2; fi ;;
esac
if [ "$ok" = yes ]; then
    exec sh "$MNT/$APP_CONTEXT_SCRIPT" init
fi
if is_master; then
    appstatus "MASTER_INIT_FAIL:CONTEXT_SCRIPT_MISSING"
else
    appstatus "SLAVE_${SLAVE_ID:-}_INIT_FAIL"
fi
exit 1
