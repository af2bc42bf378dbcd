#!/bin/sh
# Carina context entry point, run once at boot from the context CD (${MNT:-/mnt}).
# Installs the controller's key for SSH, reports the network (network.sh), then runs the
# application's context script ($APP_CONTEXT_SCRIPT init), which reports *_INIT_DONE / *_INIT_FAIL.
# Without an application script it reports *_INIT_DONE itself.
MNT="${MNT:-/mnt}"

. "$(dirname "$0")/carina-lib.sh"


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
