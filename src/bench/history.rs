//! Presence history on a large event log: the latency of `…/availability`,
//! `…/clients/{client_id}/history` and `…/clients?at=` for a 24-hour and a 30-day window,
//! on random accounts (and clients) of a store built by `scripts/history-perf`
//! (accounts `{prefix}{i}`, clients `c{j}`).
//!
//! Requests go one at a time (one caller), then optionally with several in flight; warm-up
//! requests are not measured. Every answer is checked (every client of the account listed,
//! percentages within 0..100, connections inside the window, in order) and the run fails on
//! the first wrong one. With `--database-url` the availability route's reads are also timed
//! in-process on the store, without HTTP (the account's clients, then each client's stream
//! backwards page by page), with the route's page sizes and others, counting queries and
//! rows, to tell where the time goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{proc_stats, BenchError, BenchResult};
use crate::store::Store;

/// A day in milliseconds.
const DAY: i64 = 86_400_000;

/// The most rows a query of the in-process walks reads.
const PAGE: u64 = 64;

/// How far before the window a stream is read: the decider's reorder window.
const REORDER_MILLIS: i64 = 5_000;

/// What `cradle-bench history` runs.
#[derive(clap::Args, Clone)]
pub struct HistoryArgs {
    /// Cradle's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http: String,
    /// The target's name in the report (`cradle+sqlite`, `cradle+postgres`).
    #[arg(long, default_value = "cradle")]
    pub label: String,
    /// Cradle's pid, for CPU seconds and peak RSS.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Accounts in the store: `{account_prefix}0` … `{account_prefix}{accounts - 1}`.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Clients per account: `c0` … `c{clients - 1}`.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Account ids' prefix.
    #[arg(long, default_value = "acct-")]
    pub account_prefix: String,
    /// Measured requests per route and window (and per concurrency).
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Unmeasured requests before each measured series.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Also measure with this many requests in flight (0 or 1: one at a time only).
    #[arg(long, default_value_t = 0)]
    pub concurrency: usize,
    /// Cradle's store: also time the routes' reads in-process, without HTTP.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Seed of the account and client picks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Said in every row's parameters (for example the store's size).
    #[arg(long, default_value = "")]
    pub store_note: String,
}

/// The routes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Availability,
    History,
    ClientsAt,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Availability => "GET …/availability?from=",
            Route::History => "GET …/clients/{c}/history?from=",
            Route::ClientsAt => "GET …/clients?at=",
        }
    }
}

/// A small deterministic generator (SplitMix64) for the picks.
struct Picks(u64);

impl Picks {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What the answers of one series held, summed (to tell an empty store from a full one).
#[derive(Default)]
struct Seen {
    answers: u64,
    clients: u64,
    connections: u64,
    incomplete: u64,
    queries: u64,
    /// Rows the walk used (down to the first event before the window).
    rows: u64,
    /// Rows the queries returned (whole pages).
    fetched: u64,
}

impl Seen {
    fn add(&mut self, o: &Seen) {
        self.answers += o.answers;
        self.clients += o.clients;
        self.connections += o.connections;
        self.incomplete += o.incomplete;
        self.queries += o.queries;
        self.rows += o.rows;
        self.fetched += o.fetched;
    }
}

/// One measured request: its latency and what its answer held.
type Sample = (u64, Seen);

/// Everything a request needs, shared by the workers.
struct Plan {
    http: String,
    client: reqwest::Client,
    accounts: usize,
    clients: usize,
    account_prefix: String,
    store: Option<Store>,
}

/// Runs every series and prints one JSON result line per series on stdout (and a summary
/// on stderr); fails on the first wrong answer.
pub async fn run(a: HistoryArgs) -> Result<(), BenchError> {
    if a.accounts == 0 || a.clients == 0 || a.requests == 0 {
        return Err(BenchError::Usage(
            "--accounts, --clients and --requests must be at least 1".into(),
        ));
    }
    let store = match &a.database_url {
        Some(url) => Some(super::open_store(url).await?),
        None => None,
    };
    let plan = Arc::new(Plan {
        http: a.http.trim_end_matches('/').to_string(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            // Cradle closes a keep-alive connection idle for `http.header_timeout_ms` (10 s by
            // default): never reuse one idle that long (a request sent on it as it closes fails).
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| BenchError::Target(e.to_string()))?,
        accounts: a.accounts,
        clients: a.clients,
        account_prefix: a.account_prefix.clone(),
        store,
    });
    let mut levels = vec![1];
    if a.concurrency > 1 {
        levels.push(a.concurrency);
    }
    let mut seed = a.seed;
    for (window, days) in [("24h", 1), ("30d", 30)] {
        for route in [Route::Availability, Route::History, Route::ClientsAt] {
            for &concurrency in &levels {
                seed = seed.wrapping_add(1);
                let r = series(
                    &plan,
                    &a,
                    Kind::Http(route),
                    window,
                    days,
                    concurrency,
                    seed,
                )
                .await?;
                emit(&r)?;
            }
        }
        if plan.store.is_some() {
            for walk in WALKS {
                let kind = Kind::Store(walk);
                seed = seed.wrapping_add(1);
                let r = series(&plan, &a, kind, window, days, 1, seed).await?;
                emit(&r)?;
            }
        }
    }
    Ok(())
}

/// What one series times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A route over HTTP.
    Http(Route),
    /// The availability route's reads in-process: the account's clients, then each client's
    /// stream backwards.
    Store(Walk),
}

