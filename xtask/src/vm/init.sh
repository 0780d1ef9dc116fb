#!/bin/sh
# PID 1 of capprof's VM tests, run by busybox's ash (xtask/src/vm/).
#
# Mounts what capprof needs, asks `capprof doctor` what it would choose, runs
# the root integration tests once per backend named on the kernel command
# line (capprof.backends=fexit,kprobe), and powers off. The host reads the
# CAPPROF-VM-* markers, which always start a line.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# The console is a tty; keep colour codes out of the log.
export NO_COLOR=1
mark() { echo "CAPPROF-VM-$*"; }

. /etc/capprof-vm.env

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
case "$TEST_EXE" in
    # A tmpfs would hide binaries built under /tmp; the rootfs is writable.
    /tmp/*) mark "NOTE: the tests live under /tmp; no tmpfs mounted there" ;;
    *) mount -t tmpfs -o mode=1777 tmpfs /tmp ;;
esac
mount -t cgroup2 cgroup2 /sys/fs/cgroup || mark "NOTE: cgroup2 could not be mounted"
mount -t bpf bpf /sys/fs/bpf || mark "NOTE: bpffs could not be mounted"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || mark "NOTE: no tracefs"
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null || mark "NOTE: no securityfs"
# The low-port test binds 127.0.0.1.
ip link set lo up || mark "NOTE: lo could not be brought up"
# The copy-up test mounts an overlayfs; Debian builds it as a module, which
# the initramfs carries for each kernel (xtask/src/vm/kernel.rs).
if ! grep -qw overlay /proc/filesystems; then
    module=/lib/modules/$(uname -r)/overlay.ko
    if [ -f "$module" ]; then
        insmod "$module" || mark "NOTE: insmod $module failed"
    else
        mark "NOTE: no overlay module for $(uname -r) and no overlayfs built in"
    fi
fi
echo "overlayfs: $(grep -w overlay /proc/filesystems || echo absent)"

backends=
filter=
for word in $(cat /proc/cmdline); do
    case "$word" in
        capprof.backends=*) backends=$(echo "${word#*=}" | tr , ' ') ;;
        capprof.filter=*) filter=${word#*=} ;;
    esac
done

mark "BOOTED: $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)s"
echo "lsm: $(cat /sys/kernel/security/lsm 2>/dev/null)"

# CI's root lacks CAP_SYS_RESOURCE (ENVIRONMENT.md), and the tests rely on
# that for a refused check; the guest's root gets the same capability sets.
# util-linux's setpriv drops it from the bounding set before the exec.
# By full path: this busybox's ash would run its own setpriv applet.
like_ci() {
    /usr/bin/setpriv --bounding-set -sys_resource "$@"
}
if ! like_ci true; then
    mark "NOTE: setpriv cannot drop CAP_SYS_RESOURCE; running with every capability"
    like_ci() { "$@"; }
fi
echo "tests run with $(like_ci grep CapEff /proc/self/status)"

mark "DOCTOR-BEGIN"
like_ci "$CAPPROF" doctor --format json
mark "DOCTOR-END: exit $?"

# What the BPF-LSM hook can see, for the log: calibration triggers an
# audited CAP_SYS_NICE check and an mmap's advisory CAP_SYS_ADMIN probe; the
# hook should see only the first.
case " $backends " in
    *" lsm "*)
        echo "lsm backend, as doctor sees it:"
        CAPPROF_LOG=debug like_ci "$CAPPROF" doctor --backend lsm 2>&1 |
            grep -E "calibration:|^backend|^classify|bpf lsm|load "
        ;;
esac

# Every integration test is in one executable (capprof/tests/it); the guest
# runs its run_actions module, or the tests there whose name contains
# $filter. Each full name is a filter of its own: libtest runs a test that
# contains any of them, which here is exactly the tests listed.
tests=
for name in $("$TEST_EXE" --list 2>/dev/null | sed -n 's/^\(run_actions::[^ ]*\): test$/\1/p'); do
    case "${name#run_actions::}" in
        *"$filter"*) tests="$tests $name" ;;
    esac
done
if [ -z "$tests" ]; then
    mark "NOTE: no run_actions test matches '$filter'"
    # A name no test has: run nothing, rather than every module.
    tests="--exact run_actions::"
fi

for backend in $backends; do
    mark "PASS-BEGIN: $backend"
    export CAPPROF_BACKEND="$backend"
    # The tests need root, so they are #[ignore]d for a plain `cargo test`.
    # $tests is unquoted: one word per name.
    like_ci "$TEST_EXE" --test-threads=1 --include-ignored --color never --skip python $tests
    rc=$?
    if [ "$rc" -eq 0 ]; then
        mark "RESULT: $backend PASS"
    else
        mark "RESULT: $backend FAIL (exit $rc)"
    fi
done

mark "DONE: uptime $(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
# If poweroff could not: sysrq, and as a last resort PID 1 exits and the
# kernel panics, which panic=-1 with qemu's -no-reboot turns into an exit.
echo o >/proc/sysrq-trigger
sleep 5
