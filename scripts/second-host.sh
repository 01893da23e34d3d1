#!/usr/bin/env bash
# A second, independent hypervisor on this machine, for tests, benchmarks and trying
# out more than one host without a second computer.
#
#   bash scripts/second-host.sh up [NAME]     start it; prints uri=, address= and link=
#   bash scripts/second-host.sh down [NAME]   stop it and remove everything it made
#   bash scripts/second-host.sh status [NAME] exit 0 when it runs
#   bash scripts/second-host.sh stop-libvirtd|start-libvirtd [NAME]
#                                            a host failure for tests: its libvirtd
#                                            goes away (guests keep running) and back
#
# NAME defaults to hv2. The host gets its own network namespace (kvh-NAME) and mount
# namespace, in which run its own virtlogd, libvirtd (own /run/libvirt, /var/lib/libvirt,
# /etc/libvirt, /var/cache/libvirt, /var/log/libvirt; so its own networks, bridges,
# dnsmasq, iptables and QEMU processes) and an sshd. A veth pair gives it a "public"
# address (ADDRESS, 10.251.N.2) and reaches this machine at 10.251.N.1 (link=; a host
# agent there reaches PostgreSQL on that address).
# kvmvps reaches the daemon as qemu+ssh://root@ADDRESS/system through a wrapper that
# pins the sshd's host key (no trust on first use).
#
# Environment: KVMVPS_SECOND_HOST_DIR (default /var/lib/kvmvps-hosts) holds each host's
# directories, keys and logs; KVMVPS_SECOND_HOST_INDEX (1..250, default from NAME's
# checksum) picks the 10.251.N.0/30 link.
set -euo pipefail

action=${1:-}
name=${2:-hv2}
if [[ ! $name =~ ^[a-z][a-z0-9]{0,7}$ ]]; then
    echo "error: host name must be 1-8 lower-case letters or digits, starting with a letter" >&2
    exit 2
fi
root=${KVMVPS_SECOND_HOST_DIR:-/var/lib/kvmvps-hosts}/$name
ns=kvh-$name
veth_host=kvh${name}h
veth_peer=kvh${name}p
index=${KVMVPS_SECOND_HOST_INDEX:-$(($(printf '%s' "$name" | cksum | cut -d' ' -f1) % 250 + 1))}
host_address=10.251.$index.1
address=10.251.$index.2

pid_of() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null && cat "$1"; }

running() { pid_of "$root/run/libvirt/libvirtd.pid" >/dev/null && pid_of "$root/sshd.pid" >/dev/null; }

print_access() {
    echo "uri=$(cat "$root/uri")"
    echo "address=$address"
    echo "link=$host_address"
}

make_dirs() {
    for d in run/libvirt lib/libvirt/images lib/libvirt/qemu lib/libvirt/dnsmasq \
        lib/libvirt/network cache/libvirt log/libvirt/qemu etc/libvirt; do
        mkdir -p "$root/$d"
    done
    # the daemon's configuration, without the first daemon's domains, networks and pools
    find /etc/libvirt -maxdepth 1 -name '*.conf' -exec cp {} "$root/etc/libvirt/" \;
    [[ -d /etc/libvirt/nwfilter ]] && cp -r /etc/libvirt/nwfilter "$root/etc/libvirt/"
    mkdir -p "$root/etc/libvirt/qemu/networks" "$root/etc/libvirt/storage"
}

make_keys() {
    [[ -f $root/hostkey ]] || ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$root/hostkey"
    [[ -f $root/client ]] || ssh-keygen -q -t ed25519 -N '' -C "kvmvps@$(hostname)" -f "$root/client"
    cp "$root/client.pub" "$root/authorized_keys"
    echo "$address $(cut -d' ' -f1,2 "$root/hostkey.pub")" >"$root/known_hosts"
    cat >"$root/ssh" <<EOF
#!/bin/sh
exec ssh -o UserKnownHostsFile=$root/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes "\$@"
EOF
    chmod 755 "$root/ssh"
    cat >"$root/sshd_config" <<EOF
ListenAddress $address
HostKey $root/hostkey
AuthorizedKeysFile $root/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile $root/sshd.pid
EOF
    echo "qemu+ssh://root@$address/system?keyfile=$root/client&command=$root/ssh&no_tty=1" >"$root/uri"
}

