//! The operator commands that speak HTTP: `pub`, `send`, `request`, `dlq`, `topology`,
//! `trace`, `status`, `bench`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::CliError;
use crate::client::{Call, Client, ClientError};

/// A `--header name=value` (sent as `x-meta-<name>`).
#[derive(Debug, Clone)]
pub struct MetaHeader {
    name: String,
    value: String,
}

/// Parses `name=value` for `--header` (a usage error otherwise).
pub fn parse_header(s: &str) -> Result<MetaHeader, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not name=value"))?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "header name {name:?}: use letters, digits, '-' and '_'"
        ));
    }
    Ok(MetaHeader {
        name: name.to_ascii_lowercase(),
        value: value.to_owned(),
    })
}

/// The payload and envelope fields of a `pub`, `send` or `request`.
#[derive(Debug, Clone, Args)]
pub struct MessageArgs {
    /// Topic, e.g. `orders.placed`.
    pub topic: String,
    /// The payload (JSON unless --content-type says otherwise). Default: `null`.
    #[arg(conflicts_with = "file")]
    pub payload: Option<String>,
    /// Read the payload from a file (`-`: standard input).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Content type of the payload; anything but JSON is sent as raw bytes.
    #[arg(long, default_value = "application/json", value_name = "MIME")]
    pub content_type: String,
    /// Message id (a ULID is kept as the id; any other string is a dedup key).
    #[arg(long, value_name = "ID")]
    pub message_id: Option<String>,
    /// Correlation id (to join an existing flow).
    #[arg(long, value_name = "ID")]
    pub correlation_id: Option<String>,
    /// Causation id (the message that caused this one).
    #[arg(long, value_name = "ID")]
    pub causation_id: Option<String>,
    /// W3C traceparent.
    #[arg(long, value_name = "TRACEPARENT")]
    pub traceparent: Option<String>,
    /// Priority 0-255 (default 128).
    #[arg(long, value_name = "N")]
    pub priority: Option<u8>,
    /// Publishing component.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// An envelope header, `name=value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<MetaHeader>,
}

impl MessageArgs {
    fn body(&self) -> Result<Vec<u8>, CliError> {
        match (&self.payload, &self.file) {
            (Some(p), _) => Ok(p.clone().into_bytes()),
            (None, Some(f)) if f.as_os_str() == "-" => {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .map_err(|e| CliError::Failure(format!("cannot read standard input: {e}")))?;
                Ok(buf)
            }
            (None, Some(f)) => std::fs::read(f)
                .map_err(|e| CliError::Failure(format!("cannot read {}: {e}", f.display()))),
            (None, None) => Ok(b"null".to_vec()),
        }
    }

    /// The call to `POST /v1/{verb}/{topic}` with body and headers.
    fn call(&self, verb: &str) -> Result<Call<'static>, CliError> {
        let mut call = Call::post(format!("v1/{verb}/{}", encode_segment(&self.topic)))
            .body(&self.content_type, self.body()?)
            .header("x-message-id", self.message_id.as_ref())
            .header("x-correlation-id", self.correlation_id.as_ref())
            .header("x-causation-id", self.causation_id.as_ref())
            .header("traceparent", self.traceparent.as_ref())
            .header("x-priority", self.priority)
            .header("x-source", self.source.as_ref());
        for h in &self.headers {
            call = call.header(format!("x-meta-{}", h.name), Some(&h.value));
        }
        Ok(call)
    }
}

/// Percent-encodes one path segment (topics are plain, but a bad one must reach the node
/// intact so it can say what is wrong with it).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'*' | b'#') {
            if b == b'#' {
                out.push_str("%23");
            } else {
                out.push(b as char);
            }
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn line(out: &mut impl Write, v: &Value) -> Result<(), CliError> {
    writeln!(out, "{v}").map_err(CliError::Io)
}

/// `switchyard pub`: prints `{"id", "correlation_id"}`.
pub async fn publish(
    client: &Client,
    args: &MessageArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let v = client.call(args.call("publish")?).await?.json()?;
    line(out, &v)
}

/// `switchyard send`: prints the reply JSON.
pub async fn send(
    client: &Client,
    args: &MessageArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let v = client.call(args.call("send")?).await?.json()?;
    line(out, &v)
}

