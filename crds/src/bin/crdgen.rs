//! Writes the `WhatsAppSession` CRD manifest generated from the Rust types.
//!
//!     cargo run -p whatsapp-crds --bin crdgen            # rewrites crds/whatsappsession.yaml
//!     cargo run -p whatsapp-crds --bin crdgen -- -       # prints it instead

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let yaml = whatsapp_crds::crd_yaml();
    match std::env::args().nth(1).as_deref() {
        Some("-") => print!("{yaml}"),
        Some("-h" | "--help") => {
            println!("usage: crdgen [-|PATH]  (default: crds/whatsappsession.yaml in the source tree)")
        }
        other => {
            let path = other
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("whatsappsession.yaml"));
            std::fs::write(&path, yaml)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
