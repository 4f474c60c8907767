//! Background tasks feeding the console: a poller (tree + the selected actor) and the
//! event watcher. Both retry forever, so the console survives a server restart.

use std::time::Duration;

use gpve_api::client::Client;
use tokio::sync::{mpsc, watch};

use super::app::Update;

/// Wait between reconnection attempts of the event stream.
pub const EVENTS_RETRY_INTERVAL_MS: u64 = 1_000;

fn reason(e: &gpve_api::client::ClientError) -> String {
    // The first line only: the status bar has one.
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Poll the tree (and the selected actor) every `interval_ms` until `tx` closes.
pub async fn poll(
    client: Client,
    node: Option<String>,
    interval_ms: u64,
    selected: watch::Receiver<Option<String>>,
    tx: mpsc::Sender<Update>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let update = match client.actors(node.as_deref()).await {
            Ok(list) => Update::Tree(list),
            Err(e) => Update::PollFailed(reason(&e)),
        };
        let ok = matches!(update, Update::Tree(_));
        if tx.send(update).await.is_err() {
            return;
        }
        let path = selected.borrow().clone();
        if let (true, Some(path)) = (ok, path) {
            // An actor that vanished between the two calls is not an error worth showing.
            if let Ok(d) = client.actor_on(node.as_deref(), &path).await
                && tx.send(Update::Detail(Box::new(d))).await.is_err()
            {
                return;
            }
        }
    }
}

/// Follow the event stream, reconnecting after failures, until `tx` closes.
pub async fn watch_events(client: Client, node: Option<String>, tx: mpsc::Sender<Update>) {
    loop {
        match client.actor_events(node.as_deref()).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(line)) => {
                        if tx.send(Update::Event(line)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        if tx
                            .send(Update::EventsDown("the server closed the stream".into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        break;
                    }
                    Err(e) => {
                        if tx.send(Update::EventsDown(reason(&e))).await.is_err() {
                            return;
                        }
                        break;
                    }
                }
            },
            Err(e) => {
                if tx.send(Update::EventsDown(reason(&e))).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(EVENTS_RETRY_INTERVAL_MS)).await;
    }
}
