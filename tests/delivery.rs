//! Each message reaches each subscription once: a SUBSCRIBE that races a retained PUBLISH on a
//! matching topic gets that message either as retained or live, never both (the embedded
//! broker took a subscription's retained messages when it first served it, not when it was
//! made: a retained PUBLISH in between went twice).
//!
//! A fleet shaped as baby stations are: every device connects with a retained Will, publishes a
//! retained QoS 1 `connected` status and subscribes its account's statuses at once (QoS 0 and 1
//! alternately); Debian's `mosquitto_sub` (MQTT 3.1.1 and 5) follows some accounts while the
//! fleet comes up. No subscriber may get any message twice.

use cradle_testkit as common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{status, Cradle};
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};

const ACCOUNTS: usize = 30;
const PER_ACCOUNT: usize = 10;

fn status_topic(account: usize, client: usize) -> String {
    format!("accounts/fam-{account}/clients/dev-{client}/status")
}

/// One device of the fleet: Will, retained `connected`, then its account's statuses; what it
/// receives goes to `seen` as (topic, payload).
async fn device(
    port: u16,
    account: usize,
    client: usize,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let topic = status_topic(account, client);
    let k = format!("k-{account}-{client}");
    let mut o = MqttOptions::new(format!("a{account}-d{client}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_last_will(LastWill::new(
        &topic,
        status("disconnected", &k, 1, Some("lost")),
        QoS::AtLeastOnce,
        true,
    ));
    let (c, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let qos = if client % 2 == 0 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let filter = format!("accounts/fam-{account}/clients/+/status");
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = c
                        .publish(
                            &topic,
                            QoS::AtLeastOnce,
                            true,
                            status("connected", &k, 2, None),
                        )
                        .await;
                    let _ = c.subscribe(&filter, qos).await;
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// Every (topic, payload) of `seen` at most once; how many topics were heard.
fn once_each(who: &str, seen: &[(String, Vec<u8>)]) -> usize {
    let mut count: HashMap<&(String, Vec<u8>), usize> = HashMap::new();
    for m in seen {
        *count.entry(m).or_default() += 1;
    }
    for ((topic, payload), n) in &count {
        assert_eq!(
            *n,
            1,
            "{who} got {topic} {} {n} times",
            String::from_utf8_lossy(payload)
        );
    }
    let topics: std::collections::HashSet<&String> = seen.iter().map(|(t, _)| t).collect();
    topics.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_racing_a_retained_publish_gets_it_once() {
    let third_party = common::mosquitto_available();
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let port = cradle.mqtt_port;

    // mosquitto_sub follows three accounts (3.1.1, 5, 3.1.1 at QoS 0) from before the fleet
    // comes up to after: live and retained interleave for it too.
    let subs: Vec<_> = if third_party {
        [
            (0, "mqttv311", "1"),
            (1, "mqttv5", "1"),
            (2, "mqttv311", "0"),
        ]
        .into_iter()
        .map(|(a, v, q)| {
            let child = Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", v, "-q", q])
                .args(["-t", &format!("accounts/fam-{a}/clients/+/status"), "-v"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto_sub");
            (format!("mosquitto_sub {v} q{q} fam-{a}"), child)
        })
        .collect()
    } else {
        Vec::new()
    };

    let mut fleet = Vec::new();
    for client in 0..PER_ACCOUNT {
        for account in 0..ACCOUNTS {
            fleet.push(((account, client), device(port, account, client).await));
        }
    }
    // Let every status arrive everywhere.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut deliveries = 0;
    for ((account, client), mut rx) in fleet {
        let mut seen = Vec::new();
        while let Ok(m) = rx.try_recv() {
            seen.push(m);
        }
        deliveries += seen.len();
        let who = format!("fam-{account}/dev-{client}");
        let heard = once_each(&who, &seen);
        assert_eq!(
            heard, PER_ACCOUNT,
            "{who} heard every client of its account"
        );
        assert!(
            seen.iter()
                .all(|(t, _)| t.starts_with(&format!("accounts/fam-{account}/"))),
            "{who} heard only its account"
        );
    }
    eprintln!(
        "{deliveries} deliveries to {} devices",
        ACCOUNTS * PER_ACCOUNT
    );

    for (who, child) in subs {
        common::signal(child.id(), "TERM");
        let out = child.wait_with_output().unwrap();
        let seen: Vec<(String, Vec<u8>)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, p)| (t.to_string(), p.as_bytes().to_vec()))
            .collect();
        let heard = once_each(&who, &seen);
        assert_eq!(heard, PER_ACCOUNT, "{who} heard every client: {seen:?}");
    }
}
