//! weir-dev runs the local stack for people: `make dev` and `make demo` call it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use nix::sys::signal::Signal;
use weir_crds::Transform;
use weir_tests::records::{self, Record};
use weir_tests::{Images, LocalNode, Operator, OperatorOptions, Stack, install_crds, wait_until};

/// Run Weir's local stack: a real Kafka broker and Kubernetes control plane on loopback,
/// with weir-operator and a local node that runs worker pods as processes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the stack in the foreground and print how to reach it; Ctrl-C stops it.
    Up,
    /// Start the stack, apply the example network, show records flowing through worker
    /// pods (and surviving a SIGKILL), then stop.
    Demo,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off,librdkafka=error".into()),
        )
        .init();
    let config = Config::parse();
    match config.command {
        Command::Up => up().await,
        Command::Demo => demo().await,
    }
}

/// The stack with Weir on it: the CRDs, a local node for worker pods, and the operator.
struct Weir {
    node: LocalNode,
    _operator: Operator,
    stack: Stack,
}

/// Runs `what`, printing it first and how long it took after.
async fn step<T>(what: &str, f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    eprintln!("==> {what}");
    let started = Instant::now();
    let out = f.await?;
    eprintln!("    done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(out)
}

async fn start() -> anyhow::Result<Weir> {
    let stack = step(
        "Starting Kafka (KRaft) and Kubernetes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)",
        async { Stack::start().await.context("starting the local stack") },
    )
    .await?;
    let client = stack.kube_client().await?;
    step("Installing the weir.dev CRDs", async {
        install_crds(&client).await.context("installing the CRDs")
    })
    .await?;
    let node = step(
        "Registering the local node (runs scheduled pods' containers as local processes)",
        async {
            LocalNode::start(
                &stack.control_plane.kubeconfig_path(),
                &stack.dir().join("node"),
                Images::workspace()
                    .context("the workspace binaries (cargo build --workspace --bins)")?,
            )
            .await
            .context("starting the local node")
        },
    )
    .await?;
    let operator = step(
        "Starting weir-operator (on SASL_SSL, one Kafka principal per Transform)",
        async {
            // Secure is the default a newcomer sees: the operator on SASL_SSL with SCRAM, the
            // broker's authorizer on, and each Transform's workers with a principal of their own.
            let options = OperatorOptions {
                resync_interval: "1m",
                ..OperatorOptions::on_sasl_ssl(&stack)?
            };
            Operator::start(&stack, options)
                .await
                .context("starting the operator")
        },
    )
    .await?;
    Ok(Weir {
        node,
        _operator: operator,
        stack,
    })
}

async fn up() -> anyhow::Result<()> {
    let weir = start().await?;
    let stack = &weir.stack;
    let tools = weir_tests::tools::tools_dir().join("bin");
    println!(
        "\nThe local stack is running, with weir-operator and a local node for worker pods.\n\n\
         Kubernetes:\n  export KUBECONFIG={kubeconfig}\n  export PATH={tools}:$PATH\n  \
         kubectl apply -f manifests/examples/namespaces.yaml -f manifests/examples/page-views.yaml \
         -f manifests/examples/transforms/views-per-page.yaml\n  kubectl get datastreams,transforms,pods -A\n\n\
         Kafka (SASL_SSL, SCRAM-SHA-512, ACLs enforced; the operator's principal is a super user):\n  \
         bootstrap.servers={secure}\n  security.protocol=SASL_SSL\n  sasl.mechanism=SCRAM-SHA-512\n  \
         sasl.username={user}\n  sasl.password={password}\n  ssl.ca.location={ca}\n  \
         (e.g. kcat -b {secure} -X security.protocol=SASL_SSL -X sasl.mechanism=SCRAM-SHA-512 \
         -X sasl.username={user} -X sasl.password={password} -X ssl.ca.location={ca} -L)\n  \
         Each Transform's workers authenticate as User:weir.<namespace>.<name> (password in \
         Secret <name>-worker-kafka) with only the ACLs their plan needs.\n  \
         The same listener takes PLAIN and SCRAM-SHA-256 with that user, and OAUTHBEARER \
         (sasl.oauthbearer.method=oidc, client id {user}, secret {password}, token endpoint \
         {token}); mutual TLS on {ssl} with a certificate from the CA in {pki}.\n  \
         The test kit's own plaintext door (a super user, for local tools): {bootstrap}\n\n\
         Logs and data: {dir} (worker pods log to node/)\n\nPress Ctrl-C to stop.",
        kubeconfig = stack.control_plane.kubeconfig_path().display(),
        tools = tools.display(),
        bootstrap = stack.bootstrap_servers(),
        secure = stack.kafka.sasl_ssl_bootstrap_servers(),
        user = weir_tests::kafka::SASL_USERNAME,
        password = weir_tests::kafka::SASL_PASSWORD,
        ca = stack.kafka.pki().ca_path().display(),
        token = stack.kafka.token_issuer().token_endpoint(),
        ssl = stack.kafka.ssl_bootstrap_servers(),
        pki = stack
            .kafka
            .pki()
            .ca_path()
            .parent()
            .unwrap_or(stack.dir())
            .display(),
        dir = stack.dir().display(),
    );
    shutdown_signal().await;
    eprintln!("\nStopping…");
    weir.node.shutdown().await;
    drop(weir._operator);
    drop(weir.stack);
    eprintln!("Stopped; nothing is left running.");
    Ok(())
}

/// What `kubectl args…` printed, run from the workspace against the stack.
fn kubectl_output(stack: &Stack, args: &[&str]) -> anyhow::Result<std::process::Output> {
    std::process::Command::new(weir_tests::tools::binary("kubectl")?)
        .env("KUBECONFIG", stack.control_plane.kubeconfig_path())
        .current_dir(weir_tests::tools::workspace_root())
        .args(args)
        .output()
        .context("running kubectl")
}

fn kubectl(stack: &Stack, args: &[&str]) -> anyhow::Result<String> {
    let out = kubectl_output(stack, args)?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     {l}\n")).collect()
}

/// `count` page views in minute `minute` of 2026-01-01 over `users` users and three pages.
fn page_views(minute: u32, count: u32, users: u32) -> Vec<(String, String, String)> {
    (0..count)
        .map(|i| {
            let user = format!("u{}", i % users);
            let url = format!("/p{}", i % 3);
            let ts = format!("2026-01-01T00:{minute:02}:{:02}Z", (i * 7) % 60);
            (user, url, ts)
        })
        .collect()
}

fn as_records(views: &[(String, String, String)]) -> Vec<Record> {
    views
        .iter()
        .map(|(u, url, ts)| {
            Record::new(
                format!("{{\"user_id\":\"{u}\"}}"),
                format!("{{\"user_id\":\"{u}\",\"url\":\"{url}\",\"email\":\"{u}@example.com\",\"ts\":\"{ts}\"}}"),
            )
        })
        .collect()
}

/// The rows of the output, as (url, window_start) → views. A window emitted twice reads
/// as -1, so that a duplicate can never pass for the right count.
async fn output(bootstrap: &str) -> anyhow::Result<BTreeMap<(String, String), i64>> {
    let mut rows = BTreeMap::new();
    for r in records::consume_all(
        bootstrap,
        "analytics.views-per-page",
        Duration::from_secs(2),
    )
    .await?
    {
        let v: serde_json::Value = serde_json::from_str(&r.value_str())?;
        let key = (
            v["url"].as_str().unwrap_or_default().to_owned(),
            v["window_start"].as_str().unwrap_or_default().to_owned(),
        );
        let views = v["views"].as_i64().unwrap_or(0);
        if rows.insert(key.clone(), views).is_some() {
            rows.insert(key, -1);
        }
    }
    Ok(rows)
}

async fn wait_for_rows(
    bootstrap: &str,
    want: &BTreeMap<(String, String), i64>,
) -> anyhow::Result<BTreeMap<(String, String), i64>> {
    let seen = wait_until("the expected rows", Duration::from_secs(120), || async {
        let rows = output(bootstrap).await.map_err(|e| e.to_string())?;
        if want.iter().all(|(k, v)| rows.get(k) == Some(v)) {
            Ok(rows)
        } else {
            Err(format!("{} rows", rows.len()))
        }
    })
    .await;
    // Past the time, the rows as they are, for the caller to show what differs.
    match seen {
        Ok(rows) => Ok(rows),
        Err(_) => output(bootstrap).await,
    }
}

/// Waits (up to two minutes) until `topic` holds at least `n` committed records.
async fn wait_for(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<Vec<Record>> {
    let seen = wait_until(
        format!("{n} records in {topic}"),
        Duration::from_secs(120),
        || async {
            let got = records::consume_all(bootstrap, topic, Duration::from_secs(1))
                .await
                .map_err(|e| e.to_string())?;
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} records", got.len()))
            }
        },
    )
    .await;
    match seen {
        Ok(got) => Ok(got),
        Err(_) => Ok(records::consume_all(bootstrap, topic, Duration::from_secs(1)).await?),
    }
}

