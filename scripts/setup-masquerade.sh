#!/bin/sh
# Forwarding and masquerading for the Firezone Gateway, as Firezone's init scripts do
# (rust/gateway/debian/firezone-gateway-init.sh, rust/docker-init-gateway.sh).
# The gateway binary configures none of this. Installed as /usr/bin/firezone-gateway-init (the unit's
# ExecStartPre); runs as root.
#
# Idempotent: every rule is checked (-C) before it is inserted, so running it again adds nothing.
# Namespace-safe: iptables rules and net.* sysctls belong to the network namespace the script runs in
# (`ip netns exec NS setup-masquerade.sh` touches only NS); nothing is written outside it.
#
# Environment: FIREZONE_TUN_INTERFACE (default tun-firezone), FIREZONE_MASQUERADE_INTERFACES (default
# "e+ w+": interfaces whose outgoing traffic is masqueraded, iptables wildcard syntax).
# IPv6 is best effort: when ip6tables or IPv6 is not available, a warning is printed and IPv4 still works.
#
# The underlay guard (an addition to Firezone's script; decision 0110, docs/operations.md "Security
# model"): with masquerading, nothing but replies of the clients' own flows may be forwarded into the
# tunnel, and nothing whose source would not be routed back out of the interface it came in on (strict
# reverse path, so a spoofed resource address from the uplink is dropped). It is the nftables table
# `inet firezone-gateway`, replaced as a whole in one transaction (so running the script again changes
# nothing); the daemon replaces it again with the same rules plus its tunnel addresses when the portal's
# `init` arrives, and deletes it when it stops. Needs `nft` (package nftables); without it a warning.
set -eu

IFACE="${FIREZONE_TUN_INTERFACE:-tun-firezone}"
OUT_IFACES="${FIREZONE_MASQUERADE_INTERFACES:-e+ w+}"
V4_RANGE="100.64.0.0/11"
V6_RANGE="fd00:2021:1111::/107"

# ensure TOOL TABLE CHAIN POSITION RULE...: insert (POSITION=1) or append (POSITION=end) unless present.
ensure() {
    tool=$1 table=$2 chain=$3 position=$4
    shift 4
    if "$tool" -w -t "$table" -C "$chain" "$@" >/dev/null 2>&1; then
        return 0
    fi
    if [ "$position" = end ]; then
        "$tool" -w -t "$table" -A "$chain" "$@"
    else
        "$tool" -w -t "$table" -I "$chain" "$position" "$@"
    fi
}

rules() {
    tool=$1 range=$2
    ensure "$tool" filter FORWARD 1 -i "$IFACE" -j ACCEPT
    ensure "$tool" filter FORWARD 1 -o "$IFACE" -j ACCEPT
    for out in $OUT_IFACES; do
        ensure "$tool" nat POSTROUTING end -s "$range" -o "$out" -j MASQUERADE
    done
}

rules iptables "$V4_RANGE"
sysctl -q -w net.ipv4.ip_forward=1
sysctl -q -w net.ipv4.conf.all.src_valid_mark=1

if [ -e /proc/sys/net/ipv6/conf/all/disable_ipv6 ]; then
    sysctl -q -w net.ipv6.conf.all.disable_ipv6=0 || echo "firezone-gateway-init: cannot enable IPv6" >&2
    if command -v ip6tables >/dev/null 2>&1 && (rules ip6tables "$V6_RANGE"); then
        sysctl -q -w net.ipv6.conf.all.forwarding=1
        sysctl -q -w net.ipv6.conf.default.forwarding=1
    else
        echo "firezone-gateway-init: IPv6 forwarding/masquerading not configured (ip6tables failed)" >&2
    fi
else
    echo "firezone-gateway-init: IPv6 not available, configured IPv4 only" >&2
fi

# The underlay guard (see the top of this file; gateway_io/firewall.py renders the daemon's version).
guard() {
    nft -f - <<EOF
table inet firezone-gateway {}
delete table inet firezone-gateway
table inet firezone-gateway {
    chain forward {
        type filter hook forward priority filter - 5; policy accept;
        oifname "$IFACE" meta nfproto ipv4 jump into_tunnel
        oifname "$IFACE" meta nfproto ipv6 jump into_tunnel
    }
    chain into_tunnel {
        fib saddr . iif oif missing counter drop
        ct state established,related accept
        counter drop
    }
}
EOF
}
if ! command -v nft >/dev/null 2>&1; then
    echo "firezone-gateway-init: nft not found: underlay guard not installed (install nftables)" >&2
elif ! guard; then
    echo "firezone-gateway-init: nft failed: underlay guard not installed" >&2
fi
