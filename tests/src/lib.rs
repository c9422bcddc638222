//! Test support for whatsapp-operator: a real control plane ([`cluster`]), the shared
//! per-run cluster and per-test namespaces ([`harness`]), and helpers to run the real
//! command-line tools the way users do.

pub mod cluster;
pub mod clusterdns;
pub mod drills;
pub mod harness;
pub mod hub;
pub mod images;
pub mod node;
pub mod podrunner;
pub mod processes;
pub mod simulator;
pub mod tcpproxy;
pub mod webhook;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Name of the WhatsAppSession CRD.
pub const CRD_NAME: &str = "whatsappsessions.whatsapp.leadmaster.dev";

/// The committed CRD manifest in the source tree.
pub fn crd_manifest_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/whatsappsession.yaml")
}

/// Installs the CRD with `kubectl apply --server-side` and waits until it is Established,
/// as a user would. Returns kubectl's summary line.
pub fn install_crd(bin: &Path, kubeconfig: &Path) -> Result<String> {
    let manifest = crd_manifest_path();
    let apply = run(kubectl(bin, kubeconfig)
        .args(["apply", "--server-side", "--field-manager=whatsapp-installer", "-f"])
        .arg(&manifest))?;
    run(kubectl(bin, kubeconfig).args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{CRD_NAME}"),
    ]))?;
    Ok(apply.stdout.trim().to_string())
}

/// A `kubectl` command bound to a kubeconfig.
pub fn kubectl(bin: &Path, kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(bin.join("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig);
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to completion and captures its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs a command that must succeed.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if !out.success {
        bail!("{cmd:?} failed:\n{}{}", out.stdout, out.stderr);
    }
    Ok(out)
}
