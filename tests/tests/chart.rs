//! The Helm chart, the way an operator of the cluster uses it: the real helm lints and renders
//! it, kube-score reviews what it renders, and it is installed, upgraded and uninstalled on the
//! real control plane, with the operator and the hub running as local processes under the
//! chart's own ServiceAccounts (so the chart's RBAC is what is tested).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use serde::Deserialize as _;
use serde_json::{Value, json};
use whatsapp_tests::harness::{TestNamespace, cluster, eventually, source_path};
use whatsapp_tests::podrunner::{LocalContainer, service_account_kubeconfig};
use whatsapp_tests::processes::stop_gracefully;
use whatsapp_tests::{Output, output, run};

const MONITORING_APIS: [&str; 3] = [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
];

fn chart_dir() -> PathBuf {
    source_path("charts/whatsapp-operator")
}

fn helm() -> Command {
    let cluster = cluster();
    let mut cmd = Command::new(cluster.bin.join("helm"));
    cmd.env("KUBECONFIG", &cluster.kubeconfig)
        .env("HELM_CACHE_HOME", cluster.dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", cluster.dir.join("helm/config"))
        .env("HELM_DATA_HOME", cluster.dir.join("helm/data"));
    cmd
}

/// `helm template` of the chart with these extra arguments: every rendered object.
fn render(args: &[&str]) -> Vec<Value> {
    let out = run(helm().args(["template", "rel"]).arg(chart_dir()).args(["--namespace", "wao"]).args(args))
        .unwrap();
    serde_yaml::Deserializer::from_str(&out.stdout)
        .map(|doc| serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered; got {:?}", kinds(objects)))
}

/// The kube-score checks the chart README justifies skipping (its table between the
/// `kube-score-justified` markers), so the documentation and the test cannot drift.
fn justified_kube_score_checks() -> Vec<String> {
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();
    let start = readme.find("<!-- kube-score-justified -->").expect("start marker in the chart README");
    let end = readme.find("<!-- /kube-score-justified -->").expect("end marker in the chart README");
    readme[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(str::to_string))
        .collect()
}

#[test]
fn the_chart_lints_clean_and_renders_what_it_promises() {
    // The real helm, with the Kubernetes version set, in strict mode.
    let lint = run(helm().args(["lint", "--strict", "--kube-version", "1.35.4"]).arg(chart_dir())).unwrap();
    assert!(lint.stdout.contains("0 chart(s) failed"), "{}", lint.stdout);

    // Without the Prometheus Operator's CRDs: no monitoring objects.
    let plain = render(&[]);
    let names = kinds(&plain);
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(!names.iter().any(|n| n.starts_with(&format!("{kind}/"))), "{kind} rendered without its CRD");
    }
    for expected in [
        "Deployment/rel-whatsapp-operator-operator",
        "Deployment/rel-whatsapp-operator-hub",
        "Service/rel-whatsapp-operator-hub",
        "Service/rel-whatsapp-operator-hub-metrics",
        "Service/rel-whatsapp-operator-operator-metrics",
        "PodDisruptionBudget/rel-whatsapp-operator-hub",
        "NetworkPolicy/rel-whatsapp-operator-sessions",
        "RoleBinding/rel-whatsapp-operator-operator",
        "RoleBinding/rel-whatsapp-operator-hub",
        "Role/rel-whatsapp-operator-operator-leader-election",
        "Secret/rel-whatsapp-operator-hub-token-key",
        "Secret/rel-whatsapp-operator-jwt",
        "Pod/rel-whatsapp-operator-hub-test",
    ] {
        assert!(names.contains(&expected.to_string()), "{expected} missing from {names:?}");
    }
    // By default the operator reconciles the hub's session namespace, and its rights (the
    // sessions' Secrets among them) are bound there only; every namespace is an explicit choice.
    let operator_scope = |objects: &[Value]| {
        let operator = find(objects, "Deployment", "rel-whatsapp-operator-operator");
        let env = operator["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
        let watched = env.iter().find(|v| v["name"] == "WAO_WATCH_NAMESPACE").map(|v| v["value"].clone());
        let names = kinds(objects);
        let cluster_wide = names.iter().any(|n| n == "ClusterRoleBinding/rel-whatsapp-operator-operator");
        (watched, cluster_wide)
    };
    assert_eq!(operator_scope(&plain), (Some(json!("wao")), false));
    assert_eq!(find(&plain, "RoleBinding", "rel-whatsapp-operator-operator")["metadata"]["namespace"], "wao");
    assert_eq!(operator_scope(&render(&["--set", "operator.watchNamespace=*"])), (None, true));
    let hub = find(&plain, "Deployment", "rel-whatsapp-operator-hub");
    assert_eq!(hub["spec"]["replicas"], 2);
    // Stopping: out of rotation first, then every request in flight gets its full timeout.
    let pod = &hub["spec"]["template"]["spec"];
    let env = |name: &str| -> u64 {
        let vars = pod["containers"][0]["env"].as_array().unwrap();
        let var = vars.iter().find(|v| v["name"] == name).unwrap();
        var["value"].as_str().unwrap().parse().unwrap()
    };
    let delay = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    assert!(delay > 0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > delay + env("WAO_REQUEST_TIMEOUT_SECONDS"), "grace {grace}");

    // Every pod meets the restricted Pod Security profile (the install test enforces it too).
    for object in &plain {
        let pod = match object["kind"].as_str() {
            Some("Deployment") => &object["spec"]["template"]["spec"],
            Some("Pod") => &object["spec"],
            _ => continue,
        };
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(
                (&sc["allowPrivilegeEscalation"], &sc["readOnlyRootFilesystem"], &sc["capabilities"]["drop"]),
                (&json!(false), &json!(true), &json!(["ALL"])),
                "{}",
                c["name"]
            );
            assert!(c["resources"]["limits"]["memory"].is_string(), "{} has no memory limit", c["name"]);
        }
    }

    // With them: a ServiceMonitor per component, a PodMonitor for sessions, and the alerts
    // exactly as in files/alerts.yaml (which promtool checks).
    let api_args: Vec<&str> = MONITORING_APIS.iter().flat_map(|a| ["--api-versions", a]).collect();
    let monitored = render(&api_args);
    find(&monitored, "ServiceMonitor", "rel-whatsapp-operator-operator");
    find(&monitored, "ServiceMonitor", "rel-whatsapp-operator-hub");
    let pod_monitor = find(&monitored, "PodMonitor", "rel-whatsapp-operator-sessions");
    assert_eq!(pod_monitor["spec"]["namespaceSelector"]["matchNames"], json!(["wao"]));
    let rule = find(&monitored, "PrometheusRule", "rel-whatsapp-operator");
    let alerts: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("files/alerts.yaml")).unwrap())
            .unwrap();
    assert_eq!(rule["spec"], alerts);

    // One namespace: RBAC narrows to RoleBindings there; public keys replace the secret; Ingress.
    let narrowed = render(&[
        "--set",
        "operator.watchNamespace=team-a,hub.sessionNamespace=team-a",
        "--set",
        "hub.auth.jwt.publicKeys=-----BEGIN PUBLIC KEY-----",
        "--set",
        "hub.ingress.enabled=true,hub.ingress.host=wa.example.com,hub.ingress.tlsSecretName=wa-tls",
        "--set",
        "hub.ingress.annotations.cert-manager\\.io/cluster-issuer=letsencrypt",
        "--set",
        "networkPolicy.apiServer.to[0].ipBlock.cidr=10.96.0.1/32",
    ]);
    let names = kinds(&narrowed);
    assert!(!names.iter().any(|n| n == "ClusterRoleBinding/rel-whatsapp-operator-operator"), "{names:?}");
    let binding = find(&narrowed, "RoleBinding", "rel-whatsapp-operator-operator");
    assert_eq!(binding["metadata"]["namespace"], "team-a");
    // The hub's rights are bound in its session namespace only, whatever the rest.
    let hub_binding = find(&narrowed, "RoleBinding", "rel-whatsapp-operator-hub");
    assert_eq!(hub_binding["metadata"]["namespace"], "team-a");
    assert!(!names.iter().any(|n| n == "ClusterRoleBinding/rel-whatsapp-operator-hub"), "{names:?}");
    assert!(!names.iter().any(|n| n == "Secret/rel-whatsapp-operator-jwt"), "{names:?}");
    find(&narrowed, "ConfigMap", "rel-whatsapp-operator-hub-jwt-keys");
    let policy = find(&narrowed, "NetworkPolicy", "rel-whatsapp-operator-sessions");
    assert_eq!(policy["metadata"]["namespace"], "team-a");
    // The hub connects only to session pods' API port, DNS and the API server.
    let hub_policy = find(&narrowed, "NetworkPolicy", "rel-whatsapp-operator-hub");
    let egress = &hub_policy["spec"]["egress"];
    assert_eq!(egress.as_array().map(Vec::len), Some(3), "{egress}");
    let sessions = &egress[0]["to"][0];
    assert_eq!(sessions["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "team-a");
    assert_eq!(sessions["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "whatsapp-session");
    assert_eq!(egress[0]["ports"], json!([{"port": whatsapp_crds::SESSION_PORT, "protocol": "TCP"}]));
    assert_eq!(egress[1]["ports"][0]["port"], 53);
    assert_eq!(egress[2]["to"], json!([{"ipBlock": {"cidr": "10.96.0.1/32"}}]));
    let ingress = find(&narrowed, "Ingress", "rel-whatsapp-operator-hub");
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "wa-tls");
    assert_eq!(ingress["spec"]["rules"][0]["host"], "wa.example.com");
    assert_eq!(ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"], "letsencrypt");

    // values.schema.json refuses nonsense before anything reaches the cluster.
    for bad in ["hub.replicas=0", "operator.logFormat=xml", "hub.service.port=70000", "unknownValue=1"] {
        let out = output(helm().args(["template", "rel"]).arg(chart_dir()).args(["--set", bad])).unwrap();
        assert!(!out.success && out.stderr.contains("schema"), "{bad} accepted: {}", out.stderr);
    }

    // kube-score: no critical finding beyond those the chart README justifies.
    let justified = justified_kube_score_checks();
    assert!(justified.len() >= 2, "{justified:?}");
    let rendered = run(helm().args(["template", "rel"]).arg(chart_dir()).args(&api_args)).unwrap();
    let file = cluster().dir.join("chart-rendered.yaml");
    std::fs::write(&file, rendered.stdout).unwrap();
    let mut score = Command::new(cluster().bin.join("kube-score"));
    score.arg("score").arg(&file).args(["--output-format", "ci"]);
    for check in &justified {
        score.args(["--ignore-test", check]);
    }
    let out = output(&mut score).unwrap();
    let critical: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("[CRITICAL]")).collect();
    assert!(critical.is_empty() && out.success, "kube-score critical findings:\n{}", critical.join("\n"));
}

/// A chart Deployment's pod run as a local process, as the pod runner runs session pods:
/// the binary its image holds, with the installed Deployment's environment, volumes and
/// ServiceAccount token (see `LocalContainer`).
struct ChartProcess {
    child: tokio::process::Child,
    /// Container port -> local port.
    ports: std::collections::HashMap<u16, u16>,
    log: PathBuf,
}

impl ChartProcess {
    /// Runs the process of `pod_name`, one of `deployment`'s pods.
    async fn start(ns: &TestNamespace, deployment: &str, pod_name: &str, binary: &str) -> ChartProcess {
        let d = ns.api::<Deployment>().get(deployment).await.unwrap();
        let spec = d.spec.unwrap().template.spec.unwrap();
        let image = spec.containers[0].image.clone().unwrap_or_default();
        assert!(image.contains(&format!("/{binary}:")), "{image}");
        let dir = ns.cluster.dir.join(format!("{}-{pod_name}", ns.name));
        let local = LocalContainer::prepare(&ns.client, &ns.name, pod_name, &spec, &dir, None).await.unwrap();
        let kubeconfig = service_account_kubeconfig(
            &ns.client,
            &ns.cluster.server(),
            &ns.cluster.ca_pem(),
            &ns.name,
            &spec,
            &dir,
        )
        .await
        .unwrap();
        let log = dir.join("process.log");
        let program = whatsapp_tests::harness::workspace_binary(binary);
        let child = tokio::process::Command::from(whatsapp_tests::clusterdns::command(&program))
            .env_clear()
            .envs(local.env)
            .env("KUBECONFIG", kubeconfig)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        ChartProcess { child, ports: local.ports, log }
    }

    /// SIGTERM, as Kubernetes stops a pod, and the exit status once it exited.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        stop_gracefully(&self.log.display().to_string(), &mut self.child, Duration::from_secs(30))
            .await
            .unwrap()
    }

    async fn metric(&self, container_port: u16, sample: &str) -> Option<f64> {
        let text =
            reqwest::get(format!("{}/metrics", self.url(container_port))).await.ok()?.text().await.ok()?;
        whatsapp_tests::processes::sample_value(&text, sample)
    }

    fn url(&self, container_port: u16) -> String {
        format!("http://127.0.0.1:{}", self.ports[&container_port])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChartProcess {
    fn drop(&mut self) {
        // (kill_on_drop stops the process)
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log());
        }
    }
}

async fn get_json(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(e) => (0, json!(e.to_string())),
    }
}