/// `switchyard request`: prints the reply JSON; `timeout_ms` is the node-side deadline.
pub async fn request(
    client: &Client,
    args: &MessageArgs,
    timeout_ms: Option<u64>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut call = args.call("request")?.query("timeout_ms", timeout_ms);
    if let Some(ms) = timeout_ms {
        // The node answers 504 at its deadline: wait a little longer than that.
        call = call.timeout(Duration::from_millis(ms) + Duration::from_secs(10));
    }
    let v = client.call(call).await?.json()?;
    line(out, &v)
}

/// `switchyard dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Lists dead letters, oldest first.
    List {
        /// Only these topics (a pattern, e.g. `orders.#`).
        #[arg(long, value_name = "PATTERN")]
        topic: Option<String>,
        /// Only those given up by this subscription or handler.
        #[arg(long, value_name = "NAME")]
        subscription: Option<String>,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Print the node's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one dead letter (JSON) by message id.
    Show {
        /// Message id.
        id: String,
    },
    /// Re-publishes dead letters (same message id; commands go to their handler again) and
    /// removes those the bus accepted.
    Replay(Selection),
    /// Deletes dead letters without replaying them.
    Purge(Selection),
}

/// Which dead letters: ids, or `--all` (optionally narrowed by `--topic`).
#[derive(Debug, Args)]
pub struct Selection {
    /// Message ids.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Every dead letter (narrowed by --topic).
    #[arg(long)]
    pub all: bool,
    /// Only these topics (a pattern).
    #[arg(long, value_name = "PATTERN")]
    pub topic: Option<String>,
    /// Entries per call to the node when replaying `--all`.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub batch: usize,
}

