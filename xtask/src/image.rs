//! The container tests' images, built with no registry: a rootfs of
//! Debian's static busybox and its applet links, imported with `docker
//! import`; and the same with two real programs that matter to profiles
//! and that busybox lacks, copied from the host with their libraries.

use std::{
    fs::{self, Permissions},
    os::unix::fs::{PermissionsExt as _, chown, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    engine::Engine,
    util::{display, note, stdout_of, step},
};

/// The image the container tests run, exported to them as `CAPPROF_TEST_IMAGE`.
pub const TEST_IMAGE: &str = "capprof-busybox:test";
/// Bumped whenever the rootfs below changes, and kept in the image's
/// `capprof.image-version` label, so that an engine holding an older build
/// gets the new one.
const IMAGE_VERSION: &str = "2";
const VERSION_LABEL: &str = "capprof.image-version";

/// The busybox image plus `capsh` (Debian's libcap2-bin), which keeps
/// capabilities through capset() as daemons that drop root do, iputils
/// `ping` (iputils-ping) at /opt/iputils/ping, which tries an ICMP datagram
/// socket first and falls back to a raw one, and util-linux's `setpriv`
/// (busybox's has no `--reuid`), which raises its effective set with
/// capset() after setresuid() and then execs a program that loses it all.
/// Exported to the tests as `CAPPROF_TOOLS_IMAGE`.
pub const TOOLS_IMAGE: &str = "capprof-tools:test";
/// Bumped whenever [`TOOLS`] changes, like [`IMAGE_VERSION`].
const TOOLS_VERSION: &str = "3";

/// The host programs in [`TOOLS_IMAGE`]: (host path, path in the image).
const TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/capsh", "/usr/sbin/capsh"),
    ("/usr/bin/ping", "/opt/iputils/ping"),
    ("/usr/bin/setpriv", "/usr/bin/setpriv"),
];

/// Debian's busybox-static.
const HOST_BUSYBOX: &str = "/bin/busybox";
/// Where the image keeps busybox; every applet links here.
const IMAGE_BUSYBOX: &str = "/usr/bin/busybox";

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";
const GROUP: &str = "\
root:x:0:
app:x:1000:
nobody:x:65534:
";

/// Imports [`TEST_IMAGE`] into `engine` unless it is already there.
pub fn ensure_test_image(engine: &Engine) -> Result<()> {
    step(format_args!("checking the test image {TEST_IMAGE}"));
    match engine.image_label(TEST_IMAGE, VERSION_LABEL) {
        Some(version) if version == IMAGE_VERSION => {
            note("already present");
            return Ok(());
        }
        Some(version) => note(format_args!(
            "present as version {version:?}, rebuilding as version {IMAGE_VERSION}"
        )),
        None => {}
    }
    let rootfs =
        TempDir(std::env::temp_dir().join(format!("capprof-rootfs-{}", std::process::id())));
    step(format_args!(
        "building the busybox rootfs in {}",
        rootfs.0.display()
    ));
    build_rootfs(&rootfs.0)?;
    step(format_args!("importing it as {TEST_IMAGE}"));
    import(engine, &rootfs.0, TEST_IMAGE, &test_image_changes())
}

/// Imports [`TOOLS_IMAGE`] into `engine` unless it is already there.
pub fn ensure_tools_image(engine: &Engine) -> Result<()> {
    let changes = [
        r#"CMD ["/bin/sh"]"#.to_owned(),
        format!("LABEL {VERSION_LABEL}={TOOLS_VERSION}"),
    ];
    ensure_built(
        engine,
        (TOOLS_IMAGE, Some(TOOLS_VERSION)),
        "tools",
        &changes,
        |root| {
            for (host, inside) in TOOLS {
                copy_with_libraries(root, Path::new(host), Path::new(inside))?;
                note(format_args!("{host} as {inside}, with its libraries"));
            }
            Ok(())
        },
    )
}

/// Imports `name` into `engine` unless it is already there (with
/// `version` in its label, when given): the busybox rootfs, with what
/// `fill` adds to it, built in a temporary directory.
fn ensure_built(
    engine: &Engine,
    (name, version): (&str, Option<&str>),
    tag: &str,
    changes: &[String],
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    step(format_args!("checking the test image {name}"));
    match (engine.image_label(name, VERSION_LABEL), version) {
        (Some(found), Some(want)) if found != want => note(format_args!(
            "present as version {found:?}, rebuilding as version {want}"
        )),
        (Some(_), _) => {
            note("already present");
            return Ok(());
        }
        (None, _) => {}
    }
    let rootfs =
        TempDir(std::env::temp_dir().join(format!("capprof-{tag}-{}", std::process::id())));
    step(format_args!(
        "building the {tag} rootfs in {}",
        rootfs.0.display()
    ));
    build_rootfs(&rootfs.0)?;
    fill(&rootfs.0)?;
    step(format_args!("importing it as {name}"));
    import(engine, &rootfs.0, name, changes)
}

