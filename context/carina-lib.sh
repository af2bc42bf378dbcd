# Shared functions of Carina's context scripts (sourced, not run): URL encoding, the two status callbacks
# to Carina (with the per-VM token), and the master/slave test. Scripts source it from their own folder:
#   . "$(dirname "$0")/carina-lib.sh"
# (the context CD at boot; $HOME for master scripts run later over SSH, which copy it there at init).

urlencode() {
    printf '%s' "$1" | LC_ALL=C awk '
        BEGIN { for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i }
        { if (NR > 1) printf "%%0A"
          for (i = 1; i <= length($0); i++) {
              c = substr($0, i, 1)
              if (c ~ /[A-Za-z0-9._~-]/) printf "%s", c; else printf "%%%02X", ord[c]
          } }'
}

# carina_callback SCRIPT WHAT QUERY: GET http://$CARINA_IP/cgi-bin/SCRIPT?<ids>&QUERY&token=..., retried.
carina_callback() {
    url="http://$CARINA_IP/cgi-bin/$1?service=$(urlencode "$SERVICE_NAME")&vmid=$(urlencode "$VMID")&envid=$(urlencode "$ENVID")&$3&token=$(urlencode "$CARINA_TOKEN")"
    for try in 1 2 3 4 5; do
        wget -q -T 10 -t 1 -O /dev/null "$url" && return 0
        echo "$(basename "$0"): callback $2 failed (try $try)" >&2
        sleep 2
    done
    return 1
}

# appstatus STATUS: report an application status (MASTER_INIT_DONE, SLAVE_0_INIT_FAIL, APP_...).
appstatus() {
    carina_callback updateappstatus.sh "$1" "status=$(urlencode "$1")"
}

# host_key: this VM's SSH host public key as "<type> <base64>" (empty if there is none yet). Carina checks the
# master's first SSH connection against it. The simulator's guests name their key file in $ONESIM_HOSTKEY_PUB.
host_key() {
    f="${ONESIM_HOSTKEY_PUB:-/etc/ssh/ssh_host_ed25519_key.pub}"
    if [ -r "$f" ]; then awk 'NR == 1 && NF >= 2 { print $1 " " $2 }' "$f"; fi
}

# vmstatus IP HOSTNAME: report that the network is configured (with the host key, when there is one).
vmstatus() {
    key="$(host_key 2>/dev/null)"
    extra=""
    if [ -n "$key" ]; then extra="&hostkey=$(urlencode "$key")"; fi
    carina_callback updatevmstatus.sh "newip=$1" "newip=$(urlencode "$1")&name=$(urlencode "$2")$extra"
}

# is_master: CARINA_ROLE decides; without it (older templates) a VM without SLAVE_ID is the master.
is_master() {
    if [ -n "${CARINA_ROLE:-}" ]; then [ "$CARINA_ROLE" = master ]; else [ -z "${SLAVE_ID+x}" ]; fi
}

# install_home: copy the running script and this library to $HOME, so `ssh ... ~/<script> add ...` works.
install_home() {
    for f in "$0" "$(dirname "$0")/carina-lib.sh"; do
        dest="$HOME/$(basename "$f")"
        [ "$f" = "$dest" ] || { cp "$f" "$dest" && chmod 755 "$dest"; }
    done
}
