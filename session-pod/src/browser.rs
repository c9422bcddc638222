//! Chromium through chromiumoxide: launch on the session's profile, load WhatsApp Web with
//! the bridge script, and call into the page. Every CDP call has a deadline: after Chromium
//! dies, chromiumoxide calls can hang for minutes, so a missed deadline counts as a crash.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::{UserAgentBrandVersion, UserAgentMetadata};
use chromiumoxide::cdp::browser_protocol::network::SetUserAgentOverrideParams;
use chromiumoxide::page::Page;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use whatsapp_crds::BrowserEngine;

/// Every flag Chromium gets besides the profile, the caches, the headless mode and what
/// chromiumoxide always adds (debugging port, no extensions, no sandbox), for both engines
/// (each ignores what does not apply to it). chromiumoxide's own defaults are off: they pass
/// `--enable-features`/`--disable-features` a second time, Chromium keeps only one of each,
/// and which one won changed from launch to launch.
const FLAGS: &[&str] = &[
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-hang-monitor",
    "--disable-prompt-on-repost",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    // WhatsApp Web in a tab nobody looks at must keep its timers and sockets running.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-ipc-flooding-protection",
    // The lean process model: the page, the GPU and the network service run in the browser
    // process (one process instead of four: about 23 MiB less per session, bench-session),
    // no zygote. A crash of the page is a crash of Chromium, which the session restarts. The
    // flags after these make the same model with separate processes (one renderer; GPU and
    // network in the browser process) for a build that would not run in one.
    "--single-process",
    "--no-zygote",
    "--no-startup-window",
    "--renderer-process-limit=1",
    "--disable-site-isolation-trials",
    "--in-process-gpu",
    "--enable-features=NetworkServiceInProcess2",
    "--disable-features=PreloadTopChromeWebUI,SpareRendererForSitePerProcess,OptimizationHints,Translate,TranslateUI,MediaRouter,BackForwardCache,LensOverlay,IsolateOrigins,site-per-process",
    "--lang=en-US",
    // navigator.webdriver stays false, as in a browser a person runs (whatsapp-web.js does the same).
    "--disable-blink-features=AutomationControlled",
];

/// WhatsApp Web's address. Tests reach their simulator here too: their Chromium maps the host
/// and trusts the simulator's certificate (flags the test harness passes, never the product).
pub const WHATSAPP_WEB_URL: &str = "https://web.whatsapp.com/";

/// Chromium's major version, as the user agent and the client hints name it.
const CHROME_MAJOR: &str = "156";

/// WhatsApp may refuse a user agent that says HeadlessChrome: given as a flag (every request
/// and worker) and with the client hints (`navigator.userAgentData`, `Sec-CH-UA`), which the
/// headless shell would otherwise fill with a `HeadlessChrome` brand.
fn user_agent() -> String {
    format!(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{CHROME_MAJOR}.0.0.0 Safari/537.36"
    )
}

fn user_agent_override() -> SetUserAgentOverrideParams {
    let brands = vec![
        UserAgentBrandVersion::new("Not:A-Brand", "8"),
        UserAgentBrandVersion::new("Chromium", CHROME_MAJOR),
    ];
    let mut params = SetUserAgentOverrideParams::new(user_agent());
    params.accept_language = Some("en-US,en".into());
    params.platform = Some("Linux x86_64".into());
    params.user_agent_metadata = Some(UserAgentMetadata {
        brands: Some(brands.clone()),
        full_version_list: Some(brands),
        platform: "Linux".into(),
        platform_version: String::new(),
        architecture: "x86".into(),
        model: String::new(),
        mobile: false,
        bitness: Some("64".into()),
        wow64: Some(false),
        form_factors: Some(vec!["Desktop".into()]),
    });
    params
}

/// The cap of Chromium's HTTP and code caches.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Where Chromium keeps its caches: in the temporary directory (memory in the pod), never on
/// the profile volume, where a growing cache could fill the volume and damage the login and the
/// outbox. One directory per profile, so two sessions on one host never share a cache.
fn cache_dir(profile: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    profile.hash(&mut hasher);
    std::env::temp_dir().join(format!("chromium-cache-{:016x}", hasher.finish()))
}

