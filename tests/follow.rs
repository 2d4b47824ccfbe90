//! Following the log in commit order on PostgreSQL (`Store::settled_position`).
//!
//! A position is taken at insert and concurrent transactions commit in any order, so a
//! reader that reads `position > cursor` with no bound can pass over a smaller position that
//! commits later, and never see it. These tests show the hazard deterministically (one
//! append held open while a later one commits), that the settled position waits for the
//! append in flight, and, under load (eight writers committing in random order), that a
//! follower reading only up to the settled position gets every event once, in order.
//!
//! PostgreSQL only (SQLite has one writer at a time); skipped without it unless
//! `CRADLE_REQUIRE_POSTGRES=1`.

use cradle_testkit as common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cradle::config::StoreConfig;
use cradle::store::{EventFilter, NewEvent, Store, StoredEvent};

/// A fresh PostgreSQL database's store with a pool of `connections`, or `None` to skip.
async fn postgres_store(connections: u32) -> Option<Store> {
    let server = common::postgres_server_url()?;
    let url = common::fresh_postgres_database(&server).await;
    let config = StoreConfig {
        database_url: url,
        max_connections: connections,
        ..StoreConfig::default()
    };
    Some(
        Store::connect(&config)
            .await
            .expect("connect to the test database"),
    )
}

/// One event of stream `stream` at `version`, named by `key`.
fn event(stream: &str, version: i64, key: &str) -> NewEvent {
    NewEvent {
        account_id: "follow".into(),
        stream: stream.into(),
        stream_version: version,
        event_type: "test.appended",
        event_version: 1,
        data: serde_json::json!({ "key": key }),
        at_millis: 1_700_000_000_000,
        idempotency_key: key.into(),
    }
}

/// A filter of every event up to `settled` (a reader's bound).
fn upto(settled: i64) -> EventFilter {
    EventFilter {
        upto: Some(settled),
        ..EventFilter::default()
    }
}

