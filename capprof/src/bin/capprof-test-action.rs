//! Test helper: performs exactly one privileged action, so that the
//! integration tests know which capability checks to expect. Each action is
//! one syscall (fixtures are prepared by the test, outside the profiled
//! cgroup). Exits 0 when the action had the expected outcome.
//!
//! One more is not an action but a wrapper, run outside the profiled
//! cgroup: `in-overlay LOWER UPPER WORK MERGED CMD…` mounts an overlayfs in
//! a private mount namespace and execs CMD there (`capprof run …`).

use std::{ffi::CString, process::ExitCode};

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in test paths")
}

fn check(ok: bool, what: &str) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("{what}: {}", std::io::Error::last_os_error());
        ExitCode::FAILURE
    }
}

/// `struct __user_cap_header_struct` and `__user_cap_data_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Writes `value` to /proc/sys/`name`, in the caller's namespaces.
fn write_sysctl(name: &str, value: &str) -> bool {
    std::fs::write(format!("/proc/sys/{name}"), value)
        .map_err(|e| eprintln!("{name}: {e}"))
        .is_ok()
}

/// Binds a TCP socket to 0.0.0.0:`port`.
fn bind_tcp(port: u16) -> bool {
    // SAFETY: plain syscalls on a socket we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        fd >= 0
            && libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            ) == 0
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let action = args.first().cloned().unwrap_or_default();
    let ran = match action.as_str() {
        "nothing" => Some(ExitCode::SUCCESS),
        "capset" => Some(capset(&args.get(1).cloned().unwrap_or_default())),
        "mmap-loop" => Some(mmap_loop()),
        "in-overlay" => Some(in_overlay(&args[1..])),
        _ => file_action(&action, &args)
            .or_else(|| net_action(&action, &args))
            .or_else(|| process_action(&action, &args))
            .or_else(|| proof_workload(&action, &args)),
    };
    ran.unwrap_or_else(|| {
        eprintln!("unknown action {action:?}");
        ExitCode::from(2)
    })
}

/// Actions on files and the root: chown, mknod, chroot, write, chmod.
fn file_action(action: &str, args: &[String]) -> Option<ExitCode> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    // SAFETY: each arm is a plain syscall on arguments we own.
    unsafe {
        Some(match action {
            "chown" => check(
                libc::chown(cstr(&arg(1)).as_ptr(), 1000, 1000) == 0,
                "chown",
            ),
            "mknod" => {
                let dev = libc::makedev(1, 3);
                check(
                    libc::mknod(cstr(&arg(1)).as_ptr(), libc::S_IFCHR | 0o600, dev) == 0,
                    "mknod",
                )
            }
            "chroot" => check(libc::chroot(cstr("/").as_ptr()) == 0, "chroot"),
            "write-file" => {
                let fd = libc::open(cstr(&arg(1)).as_ptr(), libc::O_WRONLY);
                check(
                    fd >= 0 && libc::write(fd, b"x".as_ptr().cast(), 1) == 1,
                    "write",
                )
            }
            "chmod" => check(libc::chmod(cstr(&arg(1)).as_ptr(), 0o640) == 0, "chmod"),
            _ => return None,
        })
    }
}

/// Actions on sockets, some in a network namespace of their own.
fn net_action(action: &str, args: &[String]) -> Option<ExitCode> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    // SAFETY: each arm is a plain syscall on arguments we own.
    unsafe {
        Some(match action {
            "raw-socket" => check(
                libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) >= 0,
                "socket",
            ),
            "bind-low-port" => {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let port: u16 = arg(1).parse().unwrap_or(600);
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                    },
                    sin_zero: [0; 8],
                };
                let ok = libc::bind(
                    fd,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                ) == 0;
                check(ok, "bind")
            }
            "bind-in-netns" => {
                // A network namespace of our own, with the sysctl as a
                // container runtime would set it, then a bind.
                let port: u16 = arg(1).parse().unwrap_or(600);
                let ok = libc::unshare(libc::CLONE_NEWNET) == 0
                    && write_sysctl("net/ipv4/ip_unprivileged_port_start", &arg(2))
                    && bind_tcp(port);
                check(ok, "unshare+sysctl+bind")
            }
            "ping-socket-in-netns" => {
                // As iputils ping does: an ICMP datagram socket, and a raw
                // one when ping_group_range shuts the caller out.
                let range = arg(1);
                let ok = libc::unshare(libc::CLONE_NEWNET) == 0
                    && (range.is_empty() || write_sysctl("net/ipv4/ping_group_range", &range))
                    && (libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) >= 0
                        || (*libc::__errno_location() == libc::EACCES
                            && libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
                                >= 0));
                check(ok, "unshare+sysctl+socket")
            }
            _ => return None,
        })
    }
}

