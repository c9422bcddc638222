//! Cluster DNS for processes on this machine.
//!
//! In a cluster the hub reaches a session's pod at `<name>-0.<name>.<namespace>.svc`
//! ([`whatsapp_crds::session_url`]), a name only the operator's objects create. Here every
//! session process gets a loopback address of its own (in 127.128.0.0/9, from a hash of its
//! namespace and name, so a restarted process keeps it) and its name goes into one hosts file;
//! processes that call session pods (the hub) run in a mount namespace of their own that
//! shows that file as `/etc/hosts`, as a pod sees cluster DNS.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The address of the session `name` in `namespace`, with its pod's DNS name registered.
pub fn session_ip(namespace: &str, name: &str) -> Ipv4Addr {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut hasher);
    // 127.128.0.0/9 without the .0 and .255 host octets.
    let h = hasher.finish() as u32;
    let ip = Ipv4Addr::new(127, 128 | ((h >> 16) as u8 & 0x7f), (h >> 8) as u8, 1 + (h as u8 % 254));
    register(&format!("{ip} {}", whatsapp_crds::session_host(namespace, name)));
    ip
}

/// The hosts file, created from this machine's `/etc/hosts` the first time.
fn hosts_file() -> PathBuf {
    let path = std::env::temp_dir().join("whatsapp-operator-cluster-hosts");
    if let Ok(mut file) = std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
        let system = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        file.write_all(system.as_bytes()).expect("writing the cluster hosts file");
    }
    path
}

/// Appends `line` to the hosts file unless it is there (appends of one short line are atomic,
/// so concurrent tests never interleave).
fn register(line: &str) {
    let path = hosts_file();
    let known = std::fs::read_to_string(&path).expect("reading the cluster hosts file");
    if !known.lines().any(|l| l == line) {
        let mut file =
            std::fs::OpenOptions::new().append(true).open(&path).expect("opening the cluster hosts file");
        file.write_all(format!("{line}\n").as_bytes()).expect("writing the cluster hosts file");
    }
}

/// A command that runs `program` seeing the cluster's names: in a user and mount namespace of
/// its own, with the hosts file bound over `/etc/hosts`. The process keeps its pid (each
/// step `exec`s the next), so signals reach it.
pub fn command(program: &Path) -> Command {
    let mut command = Command::new("/usr/bin/unshare");
    command
        .args([
            "--map-root-user",
            "--mount",
            "/bin/sh",
            "-c",
            r#"/usr/bin/mount --bind "$0" /etc/hosts && exec "$@""#,
        ])
        .arg(hosts_file())
        .arg(program);
    command
}