/// How an in-process walk reads each client's stream backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walk {
    /// Rows asked by the first queries; the last size repeats.
    pages: &'static [u64],
    /// Every client's walk at once (as the route does), or one after another.
    concurrent: bool,
    /// Its name in the report.
    what: &'static str,
    /// Its short name on stderr.
    short: &'static str,
}

/// The in-process walks: the route's (pages of 4, then 64, since it stopped reading 64 rows
/// at first), one client after another and at once; the route's first version (64 at once);
/// and growing pages.
const WALKS: [Walk; 4] = [
    Walk {
        pages: &[4, 64],
        concurrent: false,
        what: "store only: one client after another, pages of 4 then 64 rows (the route's)",
        short: "store 4,64 one by one",
    },
    Walk {
        pages: &[4, 64],
        concurrent: true,
        what: "store only: every client at once, pages of 4 then 64 rows (the route's)",
        short: "store 4,64 at once",
    },
    Walk {
        pages: &[64],
        concurrent: true,
        what: "store only: every client at once, pages of 64 rows (the route's first version)",
        short: "store 64 at once",
    },
    Walk {
        pages: &[4, 16, 64],
        concurrent: true,
        what: "store only: every client at once, pages of 4, 16, then 64 rows",
        short: "store 4,16,64 at once",
    },
];

fn emit(r: &BenchResult) -> Result<(), BenchError> {
    let line = serde_json::to_string(r).map_err(|e| BenchError::Target(e.to_string()))?;
    println!("{line}");
    Ok(())
}

impl Seen {
    /// The result's note: spread, warm-up, and what an answer held.
    fn note(&self, warmup: usize, p90: f64, max: f64) -> String {
        let n = self.answers.max(1) as f64;
        let mut note = format!(
            "p90 {p90:.2} ms, max {max:.2} ms; {warmup} warm-up excluded; per answer {:.1} clients, {:.1} connections",
            self.clients as f64 / n,
            self.connections as f64 / n
        );
        if self.queries > 0 {
            note.push_str(&format!(
                "; per request {:.1} queries returning {:.1} rows, of which {:.1} used",
                self.queries as f64 / n,
                self.fetched as f64 / n,
                self.rows as f64 / n
            ));
        }
        if self.incomplete > 0 {
            note.push_str(&format!(
                "; {} clients answered with history_from_millis",
                self.incomplete
            ));
        }
        note
    }

    /// The store walk's queries and rows per request, for the progress line.
    fn per_request(&self) -> String {
        if self.queries == 0 {
            return String::new();
        }
        let n = self.answers.max(1) as f64;
        format!(
            ", {:.1} queries / {:.1} rows returned / {:.1} used per request",
            self.queries as f64 / n,
            self.fetched as f64 / n,
            self.rows as f64 / n
        )
    }
}

