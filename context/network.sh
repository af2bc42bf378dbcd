#!/bin/sh
# Reports the VM's network to Carina (updatevmstatus: newip=$IP, name=$HOSTNAME), once the network is up.
. "$(dirname "$0")/carina-lib.sh"

if vmstatus "$IP" "$HOSTNAME"; then
    echo "network.sh: reported ip=$IP name=$HOSTNAME"
    exit 0
fi
exit 1
