//! The workload bench's image, built with no registry like the test
//! images (`crate::image`): the busybox rootfs, Debian's nginx with its
//! libraries and a minimal configuration serving one small file, and
//! capprof-bench itself (for `capprof-bench churn`).

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

use crate::{
    engine::Engine,
    image::{TempDir, build_rootfs, copy_with_libraries, import},
    util::{note, step},
};

pub const IMAGE: &str = "capprof-bench-workload:1";
/// Where nginx listens (the container uses the host's network, so that
/// wrk on the host reaches it with no bridge).
pub const NGINX_PORT: u16 = 18088;
pub const NGINX: &str = "/usr/sbin/nginx";
pub const NGINX_CONF: &str = "/etc/nginx/bench.conf";
pub const BENCH_BIN: &str = "/opt/capprof-bench";

/// One worker, access log off, a 612-byte page: what a small static site or
/// a health endpoint serves.
fn nginx_conf() -> String {
    format!(
        "user nobody nobody;
worker_processes 1;
daemon off;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        root /srv/www;
        index index.html;
    }}
}}
"
    )
}

/// Builds and imports [`IMAGE`] (always: capprof-bench may have changed).
pub fn ensure(engine: &Engine, bench: &Path) -> Result<()> {
    let rootfs =
        TempDir(std::env::temp_dir().join(format!("capprof-bench-rootfs-{}", std::process::id())));
    step(format_args!(
        "building the workload image {IMAGE} in {}",
        rootfs.0.display()
    ));
    build_rootfs(&rootfs.0)?;
    copy_with_libraries(&rootfs.0, Path::new(NGINX), Path::new(NGINX))?;
    copy_with_libraries(&rootfs.0, bench, Path::new(BENCH_BIN))?;
    let conf = rootfs.0.join(NGINX_CONF.trim_start_matches('/'));
    fs::create_dir_all(conf.parent().context("a path has a parent")?)?;
    fs::write(&conf, nginx_conf()).context("writing the nginx configuration")?;
    let www = rootfs.0.join("srv/www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("index.html"), index_html()).context("writing index.html")?;
    note(format_args!(
        "{NGINX} and {BENCH_BIN} with their libraries; nginx serves /srv/www on 127.0.0.1:{NGINX_PORT}"
    ));
    import(engine, &rootfs.0, IMAGE, &[])
}

fn index_html() -> String {
    let mut page =
        String::from("<!DOCTYPE html>\n<html><head><title>capprof bench</title></head><body>\n");
    while page.len() < 580 {
        page.push_str("<p>capprof workload bench</p>\n");
    }
    page.push_str("</body></html>\n");
    page
}
