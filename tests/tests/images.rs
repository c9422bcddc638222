//! The product's images as `tests/images/build.sh` builds them from the Dockerfiles: who they
//! run as, what they start, and what they must not carry (a shell or a package manager in the
//! distroless ones). Their sizes are printed. How they run is the real-node lane's part
//! (`realnode.rs`).

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use whatsapp_tests::images;

/// A file of an image archive (`docker-archive`: uncompressed), as text.
fn member(archive: &Path, name: &str) -> String {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg(name).output().unwrap();
    assert!(out.status.success(), "{name} in {}", archive.display());
    String::from_utf8(out.stdout).unwrap()
}

/// The image's configuration and the paths in all its layers.
fn inspect(archive: &Path) -> (Value, Vec<String>) {
    let manifest: Value = serde_json::from_str(&member(archive, "manifest.json")).unwrap();
    let config: Value =
        serde_json::from_str(&member(archive, manifest[0]["Config"].as_str().unwrap())).unwrap();
    let mut paths = Vec::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let list = Command::new("sh")
            .arg("-c")
            .arg(r#"tar -xOf "$0" "$1" | tar -t"#)
            .arg(archive)
            .arg(layer.as_str().unwrap())
            .output()
            .unwrap();
        assert!(list.status.success());
        paths.extend(
            String::from_utf8(list.stdout).unwrap().lines().map(|p| p.trim_start_matches("./").to_string()),
        );
    }
    (config["config"].clone(), paths)
}

#[test]
fn the_images_run_as_their_users_and_the_distroless_ones_carry_no_shell() {
    let archives = images::archives().unwrap();
    for archive in &archives {
        let name = archive.file_stem().unwrap().to_str().unwrap();
        let size = std::fs::metadata(archive).unwrap().len();
        println!("{name}: {:.1} MiB (uncompressed)", size as f64 / 1048576.0);
    }
    for (name, user, entrypoint) in [
        ("whatsapp-operator", "65532:65532", vec!["/usr/local/bin/whatsapp-operator"]),
        ("whatsapp-hub", "65532:65532", vec!["/usr/local/bin/whatsapp-hub"]),
        ("whatsapp-session", "10001:10001", vec!["/usr/bin/tini", "--", "/usr/local/bin/whatsapp-session"]),
    ] {
        let archive = archives.iter().find(|a| a.file_stem().is_some_and(|s| s == name)).unwrap();
        let (config, paths) = inspect(archive);
        assert_eq!(config["User"], user, "{name}");
        assert_eq!(config["Entrypoint"], serde_json::json!(entrypoint), "{name}");
        let has = |path: &str| paths.iter().any(|p| p == path);
        assert!(has(entrypoint.last().unwrap().trim_start_matches('/')), "{name}: its binary");
        let shells = ["bin/sh", "bin/bash", "bin/dash", "usr/bin/sh", "usr/bin/bash", "usr/bin/dash"];
        let package_managers = ["usr/bin/dpkg", "usr/bin/apt", "usr/bin/apt-get"];
        if name == "whatsapp-session" {
            // Debian slim with both browsers; HOME in the in-memory /tmp (the root is read-only).
            assert!(
                has("usr/lib/chromium/chromium-headless-shell") && has("usr/lib/chromium/chromium"),
                "{name}"
            );
            let env: Vec<&str> = config["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            assert!(env.contains(&"HOME=/tmp"), "{env:?}");
        } else {
            // Distroless: glibc and the binary, nothing to run a command with.
            for path in shells.iter().chain(&package_managers) {
                assert!(!has(path), "{name} carries {path}");
            }
            assert!(paths.iter().any(|p| p.ends_with("libc.so.6")), "{name}: glibc");
            assert!(has("etc/ssl/certs/ca-certificates.crt"), "{name}: CA certificates");
        }
    }
}