fn expected(
    views: &[(String, String, String)],
    minutes: std::ops::Range<u32>,
) -> BTreeMap<(String, String), i64> {
    let mut want = BTreeMap::new();
    for (_, url, ts) in views {
        let minute: u32 = ts[14..16].parse().unwrap_or(99);
        if minutes.contains(&minute) {
            *want
                .entry((url.clone(), format!("2026-01-01T00:{minute:02}:00Z")))
                .or_insert(0) += 1;
        }
    }
    want
}

async fn demo() -> anyhow::Result<()> {
    let weir = start().await?;
    let result = tokio::select! {
        r = run_demo(&weir) => r,
        _ = shutdown_signal() => {
            eprintln!("\nInterrupted.");
            Ok(())
        }
    };
    eprintln!("==> Stopping the workers, the operator and the stack");
    weir.node.shutdown().await;
    drop(weir._operator);
    drop(weir.stack);
    eprintln!("    stopped; nothing is left running");
    result
}

async fn run_demo(weir: &Weir) -> anyhow::Result<()> {
    let stack = &weir.stack;
    let bootstrap = stack.bootstrap_servers();
    let client = stack.kube_client().await?;
    println!(
        "\n1. kubectl apply --server-side the example network (namespaces web and analytics):"
    );
    let manifests = [
        "-f",
        "manifests/examples/namespaces.yaml",
        "-f",
        "manifests/examples/page-views.yaml",
        "-f",
        "manifests/examples/customers.yaml",
        "-f",
        "manifests/examples/orders.yaml",
        "-f",
        "manifests/examples/transforms/views-per-page.yaml",
        "-f",
        "manifests/examples/transforms/popular-pages.yaml",
        "-f",
        "manifests/examples/transforms/orders-with-customers.yaml",
    ];
    let applied = kubectl(
        stack,
        &[&["apply", "--server-side"][..], &manifests].concat(),
    )?;
    print!("{}", indent(&applied));

    println!(
        "2. The operator compiles and tests the Transforms, creates topics and deploys workers:"
    );
    let started = Instant::now();
    for (ns, name) in [
        ("analytics", "views-per-page"),
        ("analytics", "popular-pages"),
        ("web", "orders-with-customers"),
    ] {
        let transforms = Api::<Transform>::namespaced(client.clone(), ns);
        let budget = Duration::from_secs(240).saturating_sub(started.elapsed());
        wait_until(
            format!("Transform {ns}/{name} to become Ready"),
            budget,
            || {
                let transforms = transforms.clone();
                async move {
                    let tf = transforms.get(name).await.map_err(|e| e.to_string())?;
                    let ready = tf
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                        .cloned();
                    match ready {
                        Some(c) if c.status == "True" => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await?;
    }
    println!("   ready in {:.1}s", started.elapsed().as_secs_f64());
    print!(
        "{}",
        indent(&kubectl(stack, &["get", "datastreams,transforms", "-A"])?)
    );
    // What Argo CD sees: the live objects still match the manifests once the operator has
    // reconciled them (it writes only status, and objects it creates itself).
    let diff = kubectl_output(
        stack,
        &[&["diff", "--server-side"][..], &manifests].concat(),
    )?;
    anyhow::ensure!(
        diff.status.success(),
        "kubectl diff --server-side found drift from the manifests:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    println!("   kubectl diff --server-side: no drift from the manifests (GitOps stays in sync)");
    // Each Transform's workers authenticate as a principal of their own.
    let users = kubectl(
        stack,
        &[
            "get",
            "pods",
            "-A",
            "-l",
            "app.kubernetes.io/name=weir-worker",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}: \
             {.spec.containers[0].env[?(@.name==\"WEIR_KAFKA_SASL_USERNAME\")].value}{\"\\n\"}{end}",
        ],
    )?;
    println!(
        "   the workers connect over SASL_SSL, each Transform as its own Kafka principal \
         (SCRAM password in Secret <transform>-worker-kafka, only the ACLs its plan needs):"
    );
    print!("{}", indent(&users));
    print!(
        "{}",
        indent(&kubectl(stack, &["get", "pods", "-A", "-o", "wide"])?)
    );

    // Minutes 0-2 of page views, then a few views at minute 10 from every user so that
    // every input partition's watermark passes the first three windows.
    let mut views = page_views(0, 120, 40);
    views.extend(page_views(1, 90, 40));
    views.extend(page_views(2, 60, 40));
    views.extend(page_views(10, 40, 40));
    records::produce(&bootstrap, "web.page-views", &as_records(&views)).await?;
    println!(
        "3. Produced {} page views to web.page-views (event time 00:00 to 00:10).",
        views.len()
    );
    let want = expected(&views, 0..3);
    let rows = wait_for_rows(&bootstrap, &want).await?;
    println!("4. Output records in analytics.views-per-page (one per page per closed minute):");
    for ((url, start), n) in &rows {
        println!("     {start}  {url:<4} {n} views");
    }
    anyhow::ensure!(
        want.iter().all(|(k, v)| rows.get(k) == Some(v)),
        "the output differs from the expected counts: {rows:?} != {want:?}"
    );
    let pods = Api::<Pod>::namespaced(client.clone(), "analytics");
    let list = pods
        .list(&ListParams::default().labels("weir.dev/transform=views-per-page"))
        .await?;
    let victim = list
        .items
        .first()
        .and_then(|p| p.metadata.name.clone())
        .context("no worker pod")?;
    weir.node.signal("analytics", &victim, Signal::SIGKILL);
    println!(
        "5. Killed worker pod {victim} with SIGKILL; producing minutes 10-12 while it restarts."
    );
    let mut more = page_views(11, 80, 40);
    more.extend(page_views(12, 50, 40));
    more.extend(page_views(20, 40, 40));
    records::produce(&bootstrap, "web.page-views", &as_records(&more)).await?;
    let mut all = views.clone();
    all.extend(more);
    let want = expected(&all, 0..13);
    let rows = wait_for_rows(&bootstrap, &want).await?;
    let complete = want.iter().all(|(k, v)| rows.get(k) == Some(v));
    println!(
        "6. After the restart the output holds {} rows, {}:",
        rows.len(),
        if complete {
            "every window exactly once, none lost or doubled"
        } else {
            "NOT as expected"
        }
    );
    for ((url, start), n) in rows
        .iter()
        .filter(|((_, s), _)| s.as_str() >= "2026-01-01T00:10")
    {
        println!("     {start}  {url:<4} {n} views");
    }
    print!(
        "{}",
        indent(&kubectl(stack, &["get", "pods", "-n", "analytics"])?)
    );
    anyhow::ensure!(
        complete,
        "the output differs from the expected counts after the restart"
    );

    // A Transform over a Transform's output: the popular minutes.
    // Minutes 0, 1 and 11 reach 25 views on each of the three pages.
    let popular = wait_for(&bootstrap, "analytics.popular-pages", 9).await?;
    println!(
        "7. analytics.popular-pages, a Transform over views-per-page's output (minutes with at least 25 views): {} rows",
        popular.len()
    );
    for r in popular.iter().take(4) {
        println!("     {}", r.value_str());
    }

    // A stream-table join with an expectation.
    let customers: Vec<Record> = (0..10)
        .map(|i| {
            Record::new(
                format!("{{\"customer_id\":\"c{i}\"}}"),
                format!("{{\"customer_id\":\"c{i}\",\"name\":\"Customer {i}\"}}"),
            )
        })
        .collect();
    records::produce(&bootstrap, "web.customers", &customers).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut orders: Vec<Record> = (0..30)
        .map(|i| {
            Record::new(
                format!("{{\"customer_id\":\"c{}\"}}", i % 10),
                format!(
                    "{{\"order_id\":\"o{i}\",\"customer_id\":\"c{}\",\"amount\":{}.50,\"ts\":\"2026-01-01T00:00:{:02}Z\"}}",
                    i % 10,
                    i + 1,
                    i
                ),
            )
        })
        .collect();
    // One order breaks the expectation (amount > 0), one is not JSON.
    orders.push(Record::new(
        "{\"customer_id\":\"c1\"}",
        "{\"order_id\":\"bad\",\"customer_id\":\"c1\",\"amount\":-5.00,\"ts\":\"2026-01-01T00:00:40Z\"}",
    ));
    orders.push(Record::new("{\"customer_id\":\"c2\"}", "not json"));
    records::produce(&bootstrap, "web.orders", &orders).await?;
    let joined = wait_for(&bootstrap, "web.orders-with-customers", 30).await?;
    println!(
        "8. Produced 10 customers (a table) and {} orders; web.orders-with-customers joined {} of them:",
        orders.len(),
        joined.len()
    );
    for r in joined.iter().take(3) {
        println!("     {}", r.value_str());
    }
    let mut dead = 0;
    for topic in [
        "analytics.views-per-page.dead-letters",
        "analytics.popular-pages.dead-letters",
        "web.orders-with-customers.dead-letters",
    ] {
        let records = records::consume_all(&bootstrap, topic, Duration::from_secs(1)).await?;
        for r in &records {
            println!(
                "     dead letter in {topic}: {} ({})",
                r.header("weir.error.class").unwrap_or_default(),
                r.header("weir.error.message").unwrap_or_default()
            );
        }
        dead += records.len();
    }
    println!(
        "9. Dead letters: {dead} (the order that broke the expectation and the one that was not JSON)."
    );
    anyhow::ensure!(
        joined.len() == 30,
        "expected 30 joined orders, got {}",
        joined.len()
    );
    anyhow::ensure!(dead == 2, "expected 2 dead letters, got {dead}");
    println!(
        "\nDone: DataStreams and Transforms applied with kubectl ran as worker pods between Kafka topics, exactly once."
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
