//! `gpvectl console`: a terminal UI over the supervision trees (ratatui + crossterm).
//!
//! Three sources feed one loop: the poller (tree every `--refresh-ms`, plus the selected
//! actor), the event watcher (`/api/v1/actors/events`), and a blocking thread reading keys.
//! The loop redraws after each batch of updates, so the screen is at most one refresh
//! interval old. Both feeds retry forever: a restarted server shows as "disconnected,
//! retrying" and then recovers with the same session (tickets survive server restarts).

mod app;
mod feed;
mod ui;

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEventKind};
use gpve_api::client::Client;
use tokio::sync::{mpsc, watch};

use app::{App, Key, Update};

/// Longest wait for a key before the reader thread checks whether the console is gone.
const KEY_POLL_INTERVAL_MS: u64 = 100;
/// Bound of the update queue between the feeds and the screen.
const UPDATE_QUEUE_LEN: usize = 256;
/// Fastest accepted refresh interval.
const MIN_REFRESH_MS: u64 = 200;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Only this node's actors.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// How often the tree is polled, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    refresh_ms: u64,
}

fn to_key(code: KeyCode) -> Option<Key> {
    Some(match code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// Read keys on a blocking thread until the receiver is gone.
fn read_keys(tx: mpsc::Sender<Key>) {
    loop {
        if tx.is_closed() {
            return;
        }
        match event::poll(Duration::from_millis(KEY_POLL_INTERVAL_MS)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        match event::read() {
            Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                let key = if k.modifiers.contains(event::KeyModifiers::CONTROL) {
                    match k.code {
                        KeyCode::Char('c') => Some(Key::Char('q')),
                        // A newline typed before raw mode arrives as Ctrl+J (or Ctrl+M).
                        KeyCode::Char('j' | 'm') => Some(Key::Enter),
                        _ => None,
                    }
                } else {
                    to_key(k.code)
                };
                if let Some(key) = key
                    && tx.blocking_send(key).is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

pub async fn run(client: Client, args: ConsoleArgs) -> anyhow::Result<()> {
    let refresh_ms = args.refresh_ms.max(MIN_REFRESH_MS);
    let server = client.server_url().to_string();
    let (update_tx, mut updates) = mpsc::channel::<Update>(UPDATE_QUEUE_LEN);
    let (selected_tx, selected_rx) = watch::channel::<Option<String>>(None);
    let (key_tx, mut keys) = mpsc::channel::<Key>(64);

    let poller = tokio::spawn(feed::poll(
        client.clone(),
        args.node.clone(),
        refresh_ms,
        selected_rx,
        update_tx.clone(),
    ));
    let watcher = tokio::spawn(feed::watch_events(client, args.node, update_tx));
    let reader = std::thread::spawn(move || read_keys(key_tx));

    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let mut app = App::new(server);
    let result = async {
        loop {
            terminal
                .draw(|f| ui::draw(f, &mut app))
                .context("cannot draw")?;
            let page = ui::table_height(terminal.size().map(|s| s.height).unwrap_or(24));
            tokio::select! {
                Some(key) = keys.recv() => app.key(key, page),
                Some(update) = updates.recv() => {
                    app.apply(update);
                    // Apply whatever else is queued before drawing again.
                    while let Ok(more) = updates.try_recv() {
                        app.apply(more);
                    }
                }
                else => break,
            }
            if selected_tx.borrow().as_ref() != app.selected.as_ref() {
                let _ = selected_tx.send(app.selected.clone());
            }
            if app.quit {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    ratatui::restore();
    poller.abort();
    watcher.abort();
    drop(keys);
    // The reader notices the closed channel within one key poll interval.
    let _ = reader.join();
    result
}