/// The headless shell keeps V8's code cache in the profile (`Default/Code Cache`) whatever
/// `--disk-cache-dir` says: that directory is made a link into the cache directory, so the
/// cache stays off the volume with either engine.
fn code_cache_outside_profile(profile: &Path, cache: &Path) -> std::io::Result<()> {
    let target = cache.join("Code Cache");
    std::fs::create_dir_all(&target)?;
    let default = profile.join("Default");
    std::fs::create_dir_all(&default)?;
    let link = default.join("Code Cache");
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() && std::fs::read_link(&link)? == target => return Ok(()),
        Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(&link)?,
        Ok(_) => std::fs::remove_dir_all(&link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&target, &link)
}

/// Deadline of one call into the page.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("launching Chromium ({0}): {1}")]
    Launch(String, String),
    #[error("Chromium did not answer within {0:?}: treating it as hung")]
    Timeout(Duration),
    #[error("Chromium: {0}")]
    Cdp(String),
    #[error("the page: {0}")]
    Page(String),
}

/// Where each engine's binary is.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub chromium: PathBuf,
    pub headless_shell: PathBuf,
}

/// What to launch.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    pub binaries: Binaries,
    /// `spec.browser.engine`.
    pub engine: BrowserEngine,
    pub profile_dir: PathBuf,
    pub extra_args: Vec<String>,
    pub bridge_script: String,
    /// A pinned WhatsApp Web build: served for the top-level page instead of the live one.
    pub pinned_page: Option<String>,
}

/// A running Chromium with WhatsApp Web open.
pub struct Session {
    browser: Browser,
    page: Page,
    handler: JoinHandle<()>,
}