/// Actions on this process: ids, signals, hostname, priority, limits.
fn process_action(action: &str, args: &[String]) -> Option<ExitCode> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    // SAFETY: each arm is a plain syscall on arguments we own.
    unsafe {
        Some(match action {
            "setuid" => check(libc::setuid(1000) == 0, "setuid"),
            "setgid" => check(libc::setgid(1000) == 0, "setgid"),
            "kill" => check(libc::kill(arg(1).parse().unwrap_or(0), 0) == 0, "kill"),
            "sethostname" => {
                let ok = libc::unshare(libc::CLONE_NEWUTS) == 0
                    && libc::sethostname(b"capprof".as_ptr().cast(), 7) == 0;
                check(ok, "unshare+sethostname")
            }
            "nice" => {
                *libc::__errno_location() = 0;
                let ok = libc::nice(-1) != -1 || *libc::__errno_location() == 0;
                check(ok, "nice")
            }
            "raise-rlimit" => {
                // Expected to be refused: root here lacks CAP_SYS_RESOURCE.
                let mut rl = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
                let raised = libc::rlimit {
                    rlim_cur: rl.rlim_cur,
                    rlim_max: rl.rlim_max + 1,
                };
                let refused = libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0
                    && *libc::__errno_location() == libc::EPERM;
                check(refused, "setrlimit was not refused")
            }
            _ => return None,
        })
    }
}

/// The proof tests' workloads, which do what real programs do.
fn proof_workload(action: &str, args: &[String]) -> Option<ExitCode> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    // SAFETY: each arm is a plain syscall on arguments we own.
    unsafe {
        Some(match action {
            // libcap's way of dropping privileges (iputils ping does it):
            // capset down to CAP_CHOWN alone, then chown. capset checks
            // CAP_SETPCAP every time, needed or not.
            "drop-caps-then-chown" => {
                let mut header = [0x2008_0522u32, 0];
                let keep = 1u32; // CAP_CHOWN is capability 0
                let data = [keep, keep, 0, 0, 0, 0];
                let dropped =
                    libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) == 0;
                check(
                    dropped && libc::chown(cstr(&arg(1)).as_ptr(), 1000, 1000) == 0,
                    "capset+chown",
                )
            }
            "drop-keeping" => drop_keeping(&arg(1)),
            // What sshd and PAM do at login: send an audit record, and carry
            // on when the kernel refuses it.
            "audit-login" => {
                audit_login();
                ExitCode::SUCCESS
            }
            _ => return None,
        })
    }
}

/// squid's way of dropping root: keep the capabilities across
/// setgid()+setuid() (PR_SET_KEEPCAPS), then capset() down to
/// the one capability bit `bit` alone. If that capset() is
/// refused, say so and carry on, as squid does: the process
/// then still holds what it meant to drop.
fn drop_keeping(bit: &str) -> ExitCode {
    // SAFETY: plain syscalls on buffers this function owns.
    unsafe {
        let bit: u32 = bit.parse().unwrap_or(10);
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::setgid(1000) != 0
            || libc::setuid(1000) != 0
        {
            return check(false, "keepcaps+setgid+setuid");
        }
        let mut header = [0x2008_0522u32, 0];
        let mut data = [0u32; 6];
        let (word, mask) = ((bit / 32) as usize * 3, 1 << (bit % 32));
        data[word] = mask; // effective
        data[word + 1] = mask; // permitted
        if libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) != 0 {
            eprintln!("capset: {} (carrying on)", std::io::Error::last_os_error());
        }
        ExitCode::SUCCESS
    }
}

