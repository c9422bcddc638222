//! The product's images, built from their Dockerfiles by `tests/images/build.sh` (which
//! `./dev images` and `./dev test` run), as archives a real node imports.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Environment variable naming the archives' directory (`./dev` sets it to what the build
/// script printed); else the script's default cache directory.
pub const IMAGES_ENV: &str = "WAO_IMAGES";

/// The archives of the three product images and the pause image, in import order.
pub fn archives() -> Result<Vec<PathBuf>> {
    let dir = match std::env::var_os(IMAGES_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
            });
            cache.join("whatsapp-operator/images-v1/archives")
        }
    };
    let names = ["pause", "whatsapp-operator", "whatsapp-hub", "whatsapp-session", "coredns"];
    let archives: Vec<PathBuf> = names.iter().map(|n| dir.join(format!("{n}.tar"))).collect();
    if let Some(missing) = archives.iter().find(|a| !a.exists()) {
        bail!("{} is not built: run `./dev images` (the README's test command does)", missing.display());
    }
    Ok(archives)
}
