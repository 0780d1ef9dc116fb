#!/bin/sh
# capprof's demo workload (`cargo xtask demo` runs it as root under
# `capprof run`). Each step needs one capability, named beside it; the
# first step needs none.
set -eu

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

ls / >/dev/null                  # plain work: no capability
echo "hello" >"$dir/file"
chown 1000:1000 "$dir/file"      # CAP_CHOWN (file goes to another uid)
mknod "$dir/null" c 1 3          # CAP_MKNOD (character device)
chroot / true                    # CAP_SYS_CHROOT

echo "sample workload done" >&2
