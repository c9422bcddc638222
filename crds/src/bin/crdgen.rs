//! Writes the `WhatsAppSession` CRD manifest generated from the Rust types.
//!
//!     cargo run -p whatsapp-crds --bin crdgen            # rewrites crds/whatsappsession.yaml
//!                                                        # and the Helm chart's copy
//!     cargo run -p whatsapp-crds --bin crdgen -- -       # prints it instead

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let yaml = whatsapp_crds::crd_yaml();
    match std::env::args().nth(1).as_deref() {
        Some("-") => print!("{yaml}"),
        Some("-h" | "--help") => {
            println!(
                "usage: crdgen [-|PATH]  (default: crds/whatsappsession.yaml and \
                 charts/whatsapp-operator/crds/whatsappsession.yaml in the source tree)"
            )
        }
        Some(path) => write(PathBuf::from(path), &yaml)?,
        None => {
            let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            write(crate_dir.join("whatsappsession.yaml"), &yaml)?;
            write(crate_dir.join("../charts/whatsapp-operator/crds/whatsappsession.yaml"), &yaml)?;
        }
    }
    Ok(())
}

fn write(path: PathBuf, yaml: &str) -> std::io::Result<()> {
    std::fs::write(&path, yaml)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
