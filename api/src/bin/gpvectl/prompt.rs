//! Reading a password without echo from the controlling terminal (not stdin, which may
//! carry data), or the first line of stdin for `--password-stdin`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;

use anyhow::{Context, bail};

/// Upper bound on a password read from stdin, so a mistaken pipe cannot exhaust memory.
const MAX_PASSWORD_LEN_BYTES: u64 = 4096;

pub fn read_password_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    BufReader::new(std::io::stdin().lock().take(MAX_PASSWORD_LEN_BYTES))
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("--password-stdin: stdin held no password");
    }
    Ok(password)
}

struct EchoGuard {
    fd: i32,
    original: libc::termios,
}

impl Drop for EchoGuard {
    fn drop(&mut self) {
        // SAFETY: `fd` is the terminal opened by `prompt_password`, still open while the
        // guard lives; `original` is a termios value tcgetattr filled in.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.original);
        }
    }
}

pub fn prompt_password(prompt: &str) -> anyhow::Result<String> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for the password on: pipe it with --password-stdin")?;
    let fd = tty.as_raw_fd();
    let mut term = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `fd` is an open descriptor owned by `tty`; tcgetattr writes a complete
    // termios into the valid pointer or fails.
    if unsafe { libc::tcgetattr(fd, term.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot read terminal settings");
    }
    // SAFETY: tcgetattr returned 0, so it initialised the struct.
    let original = unsafe { term.assume_init() };
    let mut silent = original;
    silent.c_lflag &= !libc::ECHO;
    silent.c_lflag |= libc::ECHONL;
    // SAFETY: `fd` is open, `silent` is a valid termios derived from the current one.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &silent) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot turn off terminal echo");
    }
    let _guard = EchoGuard { fd, original };
    let mut writer = &tty;
    writer
        .write_all(prompt.as_bytes())
        .and_then(|()| writer.flush())
        .context("cannot write the prompt")?;
    let mut line = String::new();
    BufReader::new((&tty).take(MAX_PASSWORD_LEN_BYTES))
        .read_line(&mut line)
        .context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
