#!/bin/sh
# Reports the VM's network to Carina (updatevmstatus: newip=$IP, name=$HOSTNAME), once the network is up.
urlencode() {
    printf '%s' "$1" | LC_ALL=C awk '
        BEGIN { for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i }
        { if (NR > 1) printf "%%0A"
          for (i = 1; i <= length($0); i++) {
              c = substr($0, i, 1)
              if (c ~ /[A-Za-z0-9._~-]/) printf "%s", c; else printf "%%%02X", ord[c]
          } }'
}

url="http://$CARINA_IP/cgi-bin/updatevmstatus.sh?service=$(urlencode "$SERVICE_NAME")&vmid=$(urlencode "$VMID")&envid=$(urlencode "$ENVID")&newip=$(urlencode "$IP")&name=$(urlencode "$HOSTNAME")&token=$(urlencode "$CARINA_TOKEN")"
for try in 1 2 3 4 5; do
    if wget -q -T 10 -t 1 -O /dev/null "$url"; then
        echo "network.sh: reported ip=$IP name=$HOSTNAME"
        exit 0
    fi
    echo "network.sh: callback failed (try $try)" >&2
    sleep 2
done
exit 1