/// Debian's nginx as a Debian container has it: the host's nginx-light
/// binary and modules with their libraries, its `/etc/nginx` (sites-enabled
/// default on port 80, `user www-data`), `/usr/share/nginx`, `/var/www/html`,
/// and what the package's postinst makes (`/var/lib/nginx`, and
/// `/var/log/nginx`, root:adm, with its two logs, www-data:adm 0640). On
/// overlay2 its start copies files up with borrowed credentials, which is
/// what once put SYS_ADMIN in its profile.
/// Exported to the tests as `CAPPROF_NGINX_IMAGE`.
pub const NGINX_IMAGE: &str = "capprof-nginx:test";

/// Imports [`NGINX_IMAGE`] into `engine` unless it is already there.
pub fn ensure_nginx_image(engine: &Engine) -> Result<()> {
    let changes = [r#"CMD ["/usr/sbin/nginx", "-g", "daemon off;"]"#.to_owned()];
    ensure_built(engine, (NGINX_IMAGE, None), "nginx", &changes, nginx_rootfs)
}

/// Adds Debian's nginx to the busybox rootfs at `root`.
fn nginx_rootfs(root: &Path) -> Result<()> {
    copy_with_libraries(
        root,
        Path::new("/usr/sbin/nginx"),
        Path::new("/usr/sbin/nginx"),
    )?;
    // Dynamic modules, when the package has any (nginx-light pulls in
    // libnginx-mod-http-echo, which modules-enabled loads).
    let modules = Path::new("/usr/lib/nginx/modules");
    for module in fs::read_dir(modules).into_iter().flatten() {
        let module = module?.path();
        copy_with_libraries(root, &module, &module)?;
    }
    // The package's files as they are, symlinks (sites-enabled, modules)
    // and modes kept.
    for tree in ["/etc/nginx", "/usr/share/nginx", "/var/www/html"] {
        let dest = root.join(tree.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().context("a path has a parent")?)?;
        let status = Command::new("cp")
            .args(["-a", tree])
            .arg(&dest)
            .status()
            .with_context(|| format!("cp -a {tree}"))?;
        if !status.success() {
            bail!("cp -a {tree} {} failed ({status})", dest.display());
        }
    }
    make_dir(&root.join("var/lib/nginx"), 0o755, None)?;
    let logs = root.join("var/log/nginx");
    make_dir(&logs, 0o755, None)?;
    chown(&logs, Some(0), Some(ADM_GID)).context("chown /var/log/nginx")?;
    // As nginx-common's postinst leaves them on a fresh install: nginx's
    // master, root, opens them for writing, which takes DAC_OVERRIDE.
    for log in ["access.log", "error.log"] {
        let path = logs.join(log);
        fs::write(&path, "").with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, Permissions::from_mode(0o640))?;
        chown(&path, Some(WWW_DATA), Some(ADM_GID))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    make_dir(&root.join("run"), 0o755, None)?;
    make_dir(&root.join("var/lock"), 0o755, None)?;
    let etc = root.join("etc");
    fs::write(
        etc.join("passwd"),
        format!("{PASSWD}www-data:x:{WWW_DATA}:{WWW_DATA}:www-data:/var/www:/usr/sbin/nologin\n"),
    )
    .context("writing /etc/passwd")?;
    fs::write(
        etc.join("group"),
        format!("{GROUP}adm:x:{ADM_GID}:\nwww-data:x:{WWW_DATA}:\n"),
    )
    .context("writing /etc/group")?;
    note(format_args!(
        "nginx-light with Debian's configuration; user www-data ({WWW_DATA}), group adm ({ADM_GID})"
    ));
    Ok(())
}

/// Debian's `adm` group, which owns `/var/log/nginx`.
const ADM_GID: u32 = 4;
/// Debian's `www-data`, nginx's workers' user.
const WWW_DATA: u32 = 33;

/// The Dockerfile instructions of the test images.
fn test_image_changes() -> Vec<String> {
    vec![
        r#"CMD ["/bin/sh"]"#.to_owned(),
        format!("LABEL {VERSION_LABEL}={IMAGE_VERSION}"),
    ]
}

/// Copies the dynamically linked `program` into `root` at `inside`, and
/// the shared libraries `ldd` names at their own paths. Plain copies: file
/// capabilities (ping's cap_net_raw) stay behind, so the image's root
/// runs it with the container's capabilities only.
pub(crate) fn copy_with_libraries(root: &Path, program: &Path, inside: &Path) -> Result<()> {
    if !program.exists() {
        bail!(
            "{} is missing (cargo xtask setup installs libcap2-bin and iputils-ping; \
             cargo build --release -p capprof builds capprof)",
            program.display()
        );
    }
    let mut files = vec![(program.to_path_buf(), inside.to_path_buf())];
    let libraries = stdout_of(Command::new("ldd").arg(program))
        .with_context(|| format!("ldd {}", program.display()))?;
    // `libcap.so.2 => /lib/x86_64-linux-gnu/libcap.so.2 (0x…)` and
    // `/lib64/ld-linux-x86-64.so.2 (0x…)`.
    for path in libraries
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        files.push((PathBuf::from(path), PathBuf::from(path)));
    }
    for (from, to) in files {
        let dest = root.join(to.strip_prefix("/").unwrap_or(&to));
        let dir = dest.parent().context("a file path has a parent")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::copy(&from, &dest)
            .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    }
    Ok(())
}

