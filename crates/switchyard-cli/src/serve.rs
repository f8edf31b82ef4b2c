//! `switchyard serve`: a node on the configured transport behind the gateway, until
//! SIGINT/SIGTERM; with `--demo`, the layered reference app on the node's bus and a steady
//! trickle of runs (some of which fail) so there is something to watch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use data_pipeline::modules::Store;
use data_pipeline::{DATASET, DemoApp, DemoConfig, PipelineRequest};
use switchyard::{Bus, Envelope, MessageId, Topic};
use switchyard_node::{Node, NodeConfig};
use tokio::sync::watch;

use crate::CliError;
use crate::client::display_url;

/// `switchyard serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The node's TOML config (SWITCHYARD_<SECTION>__<KEY> variables override it). Without
    /// one: the embedded log under ./switchyard-data, 127.0.0.1:7878, auth off.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, overriding the config's `listen` (port 0: any free port; the first
    /// line printed says which).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Also run the layered reference app on the node's bus, with a steady trickle of runs.
    #[arg(long)]
    pub demo: bool,
    /// With --demo: one run every this many milliseconds.
    #[arg(long, default_value_t = 1500, value_name = "MS", requires = "demo")]
    pub demo_interval_ms: u64,
}

/// Which runs of the trickle fail, and how: every 4th names a dataset the store does not
/// have (the error handler gives up: a failed run and a dead letter); every 10th is also
/// preceded by a request whose payload does not decode (a dead letter with the raw bytes);
/// and the 2nd of every [`OUTAGE_EVERY`] meets a simulated outage of the report step's
/// upstream (its retries fail too: a failed run and a dead letter of the report request,
/// whose replay succeeds).
const MISSING_EVERY: u64 = 4;
/// See [`MISSING_EVERY`].
const OUTAGE_EVERY: u64 = 8;
/// The domain whose upstream the outage runs find unavailable.
const OUTAGE_DOMAIN: &str = "report";
/// Every demo component sends a heartbeat this often (the health checker calls one silent
/// for a minute unresponsive).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// Runs of the trickle under way at once at most; a tick with that many is skipped.
const MAX_RUNS_IN_FLIGHT: usize = 4;
const UNDECODABLE_EVERY: u64 = 10;

