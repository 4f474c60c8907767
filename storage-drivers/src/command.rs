//! Running external tools (qemu-img, btrfs) with a time bound and readable errors.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Stderr kept in an error message; qemu-img and btrfs put the reason in the first lines.
const MAX_STDERR_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start {program}; is it installed?")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout_s} s and was killed")]
    Timeout { command: String, timeout_s: u64 },
    #[error("`{command}` printed output that could not be parsed: {reason}")]
    BadOutput { command: String, reason: String },
}

/// Output of a successful command.
#[derive(Debug)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Run `program args…`, wait at most `timeout_s`, fail on non-zero exit. The child is
/// killed if the future is dropped (`kill_on_drop`), so a cancelled operation does not
/// leave a writer behind its temporary file.
pub async fn run<I, S>(
    program: &str,
    args: I,
    timeout_s: u64,
) -> Result<CommandOutput, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = render(program, &args);
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| CommandError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let out = match tokio::time::timeout(Duration::from_secs(timeout_s), child.wait_with_output())
        .await
    {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => {
            return Err(CommandError::Spawn {
                program: program.to_owned(),
                source,
            });
        }
        Err(_) => return Err(CommandError::Timeout { command, timeout_s }),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let mut msg = stderr.trim().to_owned();
        if msg.is_empty() {
            msg = stdout.trim().to_owned();
        }
        truncate_utf8(&mut msg, MAX_STDERR_BYTES);
        return Err(CommandError::Failed {
            command,
            status: out.status.to_string(),
            stderr: msg,
        });
    }
    Ok(CommandOutput { stdout, stderr })
}

fn render(program: &str, args: &[std::ffi::OsString]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn truncate_utf8(s: &mut String, max_bytes: usize) {
    if s.len() > max_bytes {
        let mut cut = max_bytes;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_exit_status_and_stderr() {
        let err = run("sh", ["-c", "echo boom >&2; exit 3"], 5)
            .await
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains('3'), "{msg}");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = run("gpve-no-such-program", ["x"], 5)
            .await
            .expect_err("must fail");
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }

    #[tokio::test]
    async fn times_out() {
        let err = run("sleep", ["5"], 1).await.expect_err("must time out");
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
    }
}