/// `switchyard dlq ...`.
pub async fn dlq(client: &Client, cmd: &DlqCommand, out: &mut impl Write) -> Result<(), CliError> {
    match cmd {
        DlqCommand::List {
            topic,
            subscription,
            limit,
            offset,
            json,
        } => {
            let v = client
                .call(
                    Call::get("v1/dlq")
                        .query("topic", topic.as_ref())
                        .query("subscription", subscription.as_ref())
                        .query("limit", Some(limit))
                        .query("offset", Some(offset)),
                )
                .await?
                .json()?;
            if *json {
                return line(out, &v);
            }
            dlq_table(&v, out)
        }
        DlqCommand::Show { id } => {
            let v = client
                .get_json(&format!("v1/dlq/{}", encode_segment(id)))
                .await?;
            let text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
            writeln!(out, "{text}").map_err(CliError::Io)
        }
        DlqCommand::Replay(sel) => replay(client, sel, out).await,
        DlqCommand::Purge(sel) => {
            let mut body = if sel.all {
                json!({"all": true})
            } else {
                json!({"ids": sel.ids})
            };
            if let Some(t) = &sel.topic {
                body["topic"] = json!(t);
            }
            let v = client
                .call(Call::post("v1/dlq/purge").json(&body))
                .await?
                .json()?;
            let n = v["purged"]
                .as_u64()
                .ok_or_else(|| ClientError::BadResponse(format!("no \"purged\" in {v}")))?;
            writeln!(out, "purged {n} dead letter(s)").map_err(CliError::Io)?;
            // Ids the node has no dead letter for: "unknown id" is a failure (exit 1).
            let unknown: Vec<&str> = v["unknown"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if unknown.is_empty() {
                Ok(())
            } else {
                Err(CliError::Failure(format!(
                    "no dead letter with id {}",
                    unknown.join(", ")
                )))
            }
        }
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

fn dlq_table(v: &Value, out: &mut impl Write) -> Result<(), CliError> {
    let items = v["items"]
        .as_array()
        .ok_or_else(|| ClientError::BadResponse(format!("no \"items\" in {v}")))?;
    let total = v["total"].as_u64().unwrap_or(items.len() as u64);
    if items.is_empty() {
        writeln!(out, "no dead letters (total {total})")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<26}  {:<24}  {:<7}  {:<18}  {:<16}  {:>3}  error",
        "id", "dead_lettered_at", "kind", "topic", "handler", "att"
    )?;
    for it in items {
        let msg = &it["message"];
        let error: String = text(it, "error").chars().take(100).collect();
        writeln!(
            out,
            "{:<26}  {:<24}  {:<7}  {:<18}  {:<16}  {:>3}  {}: {}",
            text(it, "id"),
            text(it, "dead_lettered_at"),
            text(msg, "kind"),
            text(msg, "topic"),
            text(it, "handler"),
            it["attempts"].as_u64().unwrap_or(0),
            text(it, "reason"),
            error.replace('\n', " ")
        )?;
    }
    writeln!(out, "{} of {total} dead letter(s)", items.len())?;
    Ok(())
}

/// A progress bar on standard error, only when it is a terminal.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

#[derive(Default)]
struct ReplayTally {
    replayed: u64,
    failed: Vec<(String, String)>,
}

impl ReplayTally {
    fn add(&mut self, v: &Value) -> Result<(), CliError> {
        self.replayed += v["replayed"]
            .as_u64()
            .ok_or_else(|| ClientError::BadResponse(format!("no \"replayed\" in {v}")))?;
        for f in v["failed"].as_array().into_iter().flatten() {
            self.failed
                .push((text(f, "id").to_owned(), text(f, "error").to_owned()));
        }
        Ok(())
    }
}

/// Replays by ids in one call, or `--all` page by page (so thousands show progress): each
/// page's ids are replayed, accepted ones leave the queue, failed ones are skipped over.
/// Stops after the count there was at the start, so letters that fail again and come back
/// are not replayed twice in one run.
async fn replay(client: &Client, sel: &Selection, out: &mut impl Write) -> Result<(), CliError> {
    let mut tally = ReplayTally::default();
    if !sel.all {
        let mut body = json!({"ids": sel.ids});
        if let Some(t) = &sel.topic {
            body["topic"] = json!(t);
        }
        let v = client
            .call(Call::post("v1/dlq/replay").json(&body))
            .await?
            .json()?;
        tally.add(&v)?;
    } else {
        let batch = sel.batch.clamp(1, 1000);
        let list = |offset: usize, limit: usize| {
            Call::get("v1/dlq")
                .query("topic", sel.topic.as_ref())
                .query("limit", Some(limit))
                .query("offset", Some(offset))
        };
        let first = client.call(list(0, 1)).await?.json()?;
        let total = first["total"]
            .as_u64()
            .ok_or_else(|| ClientError::BadResponse(format!("no \"total\" in {first}")))?;
        let bar = progress(total, "replaying");
        let (mut seen, mut skip) = (0u64, 0usize);
        while seen < total {
            let want = batch.min((total - seen) as usize);
            let page = client.call(list(skip, want)).await?.json()?;
            // One row per entry: a message several subscriptions gave up on has several.
            let rows: Vec<&str> = page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["id"].as_str())
                .collect();
            if rows.is_empty() {
                break;
            }
            // Each message once; one that already failed in this run is not sent again
            // (its entries stay in the queue, ahead of the next page).
            let mut ids: Vec<&str> = Vec::new();
            for &id in &rows {
                if !ids.contains(&id) && !tally.failed.iter().any(|(f, _)| f == id) {
                    ids.push(id);
                }
            }
            if !ids.is_empty() {
                let v = client
                    .call(Call::post("v1/dlq/replay").json(&json!({"ids": ids})))
                    .await?
                    .json()?;
                tally.add(&v)?;
            }
            // Every row of a message that failed stays where it was: skip them all.
            let failed = &tally.failed;
            skip += rows
                .iter()
                .filter(|&&id| failed.iter().any(|(f, _)| f == id))
                .count();
            seen += rows.len() as u64;
            bar.set_position(seen);
        }
        bar.finish_and_clear();
    }
    writeln!(out, "replayed {} dead letter(s)", tally.replayed)?;
    for (id, error) in &tally.failed {
        writeln!(out, "  not replayed {id}: {error}")?;
    }
    if tally.failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failure(format!(
            "{} dead letter(s) could not be replayed",
            tally.failed.len()
        )))
    }
}

/// Output of `switchyard topology`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TopologyFormat {
    /// A Mermaid flowchart.
    Mermaid,
    /// Graphviz DOT.
    Dot,
    /// The node's JSON.
    Json,
}

/// `switchyard topology`.
pub async fn topology(
    client: &Client,
    format: TopologyFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let f = match format {
        TopologyFormat::Mermaid => "mermaid",
        TopologyFormat::Dot => "dot",
        TopologyFormat::Json => "json",
    };
    let answer = client
        .call(Call::get("v1/topology").query("format", Some(f)))
        .await?;
    let mut body = answer.text();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    out.write_all(body.as_bytes())?;
    Ok(())
}