/// Warm-up, then `requests` measured requests of one kind and window with `concurrency` in
/// flight.
async fn series(
    plan: &Arc<Plan>,
    a: &HistoryArgs,
    kind: Kind,
    window: &str,
    days: i64,
    concurrency: usize,
    seed: u64,
) -> Result<BenchResult, BenchError> {
    let span = days * DAY;
    if a.warmup > 0 {
        drive(plan, kind, span, concurrency, a.warmup, seed ^ 0x5EED).await?;
    }
    let before = proc_stats(a.pid);
    let started = Instant::now();
    let samples = drive(plan, kind, span, concurrency, a.requests, seed).await?;
    let secs = started.elapsed().as_secs_f64();
    let after = proc_stats(a.pid);
    let mut seen = Seen::default();
    let mut micros: Vec<u64> = Vec::with_capacity(samples.len());
    for (us, s) in &samples {
        micros.push(*us);
        seen.add(s);
    }
    if seen.connections == 0 && matches!(kind, Kind::Http(_)) {
        return Err(BenchError::Target(format!(
            "{window} {kind:?}: {} answers and not one connection in them: is the store built \
             by scripts/history-perf, with accounts named `{}N`?",
            seen.answers, plan.account_prefix
        )));
    }
    micros.sort_unstable();
    let pick = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
    let (p50, p90, p99, max) = (pick(0.5), pick(0.9), pick(0.99), pick(1.0));
    let (what, target) = match kind {
        Kind::Http(route) => (route.name().to_string(), a.label.clone()),
        Kind::Store(walk) => (walk.what.to_string(), format!("{} (in-process)", a.label)),
    };
    let mut params = format!(
        "{what}, from = now − {window}, random of {} accounts × {} clients, {} at a time",
        a.accounts, a.clients, concurrency
    );
    if !a.store_note.is_empty() {
        params.push_str(&format!(", {}", a.store_note));
    }
    let mut r = BenchResult::new(&format!("history-{window}"), &target, params, "req/s");
    r.counted(samples.len() as u64, a.requests as u64, secs);
    r.latencies(micros.clone());
    if matches!(kind, Kind::Http(_)) {
        r.process(before, after);
    }
    let note = seen.note(a.warmup, p90, max);
    r.note = note;
    eprintln!(
        "{:<22} {window:>3} x{concurrency}: p50 {p50:8.2}  p90 {p90:8.2}  p99 {p99:8.2}  max {max:8.2} ms  ({:.0} req/s){}",
        match kind {
            Kind::Http(Route::Availability) => "availability",
            Kind::Http(Route::History) => "client history",
            Kind::Http(Route::ClientsAt) => "clients?at",
            Kind::Store(walk) => walk.short,
        },
        r.rate,
        seen.per_request()
    );
    Ok(r)
}

/// `count` requests with `concurrency` in flight; each sample is one request's latency (µs).
async fn drive(
    plan: &Arc<Plan>,
    kind: Kind,
    span: i64,
    concurrency: usize,
    count: usize,
    seed: u64,
) -> Result<Vec<Sample>, BenchError> {
    let workers = concurrency.clamp(1, count.max(1));
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let share = count / workers + usize::from(w < count % workers);
        let plan = plan.clone();
        let mut picks = Picks(seed.wrapping_mul(0x1000_0000_01B3).wrapping_add(w as u64));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(share);
            for _ in 0..share {
                let account = format!("{}{}", plan.account_prefix, picks.below(plan.accounts));
                let client = format!("c{}", picks.below(plan.clients));
                out.push(one(&plan, kind, span, &account, &client).await?);
            }
            Ok::<_, BenchError>(out)
        }));
    }
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.extend(
            t.await
                .map_err(|e| BenchError::Target(format!("worker: {e}")))??,
        );
    }
    Ok(all)
}