fn pod_names(ns: &TestNamespace, selector: &str) -> Vec<String> {
    let pods = kubectl_json(ns, &["get", "pods", "-l", selector]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn secret_value(ns: &TestNamespace, name: &str, key: &str) -> Vec<u8> {
    use base64::Engine;
    let out =
        run(ns.kubectl().args(["get", "secret", name, "-o", &format!("jsonpath={{.data.{key}}}")])).unwrap();
    base64::engine::general_purpose::STANDARD.decode(out.stdout.trim()).unwrap()
}

fn kubectl_json(ns: &TestNamespace, args: &[&str]) -> Value {
    let out = run(ns.kubectl().args(args).args(["-o", "json"])).unwrap();
    serde_json::from_str(&out.stdout).unwrap()
}

fn helm_in(ns: &TestNamespace, args: &[&str]) -> Output {
    output(helm().args(args).args(["--namespace", &ns.name])).unwrap()
}

#[tokio::test]
async fn the_chart_installs_runs_with_its_own_rbac_upgrades_and_uninstalls() {
    let ns = cluster().namespace("chart").await;
    // The namespace enforces the restricted Pod Security profile: the API server refuses any
    // pod of the chart that does not meet it.
    run(ns.cluster.kubectl().args([
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
    ]))
    .unwrap();
    let release = format!("wao-{}", ns.name.rsplit('-').next().unwrap());
    let prefix = format!("{release}-whatsapp-operator");
    let scope = format!(
        "operator.watchNamespace={0},hub.sessionNamespace={0},hub.adminClienteId=42,\
         sessionPod.image.tag=chart-test,sessionPod.image.pullPolicy=Always,operator.replicas=2",
        ns.name
    );

    let install = helm_in(
        &ns,
        &["install", &release, chart_dir().to_str().unwrap(), "--set", &scope, "--wait", "--timeout", "120s"],
    );
    assert!(install.success, "helm install failed:\n{}{}", install.stdout, install.stderr);
    assert!(install.stdout.contains("kubectl get whatsappsessions"), "NOTES.txt:\n{}", install.stdout);

    // Every object is there, and kwok runs the operator's and the hub's pods.
    for (kind, name) in [
        ("deployment", format!("{prefix}-operator")),
        ("deployment", format!("{prefix}-hub")),
        ("service", format!("{prefix}-hub")),
        ("service", format!("{prefix}-hub-metrics")),
        ("service", format!("{prefix}-operator-metrics")),
        ("serviceaccount", format!("{prefix}-operator")),
        ("serviceaccount", format!("{prefix}-hub")),
        ("secret", format!("{prefix}-hub-token-key")),
        ("secret", format!("{prefix}-jwt")),
        ("poddisruptionbudget", format!("{prefix}-hub")),
        ("poddisruptionbudget", format!("{prefix}-operator")),
        ("networkpolicy", format!("{prefix}-sessions")),
        ("networkpolicy", format!("{prefix}-hub")),
        ("networkpolicy", format!("{prefix}-operator")),
        ("role", format!("{prefix}-operator-leader-election")),
        ("rolebinding", format!("{prefix}-operator")),
        ("rolebinding", format!("{prefix}-hub")),
    ] {
        run(ns.kubectl().args(["get", kind, &name])).unwrap_or_else(|e| panic!("{kind}/{name}: {e}"));
    }
    for role in [format!("{prefix}-operator"), format!("{prefix}-hub")] {
        run(ns.cluster.kubectl().args(["get", "clusterrole", &role])).unwrap();
    }
    for (component, replicas) in [("operator", 2), ("hub", 2)] {
        let selector =
            format!("app.kubernetes.io/name=whatsapp-{component},app.kubernetes.io/instance={release}");
        let pods = kubectl_json(&ns, &["get", "pods", "-l", &selector]);
        let phases: Vec<&str> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["status"]["phase"].as_str().unwrap())
            .collect();
        assert_eq!(phases, vec!["Running"; replicas], "{component} pods");
    }

    // The installed operator Deployment, run as a local process with its ServiceAccount's
    // token, environment and Secret volume, reconciles a session applied with kubectl.
    let key = secret_value(&ns, &format!("{prefix}-hub-token-key"), "key");
    assert_eq!(key.len(), 48);
    // Two replicas (a PodDisruptionBudget keeps one): one leads, the other stands by, and
    // takes over when the leader stops.
    let operators: Vec<String> = pod_names(
        &ns,
        &format!("app.kubernetes.io/name=whatsapp-operator,app.kubernetes.io/instance={release}"),
    );
    assert_eq!(operators.len(), 2, "{operators:?}");
    let operator_deployment = format!("{prefix}-operator");
    let mut replicas = Vec::new();
    for pod in &operators {
        replicas.push(ChartProcess::start(&ns, &operator_deployment, pod, "whatsapp-operator").await);
    }
    let leader = eventually("one installed operator to lead", Duration::from_secs(60), || async {
        let mut leading = Vec::new();
        for (i, p) in replicas.iter().enumerate() {
            let (ready, _) = get_json(&format!("{}/readyz", p.url(8080)), None).await;
            match p.metric(8080, "whatsapp_operator_leader").await {
                Some(1.0) if ready == 200 => leading.push(i),
                Some(0.0) if ready == 200 => {}
                _ => return Ok(None),
            }
        }
        Ok((leading.len() == 1).then(|| leading[0]))
    })
    .await;
    let lease = kubectl_json(&ns, &["get", "lease", &format!("{prefix}-operator")]);
    assert_eq!(lease["spec"]["holderIdentity"], operators[leader].as_str());
    let status = replicas[leader].terminate().await;
    assert!(status.success(), "{status}");
    let operator = replicas.remove(1 - leader);
    eventually("the standby operator to take over", Duration::from_secs(60), || async {
        Ok((operator.metric(8080, "whatsapp_operator_leader").await == Some(1.0)).then_some(()))
    })
    .await;
    let applied = ns.apply(
        "apiVersion: whatsapp.leadmaster.dev/v1alpha1\nkind: WhatsAppSession\nmetadata: {name: cliente-42}\nspec: {clienteId: 42}\n",
    );
    assert!(applied.success, "{}", applied.stderr);
    run(ns.kubectl().args(["wait", "--for=condition=Reconciled", "was/cliente-42", "--timeout=60s"]))
        .unwrap();
    for (kind, name) in [
        ("statefulset", "cliente-42"),
        ("service", "cliente-42"),
        ("serviceaccount", "cliente-42-session"),
        ("role", "cliente-42-session"),
        ("rolebinding", "cliente-42-session"),
        ("secret", "cliente-42-hub-token"),
    ] {
        run(ns.kubectl().args(["get", kind, name])).unwrap_or_else(|e| panic!("{kind}/{name}: {e}"));
    }
    // The chart's settings reached it: the session image and pull policy from its values.
    let sts = kubectl_json(&ns, &["get", "statefulset", "cliente-42"]);
    let session_container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(session_container["image"], "ghcr.io/leadmaster/whatsapp-session:chart-test");
    assert_eq!(session_container["imagePullPolicy"], "Always");
    // The session pod is admitted under the restricted profile too (the namespace enforces it).
    eventually("the session pod", Duration::from_secs(60), || async {
        let pods = kubectl_json(&ns, &["get", "pods", "-l", "whatsapp.leadmaster.dev/session=cliente-42"]);
        Ok(pods["items"].as_array().is_some_and(|p| p.len() == 1).then_some(()))
    })
    .await;
    assert!(
        !operator.log().contains("forbidden"),
        "the chart's RBAC refused the operator something:\n{}",
        operator.log()
    );

    // What the internet-facing hub may write (a ValidatingAdmissionPolicy on its account):
    // suspended and pairing, never the browser it runs or where events go.
    let as_hub = format!("--as=system:serviceaccount:{}:{prefix}-hub", ns.name);
    // Server-side apply: one PATCH, as the hub writes (the hub may not even get a session).
    let hub_apply = |name: &str, spec: &str| {
        let manifest = ns.cluster.dir.join(format!("{}-{name}-as-hub.yaml", ns.name));
        let text = format!(
            "apiVersion: whatsapp.leadmaster.dev/v1alpha1\nkind: WhatsAppSession\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        );
        std::fs::write(&manifest, text).unwrap();
        let apply = ["apply", "--server-side", "--force-conflicts", "--field-manager=whatsapp-hub", "-f"];
        output(ns.kubectl().arg(&as_hub).args(apply).arg(&manifest)).unwrap()
    };
    let refused = eventually("the policy on the hub's writes to apply", Duration::from_secs(60), || async {
        let out = hub_apply("cliente-42", "{clienteId: 42, browser: {image: registry.example/evil:1}}");
        Ok((!out.success).then_some(out.stderr))
    })
    .await;
    assert!(refused.contains("the hub may change only spec.suspended and spec.pairing"), "{refused}");
    let refused = hub_apply(
        "cliente-42",
        "{clienteId: 42, webhooks: [{name: x, url: 'https://x.example/', secretRef: {name: s}}]}",
    );
    assert!(!refused.success && refused.stderr.contains("spec.webhooks"), "{}", refused.stderr);
    for suspended in [true, false] {
        let allowed = hub_apply("cliente-42", &format!("{{clienteId: 42, suspended: {suspended}}}"));
        assert!(allowed.success, "{}", allowed.stderr);
    }
    let sneaky = hub_apply(
        "sneaky",
        "{clienteId: 43, browser: {extraArgs: ['--proxy-server=http://attacker.example:3128']}}",
    );
    assert!(
        !sneaky.success && sneaky.stderr.contains("the hub may not set spec.browser"),
        "{}",
        sneaky.stderr
    );

    // The installed hub Deployment, the same way: serves the session with the chart's
    // generated JWT secret and admin session, and manages sessions (create, patch, delete).
    let hubs =
        pod_names(&ns, &format!("app.kubernetes.io/name=whatsapp-hub,app.kubernetes.io/instance={release}"));
    let hub = ChartProcess::start(&ns, &format!("{prefix}-hub"), &hubs[0], "whatsapp-hub").await;
    let health = format!("{}/health", hub.url(8080));
    eventually("the installed hub to be ready", Duration::from_secs(60), || async {
        Ok((get_json(&health, None).await.0 == 200).then_some(()))
    })
    .await;
    let (code, _) = get_json(&format!("{}/livez", hub.url(9090)), None).await;
    assert_eq!(code, 200, "the hub's metrics port");
    // What `helm test` runs in the hub's image: its own check of /health.
    let check = |url: String| {
        output(
            Command::new(whatsapp_tests::harness::workspace_binary("whatsapp-hub"))
                .arg("check-health")
                .arg(url),
        )
        .unwrap()
    };
    let healthy = check(health.clone());
    assert!(healthy.success, "{}{}", healthy.stdout, healthy.stderr);
    let closed = check(format!("http://127.0.0.1:{}/health", whatsapp_tests::cluster::free_port().unwrap()));
    assert!(!closed.success, "check-health passed against a closed port");

    let jwt_secret = secret_value(&ns, &format!("{prefix}-jwt"), "secret");
    let admin = whatsapp_tests::hub::sign(
        json!({"sub": "chart-test", "role": "admin", "exp": jsonwebtoken::get_current_timestamp() + 600}),
        &jwt_secret,
    );
    let (code, status) =
        get_json(&format!("{}/api/admin/whatsapp/status", hub.url(8080)), Some(&admin)).await;
    assert_eq!((code, status["session"].as_str()), (200, Some("cliente-42")), "{status}");
    let (code, _) = get_json(
        &format!("{}/api/whatsapp/42/status", hub.url(8080)),
        Some(&whatsapp_tests::hub::admin_token()),
    )
    .await;
    assert_eq!(code, 401, "a token signed with another secret was accepted");
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/api/sessions", hub.url(8080)))
        .bearer_auth(&admin)
        .json(&json!({"clienteId": 43}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201, "{}", created.text().await.unwrap());
    // (the hub sees its own creation through its watch, a moment later)
    eventually("the hub to suspend the session it created", Duration::from_secs(30), || async {
        let r = http
            .post(format!("{}/api/whatsapp/43/disconnect", hub.url(8080)))
            .bearer_auth(&admin)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            200 => Ok(Some(())),
            404 => Ok(None),
            code => Err(format!("{code} {}", r.text().await.unwrap_or_default())),
        }
    })
    .await;
    let deleted =
        http.delete(format!("{}/api/sessions/43", hub.url(8080))).bearer_auth(&admin).send().await.unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert!(!hub.log().contains("forbidden"), "the chart's RBAC refused the hub something:\n{}", hub.log());

    // Upgrade: a new value takes effect; generated secrets are kept.
    let jwt_before = secret_value(&ns, &format!("{prefix}-jwt"), "secret");
    let upgrade = helm_in(
        &ns,
        &[
            "upgrade",
            &release,
            chart_dir().to_str().unwrap(),
            "--set",
            &scope,
            "--set",
            "hub.replicas=3",
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    assert!(upgrade.success, "helm upgrade failed:\n{}{}", upgrade.stdout, upgrade.stderr);
    let deployment = kubectl_json(&ns, &["get", "deployment", &format!("{prefix}-hub")]);
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(secret_value(&ns, &format!("{prefix}-jwt"), "secret"), jwt_before);
    assert_eq!(secret_value(&ns, &format!("{prefix}-hub-token-key"), "key"), key);

    // Uninstall: the chart's objects go; the hub-token key stays (sessions' tokens derive from
    // it) and so does the CRD with every session (helm never deletes CRDs).
    let uninstall = helm_in(&ns, &["uninstall", &release, "--wait"]);
    assert!(uninstall.success, "helm uninstall failed:\n{}{}", uninstall.stdout, uninstall.stderr);
    for (kind, name) in
        [("deployment", format!("{prefix}-hub")), ("deployment", format!("{prefix}-operator"))]
    {
        let out = output(ns.kubectl().args(["get", kind, &name])).unwrap();
        assert!(!out.success && out.stderr.contains("NotFound"), "{kind}/{name} left behind");
    }
    let out =
        output(ns.cluster.kubectl().args(["get", "clusterrole", &format!("{prefix}-operator")])).unwrap();
    assert!(!out.success, "ClusterRole left behind");
    run(ns.kubectl().args(["get", "secret", &format!("{prefix}-hub-token-key")])).unwrap();
    run(ns.kubectl().args(["get", "was", "cliente-42"])).unwrap();
}

/// What the chart and the operator assume about the images, checked against the Dockerfiles
/// (users, binaries, ports) and the build commands the chart README documents. The images
/// themselves are built and run by `images.rs` and `realnode.rs`.
#[test]
fn the_images_are_what_the_chart_expects() {
    let plain = render(&[]);
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();
    for (dir, binary, user, ports) in [
        ("operator", "whatsapp-operator", "65532:65532", "8080"),
        ("hub", "whatsapp-hub", "65532:65532", "8080 9090"),
        ("session-pod", "whatsapp-session", "10001:10001", "8080"),
    ] {
        let dockerfile = std::fs::read_to_string(source_path(&format!("{dir}/Dockerfile"))).unwrap();
        let instruction = |name: &str| {
            dockerfile
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(instruction("USER"), user, "{dir}/Dockerfile");
        assert_eq!(instruction("EXPOSE"), ports, "{dir}/Dockerfile");
        assert!(instruction("ENTRYPOINT").contains(&format!("/usr/local/bin/{binary}")), "{dir}/Dockerfile");
        assert!(dockerfile.contains(&format!("--locked -p {binary} --bin {binary}")), "{dir}/Dockerfile");
        let tag = format!("ghcr.io/leadmaster/{binary}:0.1.0");
        assert!(
            readme.contains(&format!("docker build -f {dir}/Dockerfile -t {tag} .")),
            "chart README lacks the build command for {tag}"
        );
    }
    // The chart runs the operator and hub images as the user the images declare, and the
    // operator starts session pods from the session image, as 10001 (operator/src/children.rs;
    // its unit tests prove its output equal to this fixture).
    for (deployment, image) in [("operator", "whatsapp-operator"), ("hub", "whatsapp-hub")] {
        let d = find(&plain, "Deployment", &format!("rel-whatsapp-operator-{deployment}"));
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["containers"][0]["image"], format!("ghcr.io/leadmaster/{image}:0.1.0"));
    }
    let operator = find(&plain, "Deployment", "rel-whatsapp-operator-operator");
    let env = operator["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(
        |e| e["name"] == "WAO_SESSION_IMAGE" && e["value"] == "ghcr.io/leadmaster/whatsapp-session:0.1.0"
    ));
    let children: Value = serde_json::from_str(
        &std::fs::read_to_string(source_path("operator/src/children/fixture_defaults.json")).unwrap(),
    )
    .unwrap();
    let users: Vec<&Value> = children
        .pointer("/statefulset/spec/template/spec")
        .into_iter()
        .flat_map(|pod| {
            [&pod["securityContext"]["runAsUser"], &pod["containers"][0]["securityContext"]["runAsUser"]]
        })
        .filter(|u| !u.is_null())
        .collect();
    assert!(!users.is_empty() && users.iter().all(|u| **u == 10001), "{users:?}");
    // Every setting the chart passes is one the binary reads: `--help` lists its variables.
    for (deployment, binary, read_directly) in [
        ("operator", "whatsapp-operator", &["RUST_LOG"][..]),
        ("hub", "whatsapp-hub", &["RUST_LOG", "POD_NAMESPACE"][..]),
    ] {
        let help = run(Command::new(whatsapp_tests::harness::workspace_binary(binary)).arg("--help"))
            .unwrap()
            .stdout;
        let d = find(&plain, "Deployment", &format!("rel-whatsapp-operator-{deployment}"));
        for var in d["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            assert!(
                read_directly.contains(&name) || help.contains(&format!("[env: {name}")),
                "the chart sets {name} on the {deployment}, which {binary} does not read"
            );
        }
    }
    // The helm test runs the hub image's own health check.
    let test_pod = find(&plain, "Pod", "rel-whatsapp-operator-hub-test");
    assert_eq!(test_pod["spec"]["containers"][0]["command"], json!(["whatsapp-hub", "check-health"]));
}