/// `println!` that cannot panic: a node whose stdout is closed (`switchyard serve | head`)
/// goes on running; what it prints is for a reader who may have gone.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Runs the node until SIGINT or SIGTERM, then shuts it down gracefully (the bus drains).
///
/// `log` is the command line's `--log` (or `SWITCHYARD_LOG`) when given: it sets the log
/// filter over `RUST_LOG` and the config's `[logging] filter`; the config's `[logging]
/// format` applies either way (`switchyard_node::logging::init_with_filter`).
pub async fn run(args: ServeArgs, log: Option<&str>) -> Result<(), CliError> {
    // `--listen` is applied before the config is judged (a non-loopback address needs
    // auth): the address validated is the one the node listens on.
    let config = NodeConfig::load_with_listen(args.config.as_deref(), args.listen)
        .map_err(|e| CliError::Failure(format!("invalid configuration: {e}")))?;
    switchyard_node::logging::init_with_filter(&config.logging, log);
    let tls = config.tls.is_some();
    let transport = describe_transport(&config);
    // The demo's database first: an unsupported DATABASE_URL or an unreachable database
    // stops here, before the node starts (never a node without its app). On the log
    // transport its SQLite file is under the node's data directory, so the app's rows
    // survive a restart as the bus's log does.
    let demo = if args.demo {
        let demo_config = demo_config(demo_dir(&config));
        let store = open_demo_store(&demo_config).await?;
        Some((demo_config, store))
    } else {
        None
    };
    let node = Node::start(config)
        .await
        .map_err(|e| CliError::Failure(format!("the node did not start: {e}")))?;
    let listener = match node.bind().await {
        Ok(l) => l,
        Err(e) => {
            let _ = node.shutdown().await;
            return Err(CliError::Failure(format!("the node did not start: {e}")));
        }
    };
    let addr = listener.local_addr().map_err(CliError::Io)?;
    let url = display_url(addr, tls);
    // The first line is for scripts and tests too: it names the bound address.
    say!("switchyard node listening on {url}");
    say!("  transport  {transport}");
    say!("  status     {url}/v1/status");
    say!("  health     {url}/health   metrics {url}/metrics");
    say!("  api        {url}/v1/openapi.json");
    say!(
        "  try        switchyard tail --url {url}     (in another terminal; Ctrl-C here stops the node)"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let demo = if let Some((demo_config, store)) = demo {
        let interval = Duration::from_millis(args.demo_interval_ms.max(10));
        match start_demo(&node, &url, interval, stop_rx, demo_config, store).await {
            Ok(task) => Some(task),
            Err(e) => {
                let _ = node.shutdown().await;
                return Err(e);
            }
        }
    } else {
        None
    };

    let shutdown = async move {
        wait_for_signal().await;
        say!("switchyard: stopping (draining the bus)");
        let _ = stop_tx.send(true);
        if let Some(task) = demo {
            let _ = task.await;
        }
    };
    node.serve(listener, shutdown)
        .await
        .map_err(|e| CliError::Failure(format!("the node stopped with an error: {e}")))?;
    say!("switchyard node stopped");
    Ok(())
}

fn describe_transport(config: &NodeConfig) -> String {
    match &config.transport {
        switchyard_node::TransportConfig::Log(l) => {
            format!("log (data in {})", l.data_dir.display())
        }
        switchyard_node::TransportConfig::Nats(n) => format!("nats ({})", n.url),
        other => other.kind().to_owned(),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The demo app's directory: `<data_dir>/demo` on the log transport (its SQLite database
/// `pipeline.db` and its CSV files live there and survive a restart); none on the memory
/// and NATS transports, which have no data directory (SQLite in memory).
fn demo_dir(config: &NodeConfig) -> Option<PathBuf> {
    match &config.transport {
        switchyard_node::TransportConfig::Log(l) => Some(l.data_dir.join(DEMO_DIR)),
        _ => None,
    }
}

/// The subdirectory of the log transport's `data_dir` the demo app keeps its data in.
const DEMO_DIR: &str = "demo";

/// The demo app's settings: small runs (the trickle goes on for as long as the node runs), on
/// the database of `DATABASE_URL` / `DATABASE_SCHEMA` (unset: SQLite, in `dir/pipeline.db`
/// with a directory, in memory without).
fn demo_config(dir: Option<PathBuf>) -> DemoConfig {
    DemoConfig {
        rows: 60,
        data_dir: dir,
        ..DemoConfig::default()
    }
    .with_env_database()
}

/// Opens (and migrates) the demo's database.
async fn open_demo_store(config: &DemoConfig) -> Result<Store, CliError> {
    Store::open(
        config.database_url.as_deref(),
        &config.database_schema,
        config.data_dir.clone(),
    )
    .await
    .map_err(|e| CliError::Failure(format!("the demo app did not start: {e}")))
}

/// Starts the reference app on the node's bus and `store`, declares its topology to the
/// node, and spawns the trickle.
async fn start_demo(
    node: &Node,
    node_url: &str,
    interval: Duration,
    stop: watch::Receiver<bool>,
    config: DemoConfig,
    store: Store,
) -> Result<tokio::task::JoinHandle<()>, CliError> {
    let store_desc = store.describe();
    // Run ids go on from the last one the store has (a database kept across restarts): a
    // restarted node's `demo-00001` would replace the earlier run's rows.
    let first = last_demo_run(&store).await;
    let app = DemoApp::start_on(node.bus(), &config, store)
        .await
        .map_err(|e| CliError::Failure(format!("the demo app did not start: {e}")))?;
    // The app's browser frontend at /app is its Frontend component through the gateway:
    // the layer rules apply to gateway traffic too.
    node.set_topology_enforced(app.topology().clone());
    // Its message types, for `GET /v1/asyncapi.json` and `switchyard schema export`.
    let contracts = data_pipeline::contracts::registry()
        .map_err(|e| CliError::Failure(format!("the demo app's contracts: {e}")))?;
    node.set_contracts(contracts);
    // Component health on the dashboard includes the app's health checker (heartbeats,
    // status updates, errors); the trickle keeps every component's heartbeat going.
    node.set_health_checker(app.health().clone());
    say!(
        "  demo       the layered reference app ({} components) on this node; a run every {} ms, every {MISSING_EVERY}th fails (a missing file), every {OUTAGE_EVERY}th an upstream outage in {OUTAGE_DOMAIN} (replay its dead letter)",
        app.topology().components().len(),
        interval.as_millis()
    );
    say!("             (switchyard topology, switchyard dlq list, switchyard trace <correlation>)");
    say!("  app        {}/app   (the app's own frontend)", node_url);
    say!("  store      {store_desc}   (DATABASE_URL picks it)");
    Ok(tokio::spawn(trickle(
        app,
        node.bus().clone(),
        interval,
        stop,
        first,
    )))
}

/// The highest `demo-NNNNN` run the store has data of (0: none, or the store did not say).
async fn last_demo_run(store: &Store) -> u64 {
    match store.database().runs().await {
        Ok(runs) => runs
            .iter()
            .filter_map(|r| r.strip_prefix("demo-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0),
        Err(e) => {
            say!("demo: the store did not list its runs ({e}); run ids start at demo-00001");
            0
        }
    }
}

/// Submits a run every `interval` and prints each result as it arrives, until `stop`; the
/// first run is `demo-<after + 1>`.
async fn trickle(
    mut app: DemoApp,
    bus: Bus,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    after: u64,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting: HashMap<MessageId, (String, Instant)> = HashMap::new();
    let mut n = after;
    let heartbeats = app.running().start_heartbeats(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                // A slow transport (a busy disk under `durability = "always"`) must not
                // get an ever longer backlog: runs wait for earlier ones to finish.
                if waiting.len() >= MAX_RUNS_IN_FLIGHT {
                    continue;
                }
                n += 1;
                let run_id = format!("demo-{n:05}");
                if n.is_multiple_of(UNDECODABLE_EVERY) {
                    publish_undecodable(&bus, n).await;
                }
                let dataset = if n.is_multiple_of(MISSING_EVERY) { "missing.csv" } else { DATASET };
                let request = PipelineRequest {
                    outage: (n % OUTAGE_EVERY == 2).then(|| OUTAGE_DOMAIN.to_owned()),
                    ..PipelineRequest::file(&run_id, dataset)
                };
                match app.submit_request(request).await {
                    Ok(correlation) => {
                        waiting.insert(correlation, (run_id, Instant::now()));
                    }
                    Err(e) => say!("demo {run_id} not submitted: {e}"),
                }
                // A run whose result never came (the node was restarted mid-flow...).
                waiting.retain(|_, (_, t0)| t0.elapsed() < Duration::from_secs(120));
            }
            done = app.next_result() => {
                let Some(done) = done else { break };
                let Some((run_id, t0)) = waiting.remove(&done.correlation_id) else { continue };
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                match &done.error {
                    None if done.is_ok() => say!(
                        "demo {run_id} completed in {ms:.0} ms   correlation {}",
                        done.correlation_id
                    ),
                    e => say!(
                        "demo {run_id} FAILED in {ms:.0} ms   correlation {}: {}",
                        done.correlation_id,
                        e.as_ref().map_or_else(|| "failed".to_owned(), |e| format!("{}: {}", e.error_type, e.message))
                    ),
                }
            }
        }
    }
    drop(heartbeats);
    app.stop();
}

/// A pipeline request whose payload is not a `PipelineRequest`: the CPM cannot decode it,
/// so the bus dead-letters it with its raw bytes.
async fn publish_undecodable(bus: &Bus, n: u64) {
    let Ok(topic) = Topic::new(<PipelineRequest as switchyard::Message>::TOPIC) else {
        return;
    };
    let payload = format!("{{\"run\": {n}, \"note\": \"not a PipelineRequest\"}}");
    let env = Envelope::new(topic, payload.into_bytes()).with_source("demo-trickle");
    if let Err(e) = bus.publish_envelope(env).await {
        say!("demo: undecodable request not published: {e}");
    }
}