impl Session {
    pub async fn launch(options: &LaunchOptions) -> Result<Session, BrowserError> {
        // A write a full volume cut short must not cost the login at this launch.
        crate::leveldb::repair_profile(&options.profile_dir);
        let cache = cache_dir(&options.profile_dir);
        if let Err(e) = code_cache_outside_profile(&options.profile_dir, &cache) {
            tracing::warn!(error = %e, "the code cache could not be moved off the profile volume");
        }
        let executable = match options.engine {
            BrowserEngine::HeadlessShell => &options.binaries.headless_shell,
            BrowserEngine::Chromium => &options.binaries.chromium,
        };
        let launch_err =
            |e: String| BrowserError::Launch(format!("{:?}, {}", options.engine, executable.display()), e);
        // The shell only has the old headless mode (chromiumoxide's default, `--headless`).
        let mut builder = BrowserConfig::builder().chrome_executable(executable);
        if options.engine == BrowserEngine::Chromium {
            builder = builder.new_headless_mode();
        }
        let config = builder
            .user_data_dir(&options.profile_dir)
            .disable_default_args()
            .no_sandbox()
            .viewport(None)
            .launch_timeout(Duration::from_secs(30))
            .request_timeout(CALL_TIMEOUT)
            .args(FLAGS.iter().map(|f| f.trim_start_matches('-').to_string()))
            .arg(format!("user-agent={}", user_agent()))
            .arg(format!("disk-cache-dir={}", cache.display()))
            .arg(format!("disk-cache-size={CACHE_BYTES}"))
            .args(options.extra_args.iter().map(|f| f.trim_start_matches('-').to_string()))
            .build()
            .map_err(launch_err)?;
        let (browser, mut handler) = Browser::launch(config).await.map_err(|e| launch_err(e.to_string()))?;
        let handler = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if event.is_err() {
                    break;
                }
            }
        });
        let page = within(browser.new_page("about:blank")).await?.map_err(cdp)?;
        within(page.execute(user_agent_override())).await?.map_err(cdp)?;
        // Installed for every document, so a reload or a logout navigation keeps the bridge.
        within(page.evaluate_on_new_document(options.bridge_script.as_str())).await?.map_err(cdp)?;
        if let Some(html) = &options.pinned_page {
            serve_pinned_page(&page, WHATSAPP_WEB_URL, html).await?;
        }
        within(page.goto(WHATSAPP_WEB_URL)).await?.map_err(cdp)?;
        Ok(Session { browser, page, handler })
    }

    /// Evaluates `expression` in the page and decodes its (awaited) result.
    pub async fn eval<T: DeserializeOwned>(&self, expression: &str) -> Result<T, BrowserError> {
        let result =
            within(self.page.evaluate(expression)).await?.map_err(|e| BrowserError::Page(e.to_string()))?;
        result.into_value::<T>().map_err(|e| BrowserError::Page(e.to_string()))
    }

    /// False once Chromium exited or the CDP connection is gone.
    pub fn alive(&mut self) -> bool {
        !self.handler.is_finished() && matches!(self.browser.try_wait(), Ok(None))
    }

    /// Closes Chromium cleanly so it flushes the profile (the login); kills it if it hangs.
    pub async fn close(mut self) {
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            let _ = self.browser.close().await;
            let _ = self.browser.wait().await;
        })
        .await;
        if closed.is_err() {
            tracing::warn!("Chromium did not close in 15 s: killing it");
            let _ = self.browser.kill().await;
        }
        self.handler.abort();
    }

    /// Kills Chromium at once (it is hung or crashed).
    pub async fn kill(mut self) {
        let _ = self.browser.kill().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

/// Intercepts the top-level WhatsApp Web document (CDP Fetch domain) and answers it with the
/// pinned build's page; everything else the page loads goes to the network as usual.
async fn serve_pinned_page(page: &Page, url: &str, html: &str) -> Result<(), BrowserError> {
    use base64::Engine;
    use chromiumoxide::cdp::browser_protocol::fetch::{
        EnableParams, EventRequestPaused, FulfillRequestParams,
    };
    let mut paused = within(page.event_listener::<EventRequestPaused>()).await?.map_err(cdp)?;
    let enable: EnableParams = serde_json::from_value(serde_json::json!({
        "patterns": [{"urlPattern": format!("{}*", url.trim_end_matches('/')), "resourceType": "Document", "requestStage": "Request"}]
    }))
    .map_err(|e| BrowserError::Cdp(e.to_string()))?;
    within(page.execute(enable)).await?.map_err(cdp)?;
    let body = base64::engine::general_purpose::STANDARD.encode(html);
    let page = page.clone();
    tokio::spawn(async move {
        while let Some(event) = paused.next().await {
            let reply = serde_json::json!({
                "requestId": event.request_id,
                "responseCode": 200,
                "responseHeaders": [{"name": "Content-Type", "value": "text/html; charset=utf-8"}],
                "body": body,
            });
            if let Ok(fulfil) = serde_json::from_value::<FulfillRequestParams>(reply)
                && page.execute(fulfil).await.is_err()
            {
                break;
            }
        }
    });
    Ok(())
}

/// The page of a pinned WhatsApp Web build: from the cache on the profile volume, else
/// downloaded from `url_template` (`{version}` replaced) and cached.
pub async fn pinned_page(version: &str, url_template: &str, cache_dir: &Path) -> Result<String, String> {
    let cached = cache_dir.join(format!("whatsapp-web-{version}.html"));
    if let Ok(html) = std::fs::read_to_string(&cached) {
        return Ok(html);
    }
    let url = url_template.replace("{version}", version);
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("downloading WhatsApp Web {version} from {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("WhatsApp Web {version} is not available at {url} ({})", response.status()));
    }
    let html = response.text().await.map_err(|e| format!("reading WhatsApp Web {version}: {e}"))?;
    let _ = std::fs::write(&cached, &html);
    Ok(html)
}

fn cdp(e: chromiumoxide::error::CdpError) -> BrowserError {
    BrowserError::Cdp(e.to_string())
}

async fn within<F: std::future::Future>(f: F) -> Result<F::Output, BrowserError> {
    tokio::time::timeout(CALL_TIMEOUT, f).await.map_err(|_| BrowserError::Timeout(CALL_TIMEOUT))
}

/// The built-in bridge script.
pub const BUILT_IN_BRIDGE: &str = include_str!("../script/wa-bridge.js");

/// The bridge script: the file at `override_path` when it exists (an optional ConfigMap),
/// else the built-in one.
pub fn bridge_script(override_path: Option<&Path>) -> std::io::Result<String> {
    match override_path {
        Some(path) if path.exists() => {
            tracing::info!(path = %path.display(), "using the replacement bridge script");
            std::fs::read_to_string(path)
        }
        _ => Ok(BUILT_IN_BRIDGE.to_string()),
    }
}