/// Many anonymous mmaps: each makes the kernel's advisory CAP_SYS_ADMIN
/// check (`security_vm_enough_memory_mm`).
fn mmap_loop() -> ExitCode {
    // SAFETY: plain syscalls on memory this function maps.
    unsafe {
        for _ in 0..2000 {
            let len = 1 << 16;
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return check(false, "mmap");
            }
            libc::munmap(p, len);
        }
        ExitCode::SUCCESS
    }
}

/// capset(2) to the permitted and effective sets named by `sets`
/// (`keep:CAP`, `same`, `drop`), as libcap does.
fn capset(sets: &str) -> ExitCode {
    // SAFETY: plain syscalls on buffers this function owns.
    unsafe {
        let mut header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) != 0 {
            return check(false, "capget");
        }
        match sets.split_once(':') {
            Some(("keep", cap)) => {
                let bit: u32 = cap.parse().unwrap_or(10);
                data = [CapData::default(); 2];
                let (word, mask) = ((bit / 32) as usize, 1 << (bit % 32));
                data[word].permitted = mask;
                data[word].effective = mask;
            }
            _ if sets == "drop" => data = [CapData::default(); 2],
            _ => {} // `same`: the sets as they are.
        }
        check(
            libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) == 0,
            "capset",
        )
    }
}

/// `LOWER UPPER WORK MERGED CMD…`: a private mount namespace with an
/// overlayfs of LOWER (read-only) and UPPER at MERGED, then CMD in it. The
/// overlayfs keeps this process's credentials as its mounter's, and copies
/// files up with them whoever writes.
fn in_overlay(args: &[String]) -> ExitCode {
    let [lower, upper, work, merged, cmd @ ..] = args else {
        eprintln!("in-overlay LOWER UPPER WORK MERGED CMD…");
        return ExitCode::from(2);
    };
    if cmd.is_empty() {
        eprintln!("in-overlay: no command");
        return ExitCode::from(2);
    }
    let options = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    // SAFETY: plain syscalls on arguments we own; this process has one
    // thread, as unshare(CLONE_NEWNS) requires.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return check(false, "unshare(CLONE_NEWNS)");
        }
        let private = libc::mount(
            std::ptr::null(),
            cstr("/").as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        if private != 0 {
            return check(false, "making / private");
        }
        let mounted = libc::mount(
            cstr("overlay").as_ptr(),
            cstr(merged).as_ptr(),
            cstr("overlay").as_ptr(),
            0,
            cstr(&options).as_ptr().cast(),
        );
        if mounted != 0 {
            return check(false, "mount -t overlay (is overlayfs available?)");
        }
    }
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&cmd[0]).args(&cmd[1..]),
    );
    eprintln!("in-overlay: {}: {err}", cmd[0]);
    ExitCode::from(127)
}

/// Sends an `AUDIT_USER_LOGIN` record on the audit netlink socket and reads
/// the kernel's answer; a refusal is reported and ignored, as PAM does.
fn audit_login() {
    const NETLINK_AUDIT: i32 = 9;
    const AUDIT_USER_LOGIN: u16 = 1112;
    let text = b"op=login acct=\"app\" exe=\"/capprof-test-action\" res=success\0";
    let len = 16 + text.len();
    let mut msg = vec![0u8; len.next_multiple_of(4)];
    msg[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&AUDIT_USER_LOGIN.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16..len].copy_from_slice(text);
    // SAFETY: plain socket calls on buffers we own.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_AUDIT);
        if fd < 0 {
            eprintln!(
                "audit: no audit socket: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        let sent = libc::sendto(
            fd,
            msg.as_ptr().cast(),
            len,
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        );
        if sent < 0 {
            eprintln!("audit: {}", std::io::Error::last_os_error());
            return;
        }
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let mut ack = [0u8; 256];
        let n = libc::recv(fd, ack.as_mut_ptr().cast(), ack.len(), 0);
        // NLMSG_ERROR (2) carries the verdict after the 16-byte header.
        if n >= 20 && u16::from_ne_bytes([ack[4], ack[5]]) == 2 {
            let errno = -i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
            if errno != 0 {
                eprintln!(
                    "audit: the login was not audited: {}",
                    std::io::Error::from_raw_os_error(errno)
                );
            }
        }
        libc::close(fd);
    }
}