/// Lays out a busybox rootfs: the binary, its applet links, users and /tmp.
pub(crate) fn build_rootfs(root: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing stale {}", root.display()))?;
    }
    let busybox = root.join(IMAGE_BUSYBOX.trim_start_matches('/'));
    let usr_bin = busybox.parent().context("busybox path has no parent")?;
    fs::create_dir_all(usr_bin).with_context(|| format!("creating {}", usr_bin.display()))?;
    fs::copy(HOST_BUSYBOX, &busybox).with_context(|| {
        format!("copying {HOST_BUSYBOX} (apt-get install busybox-static) into the rootfs")
    })?;

    // `--list-full` names each applet with its usual directory (bin/sh,
    // usr/bin/env, sbin/ip …).
    let applets = stdout_of(Command::new(HOST_BUSYBOX).arg("--list-full"))
        .context("listing busybox applets")?;
    let mut linked = 0_usize;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = root.join(applet);
        // Linking the applet named `busybox` would replace the binary with a
        // link to itself.
        if link.file_name().is_some_and(|name| name == "busybox")
            || fs::symlink_metadata(&link).is_ok()
        {
            continue;
        }
        let dir = link.parent().context("applet path has no parent")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        symlink(IMAGE_BUSYBOX, &link).with_context(|| format!("linking {}", link.display()))?;
        linked += 1;
    }
    if !root.join("bin/sh").exists() {
        bail!("busybox has no sh applet; is {HOST_BUSYBOX} Debian's busybox-static?");
    }
    note(format_args!("linked {linked} applets to {IMAGE_BUSYBOX}"));

    let etc = root.join("etc");
    fs::create_dir_all(&etc).context("creating /etc in the rootfs")?;
    fs::write(etc.join("passwd"), PASSWD).context("writing /etc/passwd")?;
    fs::write(etc.join("group"), GROUP).context("writing /etc/group")?;
    make_dir(&root.join("tmp"), 0o1777, None)?;
    make_dir(&root.join("root"), 0o700, None)?;
    make_dir(&root.join("home/app"), 0o755, Some(1000))?;
    note("users: root (0), app (1000), nobody (65534); /tmp is 1777");
    image_fixtures(root)
}

/// Files and directories that come with the image, for workloads that
/// change them: on overlay2 each such change copies the file (or its
/// directory) up from a lower layer, which the kernel does with the
/// mounter's credentials. Ownership and modes are chosen so that root in the
/// container needs a known capability, or none:
/// - `/srv/img` (root, 0755): creating or mkdir'ing in it needs nothing;
/// - `/srv/img/root-file` (root, 0644): writing needs nothing, chown to
///   another uid needs CHOWN;
/// - `/srv/img/app-file` (app, 0600): writing needs DAC_OVERRIDE;
/// - `/srv/img/appdir` (app, 0755): creating a file in it needs DAC_OVERRIDE.
fn image_fixtures(root: &Path) -> Result<()> {
    let img = root.join("srv/img");
    make_dir(&img, 0o755, None)?;
    make_dir(&img.join("appdir"), 0o755, Some(1000))?;
    for (name, mode, owner) in [("root-file", 0o644, 0), ("app-file", 0o600, 1000)] {
        let path = img.join(name);
        fs::write(&path, "from the image\n")
            .with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        chown(&path, Some(owner), Some(owner))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    note("fixtures: /srv/img/{root-file, app-file, appdir}");
    Ok(())
}

pub(crate) fn make_dir(dir: &Path, mode: u32, owner: Option<u32>) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Set explicitly: create_dir_all's mode is filtered by the umask.
    fs::set_permissions(dir, Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    if let Some(id) = owner {
        chown(dir, Some(id), Some(id)).with_context(|| format!("chown {}", dir.display()))?;
    }
    Ok(())
}

/// `tar -C ROOTFS -c . | docker import --change … - NAME`.
pub(crate) fn import(engine: &Engine, rootfs: &Path, name: &str, changes: &[String]) -> Result<()> {
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped());
    let mut import = engine.docker();
    import.arg("import");
    for change in changes {
        import.args(["--change", change]);
    }
    import.args(["-", name]);
    note(format_args!("$ {} | {}", display(&tar), display(&import)));

    let mut tar = tar.spawn().context("could not start tar")?;
    let tar_out = tar.stdout.take().context("tar has no stdout")?;
    let import_status = import
        .stdin(tar_out)
        .stdout(Stdio::null())
        .status()
        .context("could not start docker import");
    let tar_status = tar.wait().context("waiting for tar")?;
    let import_status = import_status?;
    if !tar_status.success() {
        bail!("tar of {} failed ({tar_status})", rootfs.display());
    }
    if !import_status.success() {
        bail!("docker import of {name} failed ({import_status})");
    }
    Ok(())
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            note(format_args!("could not remove {}: {err}", self.0.display()));
        }
    }
}
