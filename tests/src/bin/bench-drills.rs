//! The failure drills at the counts (prints the table; asserts nothing): session
//! process SIGKILL ×20, Chromium SIGKILL ×20 and SIGSTOP ×5, pod deleted ×20, operator leader
//! killed ×5 and partitioned ×3, API server stopped 30 s, hub killed with streams open ×5.
//! `tests/tests/drills.rs` runs the same drills fewer times, in `./dev test`.
//!
//! Run: `cargo build --workspace --bins && target/debug/bench-drills` (with `WAO_TEST_CLUSTER`
//! naming a running `whatsapp-testcluster`, or it starts one). Exits non-zero if an attempt did
//! not recover. Arguments, if any, select drills by (part of) their name: `bench-drills
//! chromium "pod deleted"`.

use whatsapp_tests::drills::{self, Counts};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let counts = Counts::full().only(&names);
    println!("failure drills at the issue's counts: {counts:?}");
    let report = drills::run(&counts).await;
    println!("{report}");
    anyhow::ensure!(report.passed(), "some drills did not recover every time");
    Ok(())
}