/// One request, timed from its send to its whole body, then checked.
async fn one(
    plan: &Plan,
    kind: Kind,
    span: i64,
    account: &str,
    client: &str,
) -> Result<Sample, BenchError> {
    let now = crate::clock::now_millis();
    let from = now - span;
    let route = match kind {
        Kind::Http(route) => route,
        Kind::Store(walk) => {
            let store = plan
                .store
                .as_ref()
                .ok_or_else(|| BenchError::Usage("store series need --database-url".to_string()))?;
            let started = Instant::now();
            let seen = store_walk(store, account, from, walk).await?;
            if seen.clients != plan.clients as u64 {
                return Err(BenchError::Target(format!(
                    "store: account {account} has {} clients, expected {}",
                    seen.clients, plan.clients
                )));
            }
            return Ok((started.elapsed().as_micros() as u64, seen));
        }
    };
    let url = match route {
        Route::Availability => format!(
            "{}/v1/accounts/{account}/availability?from={from}",
            plan.http
        ),
        Route::History => {
            format!(
                "{}/v1/accounts/{account}/clients/{client}/history?from={from}",
                plan.http
            )
        }
        Route::ClientsAt => format!("{}/v1/accounts/{account}/clients?at={from}", plan.http),
    };
    let started = Instant::now();
    let response = plan
        .client
        .get(&url)
        .send()
        .await
        .map_err(|e| BenchError::Target(format!("{url}: {}", chain(&e))))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| BenchError::Target(format!("{url}: {e}")))?;
    let micros = started.elapsed().as_micros() as u64;
    if !status.is_success() {
        return Err(BenchError::Target(format!(
            "{url}: {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| BenchError::Target(format!("{url}: not JSON: {e}")))?;
    let to = crate::clock::now_millis();
    let seen = match route {
        Route::Availability => check_availability(&v, account, from, to, plan.clients),
        Route::History => check_history(&v, account, client, from, to),
        Route::ClientsAt => check_clients_at(&v, account, from, plan.clients),
    }
    .map_err(|e| BenchError::Target(format!("{url}: wrong answer: {e}: {v}")))?;
    Ok((micros, seen))
}

/// An error with its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

fn int(v: &Value, field: &str) -> Result<i64, String> {
    v.get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("`{field}` is not an integer"))
}

fn opt_int(v: &Value, field: &str) -> Result<Option<i64>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("`{field}` is not an integer or null")),
    }
}

