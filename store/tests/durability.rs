//! Durability of the redb backend under a real `kill -9`.
//!
//! The test re-executes its own binary as a child running the ignored test `child_writer`,
//! which writes keys through `transact` and prints each acknowledged key. The parent kills it
//! with SIGKILL mid-way, reopens the database and checks every acknowledged key is there.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use gpve_store::{Key, Store};

const DB_ENV: &str = "GPVE_STORE_DURABILITY_DB";
/// The child would write this many keys; it is killed long before.
const CHILD_KEYS: u64 = 1_000_000;
/// Acknowledgements the parent waits for before killing the child.
const KILL_AFTER_ACKS: usize = 300;

fn key(i: u64) -> Key {
    Key::pack(&("durability", i))
}

/// Child half: only meaningful when the parent sets the database path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for kill_9_loses_no_acknowledged_write"]
async fn child_writer() {
    let Some(path) = std::env::var_os(DB_ENV) else {
        println!("skipped: run only as the child of kill_9_loses_no_acknowledged_write");
        return;
    };
    let store = Store::open_redb(&PathBuf::from(path)).expect("child opens redb");
    let mut out = std::io::stdout().lock();
    for i in 0..CHILD_KEYS {
        let k = key(i);
        store
            .transact(|tx| {
                tx.set(&k, &i.to_be_bytes());
                Box::pin(async { Ok(()) })
            })
            .await
            .expect("child write");
        // Printed only after `transact` returned Ok: this line is the acknowledgement.
        writeln!(out, "ACK {i}").expect("stdout");
        out.flush().expect("flush stdout");
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("durable.redb");
    let exe = std::env::current_exe().expect("own test binary");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DB_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child writer");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked: Vec<u64> = Vec::new();
    while acked.len() < KILL_AFTER_ACKS {
        let line = lines
            .next()
            .expect("child exited before enough acknowledgements")
            .expect("read child stdout");
        if let Some(i) = line.strip_prefix("ACK ") {
            acked.push(i.parse().expect("ACK number"));
        }
    }
    // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no clean shutdown.
    child.kill().expect("SIGKILL child");
    let status = child.wait().expect("reap child");
    assert!(
        !status.success(),
        "the child was killed, not finished: {status:?}"
    );
    // Acknowledgements already in the pipe when the child died count too.
    for line in lines {
        let line = line.expect("read child stdout");
        if let Some(i) = line.strip_prefix("ACK ") {
            acked.push(i.parse().expect("ACK number"));
        }
    }
    assert!((acked.len() as u64) < CHILD_KEYS, "killed mid-way");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::open_redb(&db).expect("reopen after kill -9");
        for &i in &acked {
            let v = store.get(&key(i)).await.expect("read");
            assert_eq!(
                v,
                Some(i.to_be_bytes().to_vec()),
                "acknowledged key {i} lost"
            );
        }
        println!("{} acknowledged keys survived kill -9", acked.len());
    });
}
