//! `whatsapp-testcluster`: starts the test control plane (see `whatsapp_tests::cluster`),
//! installs the WhatsAppSession CRD, prints where it is, and runs until Ctrl-C, SIGTERM, or
//! (with `--exit-on-stdin-eof`) until whoever started it goes away.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use tokio::io::AsyncReadExt;
use whatsapp_tests::cluster::{self, ControlPlane};

#[derive(Parser)]
#[command(version, about = "Run a real Kubernetes control plane on 127.0.0.1 for tests and development")]
struct Args {
    /// State directory (kubeconfig, certificates, logs, etcd data). Emptied at start.
    #[arg(long, env = "WAO_CLUSTER_DIR", default_value = ".wao/cluster")]
    dir: PathBuf,
    /// Stop when standard input closes: the parent that started us has exited.
    #[arg(long)]
    exit_on_stdin_eof: bool,
    /// Keep the state directory after stopping (for reading logs).
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    whatsapp_runtime::telemetry::init_tracing("text", "info,kube_client=off");
    let args = Args::parse();

    let t0 = Instant::now();
    let bin = tokio::task::spawn_blocking(cluster::build_binaries).await??;
    let built = t0.elapsed();
    let t1 = Instant::now();
    let mut plane = ControlPlane::start(&bin, &args.dir).await?;
    let crd = whatsapp_tests::install_crd(&plane.bin, &plane.kubeconfig)?;
    eprintln!(
        "control plane up: binaries {:.1}s, start {:.1}s, CRD {crd}",
        built.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    // The harness reads these lines; people read them too.
    println!("WAO_CLUSTER_DIR={}", plane.dir.display());
    println!("KUBECONFIG={}", plane.kubeconfig.display());
    println!("PATH={}:$PATH", plane.bin.display());
    println!("ready");

    let stdin_closed = async {
        if args.exit_on_stdin_eof {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        } else {
            std::future::pending::<()>().await
        }
    };
    let mut health = tokio::time::interval(std::time::Duration::from_secs(2));
    let failure = async {
        loop {
            health.tick().await;
            if let Err(e) = plane.check_alive() {
                return e;
            }
        }
    };
    let outcome = tokio::select! {
        _ = whatsapp_runtime::terminated() => Ok(()),
        _ = stdin_closed => Ok(()),
        e = failure => Err(e),
    };
    let dir = plane.dir.clone();
    plane.stop().await;
    if !args.keep && outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!("control plane stopped");
    outcome
}