fn array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, String> {
    v.get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{field}` is not an array"))
}

fn same(v: &Value, field: &str, expected: &str) -> Result<(), String> {
    match v.get(field).and_then(Value::as_str) {
        Some(s) if s == expected => Ok(()),
        other => Err(format!("`{field}` is {other:?}, expected {expected:?}")),
    }
}

/// Every client `c0`… listed once, in client id order.
fn check_client_ids(ids: &[&str], clients: usize, all: bool) -> Result<(), String> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ids.len() || sorted != ids {
        return Err("clients not in client id order, or listed twice".into());
    }
    if let Some(bad) = ids.iter().find(|id| {
        id.strip_prefix('c')
            .and_then(|n| n.parse::<usize>().ok())
            .is_none_or(|n| n >= clients)
    }) {
        return Err(format!("unknown client {bad}"));
    }
    if all && ids.len() != clients {
        return Err(format!("{} clients, expected {clients}", ids.len()));
    }
    Ok(())
}

/// `…/availability`: every client, online time within the window's elapsed part, percent
/// within 0..100, flaps no more than connections.
fn check_availability(
    v: &Value,
    account: &str,
    from: i64,
    now: i64,
    clients: usize,
) -> Result<Seen, String> {
    same(v, "account_id", account)?;
    if int(v, "from")? != from {
        return Err("`from` is not the one asked for".into());
    }
    let to = int(v, "to")?;
    if to <= from || to > now {
        return Err(format!("`to` {to} is not after `from` and by now"));
    }
    let rows = array(v, "clients")?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut seen = Seen {
        answers: 1,
        ..Seen::default()
    };
    for c in rows {
        let id = c
            .get("client_id")
            .and_then(Value::as_str)
            .ok_or("a client without `client_id`")?;
        ids.push(id);
        let online = int(c, "online_millis")?;
        if !(0..=to - from).contains(&online) {
            return Err(format!(
                "{id}: online_millis {online} outside 0..{}",
                to - from
            ));
        }
        let percent = c
            .get("online_percent")
            .and_then(Value::as_f64)
            .ok_or("`online_percent` is not a number")?;
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("{id}: online_percent {percent} outside 0..100"));
        }
        let connections = int(c, "connections")?;
        let flaps = int(c, "flaps")?;
        if connections < 0 || flaps < 0 || flaps > connections {
            return Err(format!("{id}: {connections} connections, {flaps} flaps"));
        }
        if online > 0 && connections == 0 {
            return Err(format!("{id}: online {online} ms without a connection"));
        }
        seen.connections += connections as u64;
        seen.incomplete += u64::from(opt_int(c, "history_from_millis")?.is_some());
    }
    check_client_ids(&ids, clients, true)?;
    seen.clients = ids.len() as u64;
    Ok(seen)
}

/// `…/clients/{c}/history`: connections overlapping the window, in start order, each
/// consistent (an end after its start, open when it has no end, time in the window within
/// the window).
fn check_history(
    v: &Value,
    account: &str,
    client: &str,
    from: i64,
    now: i64,
) -> Result<Seen, String> {
    same(v, "account_id", account)?;
    same(v, "client_id", client)?;
    if int(v, "from")? != from {
        return Err("`from` is not the one asked for".into());
    }
    let to = int(v, "to")?;
    if to <= from || to > now {
        return Err(format!("`to` {to} is not after `from` and by now"));
    }
    let mut last_start = i64::MIN;
    let rows = array(v, "connections")?;
    for c in rows {
        let start = opt_int(c, "started_at_millis")?;
        let end = opt_int(c, "ended_at_millis")?;
        let open = c
            .get("open")
            .and_then(Value::as_bool)
            .ok_or("`open` is not a boolean")?;
        if open != end.is_none() {
            return Err("`open` disagrees with `ended_at_millis`".into());
        }
        if let (Some(s), Some(e)) = (start, end) {
            if e < s {
                return Err(format!("ends at {e} before its start {s}"));
            }
        }
        if let Some(s) = start {
            if s >= to {
                return Err(format!("starts at {s}, after the window"));
            }
            if s < last_start {
                return Err("connections not in start order".into());
            }
            last_start = s;
        }
        if let Some(e) = end {
            if e < from {
                return Err(format!("ended at {e}, before the window"));
            }
        }
        let inside = int(c, "in_window_millis")?;
        if !(0..=to - from).contains(&inside) {
            return Err(format!(
                "in_window_millis {inside} outside 0..{}",
                to - from
            ));
        }
    }
    Ok(Seen {
        answers: 1,
        clients: 1,
        connections: rows.len() as u64,
        incomplete: u64::from(opt_int(v, "history_from_millis")?.is_some()),
        ..Seen::default()
    })
}

/// `…/clients?at=`: the instant asked for, known clients in order, each state begun by then.
fn check_clients_at(v: &Value, account: &str, at: i64, clients: usize) -> Result<Seen, String> {
    same(v, "account_id", account)?;
    if int(v, "at")? != at {
        return Err("`at` is not the one asked for".into());
    }
    let rows = array(v, "clients")?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut seen = Seen {
        answers: 1,
        ..Seen::default()
    };
    for c in rows {
        let id = c
            .get("client_id")
            .and_then(Value::as_str)
            .ok_or("a client without `client_id`")?;
        ids.push(id);
        let connected = c
            .get("connected")
            .and_then(Value::as_bool)
            .ok_or("`connected` is not a boolean")?;
        let since = int(c, "since_millis")?;
        if since > at {
            return Err(format!("{id}: in its state since {since}, after `at`"));
        }
        seen.connections += u64::from(connected);
        seen.incomplete += u64::from(opt_int(c, "history_from_millis")?.is_some());
    }
    check_client_ids(&ids, clients, false)?;
    seen.clients = ids.len() as u64;
    // A client listed is one whose state at `at` is known: count them as "connections" so
    // an answer listing clients is never taken for an empty store.
    seen.connections = seen.connections.max(seen.clients);
    Ok(seen)
}

/// The availability route's reads, in-process: the account's clients from the read model,
/// then each client's connection stream backwards in pages of `walk.pages`, down to the first
/// `connected` or `disconnected` stamped before the window's start less the reorder window.
async fn store_walk(
    store: &Store,
    account: &str,
    from: i64,
    walk: Walk,
) -> Result<Seen, BenchError> {
    let clients = store
        .clients(account)
        .await
        .map_err(|e| BenchError::Target(e.to_string()))?;
    let boundary = from - REORDER_MILLIS;
    let mut seen = Seen {
        answers: 1,
        clients: clients.len() as u64,
        queries: 1,
        rows: clients.len() as u64,
        fetched: clients.len() as u64,
        ..Seen::default()
    };
    let read = |client: String| async move {
        let stream = format!("connection/{account}/{client}");
        let (mut queries, mut rows, mut before) = (0_u64, 0_u64, i64::MAX);
        let (mut connections, mut fetched) = (0_u64, 0_u64);
        loop {
            let limit = walk.pages[(queries as usize).min(walk.pages.len() - 1)].min(PAGE);
            let page = store
                .stream_back(&stream, before, limit)
                .await
                .map_err(|e| BenchError::Target(e.to_string()))?;
            queries += 1;
            fetched += page.len() as u64;
            let full = page.len() as u64 == limit;
            let mut stop = false;
            for e in &page {
                rows += 1;
                before = e.stream_version;
                connections += u64::from(e.event_type == "connection.connected");
                if e.at_millis < boundary
                    && matches!(
                        e.event_type.as_str(),
                        "connection.connected" | "connection.disconnected"
                    )
                {
                    stop = true;
                    break;
                }
            }
            if stop || !full {
                return Ok::<_, BenchError>((queries, rows, connections, fetched));
            }
        }
    };
    let walked: Vec<(u64, u64, u64, u64)> = if walk.concurrent {
        futures_util::future::try_join_all(clients.into_iter().map(|c| read(c.client_id))).await?
    } else {
        let mut out = Vec::new();
        for c in clients {
            out.push(read(c.client_id).await?);
        }
        out
    };
    for (q, r, c, f) in walked {
        seen.queries += q;
        seen.rows += r;
        seen.connections += c;
        seen.fetched += f;
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_availability_answer_with_every_client_in_range_passes() {
        let v = serde_json::json!({
            "account_id": "acct-1", "from": 1000, "to": 2000, "flap_threshold_millis": 60000,
            "clients": [
                {"client_id": "c0", "online_millis": 1000, "online_percent": 100.0,
                 "connections": 1, "flaps": 0, "history_from_millis": null},
                {"client_id": "c1", "online_millis": 0, "online_percent": 0.0,
                 "connections": 0, "flaps": 0, "history_from_millis": null}
            ]
        });
        let seen = check_availability(&v, "acct-1", 1000, 3000, 2).unwrap();
        assert_eq!((seen.clients, seen.connections), (2, 1));
        // A client missing, or a percentage out of range, fails.
        assert!(check_availability(&v, "acct-1", 1000, 3000, 3).is_err());
        let mut bad = v.clone();
        bad["clients"][0]["online_percent"] = serde_json::json!(100.5);
        assert!(check_availability(&bad, "acct-1", 1000, 3000, 2).is_err());
    }

    #[test]
    fn a_history_answer_out_of_order_or_outside_the_window_fails() {
        let entry = |s: i64, e: Option<i64>| {
            serde_json::json!({"connection_id": "k", "started_at_millis": s,
                "ended_at_millis": e, "open": e.is_none(), "in_window_millis": 10})
        };
        let v = |rows: Vec<Value>| {
            serde_json::json!({"account_id": "a", "client_id": "c0", "from": 100, "to": 200,
                "history_from_millis": null, "connections": rows})
        };
        assert!(check_history(
            &v(vec![entry(50, Some(150)), entry(160, None)]),
            "a",
            "c0",
            100,
            300
        )
        .is_ok());
        assert!(check_history(
            &v(vec![entry(160, None), entry(50, Some(150))]),
            "a",
            "c0",
            100,
            300
        )
        .is_err());
        assert!(check_history(&v(vec![entry(10, Some(20))]), "a", "c0", 100, 300).is_err());
    }

    #[test]
    fn picks_stay_below_their_bound() {
        let mut p = Picks(7);
        assert!((0..1000).all(|_| p.below(10) < 10));
    }
}