make_link() {
    ip netns list | grep -qw "^$ns" || ip netns add "$ns"
    if ! ip link show "$veth_host" >/dev/null 2>&1; then
        ip link add "$veth_host" type veth peer name "$veth_peer"
        ip link set "$veth_peer" netns "$ns"
    fi
    ip addr replace "$host_address/30" dev "$veth_host"
    ip link set "$veth_host" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip addr replace "$address/30" dev "$veth_peer"
    ip netns exec "$ns" ip link set "$veth_peer" up
    ip netns exec "$ns" ip route replace default via "$host_address"
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
}

# Runs inside the new mount namespace (see `up`): private copies of libvirt's
# directories, then the daemons. They keep the namespace alive after this exits.
start_daemons() {
    for pair in run/libvirt:/run/libvirt lib/libvirt:/var/lib/libvirt etc/libvirt:/etc/libvirt \
        cache/libvirt:/var/cache/libvirt log/libvirt:/var/log/libvirt; do
        mount --bind "$root/${pair%%:*}" "${pair#*:}"
    done
    mkdir -p /run/sshd
    # their pid files live in /run, shared with the first pair: give them their own
    virtlogd -d -p /run/libvirt/virtlogd.pid
    libvirtd -d -p /run/libvirt/libvirtd.pid
    /usr/sbin/sshd -f "$root/sshd_config" -E "$root/sshd.log"
}

wait_ready() {
    local deadline=$((SECONDS + 60))
    until "$root/ssh" -i "$root/client" "root@$address" virsh -q uri >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "error: the second host did not answer over SSH; see $root/sshd.log and $root/log/libvirt" >&2
            exit 1
        fi
        sleep 0.2
    done
}

up() {
    if running; then
        print_access
        return
    fi
    down quiet
    mkdir -p "$root"
    chmod 700 "$root"
    make_dirs
    make_keys
    make_link
    root=$root ip netns exec "$ns" unshare --mount --propagation private \
        bash -c "$(declare -f start_daemons); root='$root' start_daemons"
    wait_ready
    print_access
}

down() {
    local quiet=${1:-}
    if ip netns list | grep -qw "^$ns"; then
        # everything in the namespace: sshd, libvirtd, virtlogd, dnsmasq, QEMU
        local pids
        pids=$(ip netns pids "$ns" || true)
        if [[ -n $pids ]]; then
            kill $pids 2>/dev/null || true
            for _ in $(seq 50); do
                pids=$(ip netns pids "$ns" || true)
                [[ -z $pids ]] && break
                sleep 0.1
            done
            [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
        fi
        ip netns del "$ns"
    fi
    ip link del "$veth_host" 2>/dev/null || true
    rm -rf "$root"
    [[ -n $quiet ]] || echo "second host $name removed"
}

stop_libvirtd() {
    local pid
    pid=$(pid_of "$root/run/libvirt/libvirtd.pid") || {
        echo "error: the libvirtd of $name is not running" >&2
        exit 1
    }
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

start_libvirtd() {
    local anchor
    anchor=$(pid_of "$root/run/libvirt/virtlogd.pid") || {
        echo "error: second host $name is not up" >&2
        exit 1
    }
    pid_of "$root/run/libvirt/libvirtd.pid" >/dev/null && return
    # into the namespaces its virtlogd keeps alive
    nsenter -t "$anchor" -m -n libvirtd -d -p /run/libvirt/libvirtd.pid
    wait_ready
}

case $action in
up) up ;;
down) down ;;
stop-libvirtd) stop_libvirtd ;;
start-libvirtd) start_libvirtd ;;
status)
    if running; then print_access; else
        echo "second host $name is not running" >&2
        exit 1
    fi
    ;;
*)
    echo "usage: $0 up|down|status|stop-libvirtd|start-libvirtd [NAME]" >&2
    exit 2
    ;;
esac
