#!/bin/sh
# capprof's demo workload. `cargo xtask demo` runs it as root in a busybox
# container named capprof-demo (mounted at /sample.sh, with --network none)
# while `capprof record` watches; `capprof run -- /bin/sh demo/sample.sh`
# profiles it on the host. Each step needs one capability, named beside it;
# the first step needs none. Any failure stops it with a non-zero status.
set -eu

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

ls / >/dev/null                  # plain work: no capability
echo "hello" >"$dir/file"
chown 1000:1000 "$dir/file"      # CAP_CHOWN (file goes to another uid)
mknod "$dir/null" c 1 3          # CAP_MKNOD (character device)
chroot / true                    # CAP_SYS_CHROOT
busybox ping -c 1 -W 1 127.0.0.1 >/dev/null  # CAP_NET_RAW (a raw ICMP socket)

echo "sample workload done" >&2