fn keys(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.data["key"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// T1 takes position p and stays open; T2 takes p + 1 and commits. A reader with no bound
/// sees p + 1 without p (and, moving its cursor there, would never read p). The settled
/// position is not given while T1 is open; once T1 commits it covers both, and reading up to
/// it returns A then B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_without_a_bound_skips_an_append_in_flight_and_the_settled_position_waits_for_it()
{
    let Some(store) = postgres_store(8).await else {
        return;
    };
    let t1 = store.begin().await.unwrap();
    t1.append(&[event("s/a", 1, "A")], 1).await.unwrap();
    let t2 = store.begin().await.unwrap();
    t2.append(&[event("s/b", 1, "B")], 2).await.unwrap();
    t2.commit().await.unwrap();

    // The hazard: B is visible, A (a smaller position, still uncommitted) is not.
    let naive = store
        .log(None, 0, 100, &EventFilter::default())
        .await
        .unwrap();
    assert_eq!(keys(&naive), ["B"], "a naive read sees B alone: {naive:?}");
    let b_position = naive[0].position;

    // The settled position waits for T1.
    let asking = store.clone();
    let settled = tokio::spawn(async move { asking.settled_position().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !settled.is_finished(),
        "settled_position returned while an append below B's position was in flight: {:?}",
        settled.await
    );
    t1.commit().await.unwrap();
    let settled = tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .expect("settled_position returns once T1 commits")
        .unwrap()
        .expect("settled_position");
    assert!(
        settled >= b_position,
        "settled {settled} covers B at {b_position}"
    );

    let read = store.log(None, 0, 100, &upto(settled)).await.unwrap();
    assert_eq!(
        keys(&read),
        ["A", "B"],
        "A and B in position order: {read:?}"
    );
    assert!(
        read[0].position < read[1].position && read[1].position == b_position,
        "A took the smaller position though it committed later: {read:?}"
    );
    // The hazard was real: a reader that had moved its cursor to B would never see A.
    let after_b = store
        .log(None, b_position, 100, &EventFilter::default())
        .await
        .unwrap();
    assert!(after_b.is_empty(), "{after_b:?}");
    store.close().await.unwrap();
}

/// A small xorshift generator (no `rand` dependency): the pauses inside transactions.
struct Pauses(u64);

impl Pauses {
    fn next_millis(&mut self, below: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % below
    }
}

const WRITERS: usize = 8;
const PER_WRITER: i64 = 50;

/// Eight writers append 50 single-event transactions each, pausing 0–15 ms (at random)
/// between the append and the commit, so that positions commit out of order. A follower
/// that reads up to the settled position and moves its cursor to the last position read (or
/// to the settled position when nothing is there) gets exactly the 400 events, in strictly
/// increasing positions, each writer's every version once, and is never handed a position at
/// or below one it has already seen. A naive follower (no bound) runs alongside: the number
/// of events it misses shows how often the hazard came up (reported, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_reading_up_to_the_settled_position_gets_every_concurrent_append_once_in_order()
{
    let Some(store) = postgres_store(20).await else {
        return;
    };
    let started = Instant::now();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("pause seed {seed}");

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let mut pauses = Pauses(seed.wrapping_mul(w as u64 + 1) | 1);
        writers.push(tokio::spawn(async move {
            for v in 1..=PER_WRITER {
                let tx = store.begin().await.unwrap();
                let key = format!("w{w}-v{v}");
                tx.append(&[event(&format!("s/{w}"), v, &key)], v)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(pauses.next_millis(16))).await;
                tx.commit().await.unwrap();
            }
        }));
    }

    // The naive follower: `position > cursor` with no bound, until the writers are done
    // and nothing more is there.
    let writers_done = Arc::new(AtomicBool::new(false));
    let naive = {
        let store = store.clone();
        let done = writers_done.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut read = 0usize;
            loop {
                let finished = done.load(Ordering::Acquire);
                let page = store
                    .log(None, cursor, 500, &EventFilter::default())
                    .await
                    .unwrap();
                read += page.len();
                match page.last() {
                    Some(last) => cursor = last.position,
                    None if finished => return read,
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        })
    };

    // The follower under test.
    let mut cursor = 0i64;
    let mut received: Vec<StoredEvent> = Vec::new();
    let mut max_seen = 0i64;
    let mut backwards: Vec<(i64, i64)> = Vec::new();
    let mut reads = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < WRITERS * PER_WRITER as usize {
        assert!(
            Instant::now() < deadline,
            "the follower read only {} events in 30 s (cursor {cursor})",
            received.len()
        );
        let settled = store.settled_position().await.expect("settled position");
        let page = store.log(None, cursor, 500, &upto(settled)).await.unwrap();
        reads += 1;
        for e in &page {
            if e.position <= max_seen {
                backwards.push((max_seen, e.position));
            }
            max_seen = max_seen.max(e.position);
        }
        match page.last() {
            Some(last) => cursor = last.position,
            None => {
                cursor = cursor.max(settled);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        received.extend(page);
    }
    for w in writers {
        w.await.unwrap();
    }
    writers_done.store(true, Ordering::Release);
    let naive_read = naive.await.unwrap();

    // Nothing more is there, and nothing was left behind the cursor.
    let settled = store.settled_position().await.unwrap();
    let more = store.log(None, cursor, 500, &upto(settled)).await.unwrap();
    assert!(more.is_empty(), "events after the 400: {more:?}");
    assert!(
        backwards.is_empty(),
        "the follower was handed positions at or below one it had seen (seen, got): {backwards:?}"
    );
    assert_eq!(received.len(), WRITERS * PER_WRITER as usize);
    let positions: Vec<i64> = received.iter().map(|e| e.position).collect();
    assert!(
        positions.windows(2).all(|p| p[0] < p[1]),
        "positions strictly increase: {positions:?}"
    );
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    for e in &received {
        *seen
            .entry((e.stream.clone(), e.stream_version))
            .or_default() += 1;
    }
    for w in 0..WRITERS {
        for v in 1..=PER_WRITER {
            let n = seen.get(&(format!("s/{w}"), v)).copied().unwrap_or(0);
            assert_eq!(n, 1, "writer {w} version {v} received {n} times");
        }
    }
    assert_eq!(seen.len(), WRITERS * PER_WRITER as usize);
    assert_eq!(received, store.all_events().await.unwrap(), "the whole log");
    eprintln!(
        "{} events in {:?} over {reads} reads; the naive follower read {naive_read} of them \
         (missed {})",
        received.len(),
        started.elapsed(),
        WRITERS * PER_WRITER as usize - naive_read.min(WRITERS * PER_WRITER as usize)
    );
    store.close().await.unwrap();
}