/// `switchyard trace`: the causal tree as text, or the node's JSON.
pub async fn trace(
    client: &Client,
    correlation_id: &str,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let v = client
        .get_json(&format!("v1/trace/{}", encode_segment(correlation_id)))
        .await?;
    if as_json {
        return line(out, &v);
    }
    let n = v["messages"].as_array().map_or(0, Vec::len);
    writeln!(
        out,
        "correlation {} ({n} message(s))",
        text(&v, "correlation_id")
    )?;
    match v["text"].as_str() {
        Some(t) => write!(out, "{t}")?,
        None => {
            for m in v["messages"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "  {} {} {}",
                    text(m, "timestamp"),
                    text(m, "kind"),
                    text(m, "topic")
                )?;
            }
        }
    }
    Ok(())
}

/// `switchyard status`: a summary, or the node's JSON.
pub async fn status(client: &Client, as_json: bool, out: &mut impl Write) -> Result<(), CliError> {
    let v = client.get_json("v1/status").await?;
    if as_json {
        return line(out, &v);
    }
    let ready = if v["ready"].as_bool() == Some(true) {
        "ready".to_owned()
    } else {
        let reasons: Vec<&str> = v["not_ready"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        format!("NOT READY ({})", reasons.join("; "))
    };
    writeln!(
        out,
        "node      {} (switchyard {})",
        client.base(),
        text(&v, "version")
    )?;
    writeln!(
        out,
        "state     {ready}, up {}",
        uptime(v["uptime_s"].as_u64().unwrap_or(0))
    )?;
    writeln!(out, "transport {}", text(&v, "transport"))?;
    for (label, key) in [
        ("subscriptions", "subscriptions"),
        ("command handlers", "command_handlers"),
        ("published (gateway)", "published"),
        ("pending", "pending"),
        ("dead letters", "dead_letters"),
    ] {
        if let Some(n) = v[key].as_u64() {
            writeln!(out, "{label:<20}{n}")?;
        }
    }
    if let Some(a) = v["auth"].as_bool() {
        writeln!(out, "{:<20}{}", "auth", if a { "on" } else { "off" })?;
    }
    Ok(())
}

fn uptime(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `switchyard bench`: publishes `count` messages through HTTP with `concurrency` calls in
/// flight and reports the rate and latency percentiles (a load tool; the project's figures
/// come from the benchmark harness).
pub async fn bench(
    client: &Client,
    topic: &str,
    count: u64,
    concurrency: usize,
    size: usize,
    out: &mut impl Write,
) -> Result<(), CliError> {
    use futures::StreamExt;
    let payload = serde_json::to_vec(&json!({"bench": "x".repeat(size)}))
        .map_err(|e| CliError::Failure(e.to_string()))?;
    let bar = progress(count, "publishing");
    let path = format!("v1/publish/{}", encode_segment(topic));
    let started = Instant::now();
    let mut latencies: Vec<Duration> = Vec::with_capacity(count as usize);
    let mut errors = 0u64;
    let mut first_error = None;
    let mut calls = futures::stream::iter(0..count)
        .map(|_| {
            let call = Call::post(path.clone()).body("application/json", payload.clone());
            async move {
                let t0 = Instant::now();
                let r = client.call(call).await;
                (t0.elapsed(), r)
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((took, r)) = calls.next().await {
        match r {
            Ok(_) => latencies.push(took),
            Err(e @ ClientError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
        bar.inc(1);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len().saturating_sub(1)) as f64 * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    writeln!(
        out,
        "published {} of {count} to {topic} in {:.2} s: {:.0} msg/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({concurrency} in flight, {} byte payload)",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        payload.len()
    )?;
    match first_error {
        None => Ok(()),
        Some(e) => Err(CliError::Failure(format!(
            "{errors} publish(es) failed, the first: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("orders.placed"), "orders.placed");
        assert_eq!(encode_segment("a.#"), "a.%23");
        assert_eq!(encode_segment("bad topic/x"), "bad%20topic%2Fx");
    }

    #[test]
    fn headers_are_name_equals_value() {
        let h = parse_header("Tenant=acme=1").unwrap();
        assert_eq!((h.name.as_str(), h.value.as_str()), ("tenant", "acme=1"));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name=x").is_err());
    }
}
