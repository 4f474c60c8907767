//! Running the real `gpvectl` binary in tests: with a config file of its own, input on
//! stdin, and its output checked.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Run `gpvectl args` with `GPVE_CONFIG=config`, feeding `stdin`.
pub fn ctl(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpvectl"))
        .args(args)
        .env("GPVE_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gpvectl");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("gpvectl output")
}

/// The standard output of a run that must have succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "gpvectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `gpvectl login` as root@pam against `server`, pinning its certificate `fingerprint`;
/// the session lands in `config`.
pub fn login_root(config: &Path, server: &str, fingerprint: &str, password: &str) {
    ok(&ctl(
        config,
        &[
            "login",
            "--server",
            server,
            "--user",
            "root@pam",
            "--password-stdin",
            "--fingerprint",
            fingerprint,
        ],
        &format!("{password}\n"),
    ));
}
