//! A real Kubernetes API server for the fleet tests: Kubernetes' own
//! kube-apiserver and kube-controller-manager (its garbage collector only),
//! built once from Debian's `kubernetes` source package and cached outside
//! the clone, run on 127.0.0.1 against Debian's etcd, with RBAC and token
//! authentication. Stopped and removed when the [`Cluster`] is dropped.
//!
//! Debian 12 ships no kube-apiserver binary, but its `kubernetes` source
//! package (1.20.2, the one `kubernetes-client` is built from) holds the
//! whole tree with `vendor/`. What the build takes here (ENVIRONMENT.md):
//! Debian's Go, `rsync`, and Debian's reflect2 1.0.2 in place of the
//! vendored 1.0.1, which crashes under Go 1.18+ ("fatal error: fault" in
//! `mapiternext`). About 12 minutes on two cores, once.
//!
//! The tests get the cluster's directory in `CAPPROF_TEST_KUBE`: it holds
//! `admin.kubeconfig` (group `system:masters`) and `node.kubeconfig`, the
//! token of the `capprof/capprof` ServiceAccount that deploy/rbac.yaml
//! binds, as a node daemon would have it.

use std::{
    env,
    fs::{self, File},
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{
    fresh_service_dir, note, print_log_tail, run_checked, spawn_logged, stdout_of, step, terminate,
};

/// The Kubernetes release in Debian 12's `kubernetes` source package.
pub const VERSION: &str = "1.20.2";
/// Where the binaries are cached, unless `CAPPROF_KUBE_CACHE` names
/// another directory.
const DEFAULT_CACHE: &str = "/var/cache/capprof/kube";
const CACHE_VAR: &str = "CAPPROF_KUBE_CACHE";
const BINARIES: &[&str] = &["kube-apiserver", "kube-controller-manager"];
/// Debian packages the build needs, and (etcd, openssl) the runs.
const BUILD_PACKAGES: &[&str] = &["golang-go", "rsync", "golang-github-modern-go-reflect2-dev"];
const RUN_PACKAGES: &[&str] = &["etcd-server", "openssl"];
/// Debian's reflect2, which replaces the vendored copy.
const REFLECT2: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
/// Written when no deb-src entry exists, from debian.sources' own entry.
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/capprof-deb-src.sources";
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The directory the binaries of [`VERSION`] are cached in.
pub fn cache_dir() -> PathBuf {
    env::var_os(CACHE_VAR)
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
        .join(VERSION)
}

/// Builds and caches kube-apiserver and kube-controller-manager unless the
/// cache has them, and installs etcd.
pub fn ensure_built() -> Result<()> {
    step(format_args!("checking kube-apiserver {VERSION}"));
    crate::setup::ensure_packages(RUN_PACKAGES)?;
    let cache = cache_dir();
    if BINARIES.iter().all(|b| runs(&cache.join(b))) {
        note(format_args!("cached in {}", cache.display()));
        return Ok(());
    }
    step(format_args!(
        "building kube-apiserver and kube-controller-manager {VERSION} from Debian's \
         source package into {} (about 12 minutes, once)",
        cache.display()
    ));
    crate::setup::ensure_packages(BUILD_PACKAGES)?;
    ensure_deb_src()?;
    let work = cache.with_file_name(format!("build-{VERSION}"));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let tree = unpack_source(&work)?;
    replace_reflect2(&tree)?;
    let mut make = Command::new("make");
    make.current_dir(&tree)
        .arg(format!("WHAT={}", make_what(BINARIES)))
        .env("CGO_ENABLED", "0")
        .env("HOME", work.join("home"))
        .env("GOPATH", work.join("gopath"))
        .env("GOCACHE", work.join("gocache"));
    run_checked(&mut make).context("building kube-apiserver (make)")?;
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    for binary in BINARIES {
        let built = tree.join("_output/bin").join(binary);
        // Copied under a temporary name and renamed: a cache entry is
        // either whole or absent.
        let partial = cache.join(format!(".{binary}.partial"));
        fs::copy(&built, &partial)
            .with_context(|| format!("copying {} into the cache", built.display()))?;
        fs::rename(&partial, cache.join(binary))?;
    }
    // The tree and Go's caches are 3 GB; the binaries are what is kept.
    let _ = fs::remove_dir_all(&work);
    note(format_args!("cached in {}", cache.display()));
    Ok(())
}

/// make's `WHAT`: `cmd/a cmd/b`.
fn make_what(binaries: &[&str]) -> String {
    binaries
        .iter()
        .map(|b| format!("cmd/{b}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn runs(binary: &Path) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Adds a deb-src entry for Debian's main archive (the suite and keyring of
/// debian.sources' first entry) unless apt already knows the source package.
fn ensure_deb_src() -> Result<()> {
    if showsrc_finds_kubernetes() {
        return Ok(());
    }
    let sources = fs::read_to_string(DEBIAN_SOURCES)
        .with_context(|| format!("reading {DEBIAN_SOURCES} to add its deb-src twin"))?;
    let stanza = deb_src_stanza(&sources)
        .with_context(|| format!("{DEBIAN_SOURCES} has no Debian main entry to copy"))?;
    note(format_args!("adding {DEB_SRC_FILE}"));
    fs::write(DEB_SRC_FILE, stanza).with_context(|| format!("writing {DEB_SRC_FILE}"))?;
    run_checked(Command::new("apt-get").arg("update")).context("apt-get update")?;
    if !showsrc_finds_kubernetes() {
        bail!("apt-get still finds no source package `kubernetes` after adding {DEB_SRC_FILE}");
    }
    Ok(())
}

fn showsrc_finds_kubernetes() -> bool {
    stdout_of(Command::new("apt-cache").args(["showsrc", "kubernetes"]))
        .is_ok_and(|out| out.contains("Package: kubernetes"))
}

/// The first deb822 stanza of `sources` as a `deb-src` entry for its first
/// suite (bookworm, not bookworm-updates), or None.
fn deb_src_stanza(sources: &str) -> Option<String> {
    let stanza = sources
        .split("\n\n")
        .find(|s| s.lines().any(|l| l.trim() == "Types: deb"))?;
    let mut out = String::new();
    for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
        match line.split_once(':') {
            Some(("Types", _)) => out.push_str("Types: deb-src\n"),
            Some(("Suites", suites)) => {
                let first = suites.split_whitespace().next()?;
                out.push_str(&format!("Suites: {first}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Some(out)
}

/// Downloads Debian's source package into `work` and unpacks the upstream
/// tarball; returns the tree.
fn unpack_source(work: &Path) -> Result<PathBuf> {
    run_checked(Command::new("apt-get").current_dir(work).args([
        "source",
        "--download-only",
        "kubernetes",
    ]))
    .context("apt-get source --download-only kubernetes")?;
    let tarball = fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.gz"))
        .context("the source package has no .orig.tar.gz")?;
    let src = work.join("src");
    fs::create_dir_all(&src)?;
    run_checked(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src),
    )
    .context("unpacking the kubernetes source")?;
    let tree = fs::read_dir(&src)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("cmd/kube-apiserver").is_dir())
        .context("no kubernetes tree (cmd/kube-apiserver) in the tarball")?;
    Ok(tree)
}

fn replace_reflect2(tree: &Path) -> Result<()> {
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    note(format_args!(
        "replacing {} with {REFLECT2}",
        vendored.display()
    ));
    fs::remove_dir_all(&vendored).with_context(|| format!("removing {}", vendored.display()))?;
    run_checked(Command::new("cp").arg("-r").arg(REFLECT2).arg(&vendored))?;
    let module = vendored.join("go.mod");
    if module.exists() {
        fs::remove_file(&module)?;
    }
    Ok(())
}

/// `cargo xtask cluster`: a cluster until stdin closes (Ctrl-D).
pub fn serve() -> Result<()> {
    ensure_built()?;
    let cluster = Cluster::start()?;
    println!("CAPPROF_TEST_KUBE={}", cluster.dir().display());
    step("serving until stdin closes (Ctrl-D)");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    Ok(())
}

/// etcd, kube-apiserver and the garbage collector, on 127.0.0.1.
pub struct Cluster {
    dir: PathBuf,
    /// Stopped in reverse order: the controller manager, the API server,
    /// then etcd.
    children: Vec<(&'static str, Child)>,
}

impl Cluster {
    /// Starts a cluster under a temp dir and waits until it is ready.
    pub fn start() -> Result<Self> {
        let dir = fresh_service_dir("kube")?;
        step(format_args!(
            "starting etcd and kube-apiserver {VERSION} in {}",
            dir.display()
        ));
        let mut cluster = Self {
            dir,
            children: Vec::new(),
        };
        cluster.start_etcd_and_apiserver()?;
        cluster.start_garbage_collector()?;
        Ok(cluster)
    }

    /// The directory with the kubeconfigs, as the tests get it in
    /// `CAPPROF_TEST_KUBE`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn start_etcd_and_apiserver(&mut self) -> Result<()> {
        let d = self.dir.clone();
        let [client, peer, secure] = free_ports::<3>()?;
        run_checked(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(d.join("sa.key"))
                .arg("2048"),
        )?;
        run_checked(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(d.join("sa.key"))
                .arg("-out")
                .arg(d.join("sa.pub")),
        )?;
        let (admin, node) = (random_token()?, random_token()?);
        fs::write(
            d.join("tokens.csv"),
            format!(
                "{admin},capprof-test-admin,capprof-test-admin,\"system:masters\"\n\
                 {node},system:serviceaccount:capprof:capprof,capprof-node,\
                 \"system:serviceaccounts,system:serviceaccounts:capprof\"\n"
            ),
        )?;
        let server = format!("https://127.0.0.1:{secure}");
        let ca = d.join("certs/apiserver.crt");
        write_kubeconfig(&d.join("admin.kubeconfig"), &server, &ca, &admin)?;
        write_kubeconfig(&d.join("node.kubeconfig"), &server, &ca, &node)?;

        let etcd_url = format!("http://127.0.0.1:{client}");
        let mut etcd = Command::new("etcd");
        etcd.arg("--data-dir")
            .arg(d.join("etcd"))
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")]);
        self.spawn("etcd", etcd)?;

        let binary = cache_dir().join("kube-apiserver");
        let mut apiserver = Command::new(&binary);
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={secure}"))
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-key-file={}",
                d.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.96.0.0/24")
            .arg("--insecure-port=0");
        // How to start it again: tests/it/fleet.rs stops the API server for
        // 30 s and starts it again with these arguments, and writes the new
        // pid to apiserver.pid, which `drop` stops too.
        let mut line = vec![apiserver.get_program().to_string_lossy().into_owned()];
        line.extend(
            apiserver
                .get_args()
                .map(|a| a.to_string_lossy().into_owned()),
        );
        fs::write(d.join("apiserver.cmd"), line.join("\n") + "\n")?;
        self.spawn("kube-apiserver", apiserver)?;
        if let Some((_, child)) = self.children.last() {
            fs::write(d.join("apiserver.pid"), child.id().to_string())?;
        }
        self.wait_ready()
    }

    /// kube-controller-manager with only its garbage collector: a
    /// CapabilityProfile owned by a Deployment goes when the Deployment does.
    fn start_garbage_collector(&mut self) -> Result<()> {
        let mut gc = Command::new(cache_dir().join("kube-controller-manager"));
        gc.arg(format!(
            "--kubeconfig={}",
            self.dir.join("admin.kubeconfig").display()
        ))
        .args([
            "--controllers=garbagecollector",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            "--secure-port=0",
            "--port=0",
        ]);
        self.spawn("kube-controller-manager", gc)
    }

    fn spawn(&mut self, what: &'static str, mut cmd: Command) -> Result<()> {
        let child = spawn_logged(&mut cmd, &self.dir.join(format!("{what}.log")))
            .with_context(|| format!("could not start {what}"))?;
        self.children.push((what, child));
        Ok(())
    }

    /// Until `/readyz` says ok, or a process has exited.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let kubeconfig = self.dir.join("admin.kubeconfig");
        loop {
            for (what, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    let what = *what;
                    self.print_log_tail(what);
                    bail!("{what} exited during start-up ({status})");
                }
            }
            let ready = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "--raw", "/readyz"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ok"));
            if ready {
                note("kube-apiserver is ready");
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.print_log_tail("kube-apiserver");
                bail!(
                    "kube-apiserver was not ready within {} s",
                    START_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn print_log_tail(&self, what: &str) {
        print_log_tail(&self.dir.join(format!("{what}.log")), 30);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        step("stopping the private kube-apiserver and etcd");
        self.stop_restarted_apiserver();
        while let Some((what, mut child)) = self.children.pop() {
            terminate(&mut child, what, STOP_TIMEOUT);
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            note(format_args!(
                "could not remove {}: {err}",
                self.dir.display()
            ));
        }
    }
}

impl Cluster {
    /// The API server a test started again, if one did: it is not our
    /// child, so `terminate` cannot reach it.
    fn stop_restarted_apiserver(&self) {
        let ours: Vec<u32> = self.children.iter().map(|(_, c)| c.id()).collect();
        let Some(pid) = fs::read_to_string(self.dir.join("apiserver.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|pid| !ours.contains(pid))
        else {
            return;
        };
        let alive = || Path::new(&format!("/proc/{pid}")).exists();
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// `N` distinct ports nothing listens on now. Every listener is held until
/// all are bound: one released at once could be handed out again to the
/// next (it was, once, and etcd and kube-apiserver were given the same
/// port). Another process could still take one before ours binds it; on a
/// test machine that is rare, and the start fails loudly if it happens.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

fn random_token() -> Result<String> {
    let mut bytes = [0_u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) -> Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: capprof-test\n  cluster:\n    \
         server: {server}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    \
         token: {token}\ncontexts:\n- name: capprof-test\n  context:\n    cluster: capprof-test\n    \
         user: user\ncurrent-context: capprof-test\n",
        ca.display()
    );
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod port_tests {
    #[test]
    fn free_ports_are_distinct() {
        for _ in 0..200 {
            let [a, b, c] = super::free_ports::<3>().unwrap();
            assert!(a != b && b != c && a != c, "{a} {b} {c}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_src_twin_of_debian_sources_takes_its_first_suite() {
        let sources = "Types: deb\n# http://snapshot.example/archive\nURIs: http://deb.debian.org/debian\n\
                       Suites: bookworm bookworm-updates\nComponents: main\n\
                       Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                       Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            deb_src_stanza(sources).unwrap(),
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        assert_eq!(deb_src_stanza("Types: deb-src\nSuites: x\n"), None);
    }

    #[test]
    fn make_builds_each_binary_from_cmd() {
        assert_eq!(
            make_what(BINARIES),
            "cmd/kube-apiserver cmd/kube-controller-manager"
        );
    }
}
