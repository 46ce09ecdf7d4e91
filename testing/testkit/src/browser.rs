//! Headless Chromium, for tests of what a person sees: a page loaded over
//! HTTP or from a file with its scripts run, its DOM as they left it, what
//! it wrote to the console (Content-Security-Policy violations included),
//! and a screenshot of it. Chromium
//! comes from `scripts/ensure-chromium`; without it these tests fail, they
//! are never skipped.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The Chromium binary: `$CHROMIUM`, else `chromium` on the `PATH`, else
/// Debian's `/usr/bin/chromium`. Panics when there is none.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::split_paths(&path).map(|d| d.join("chromium")))
        .chain([PathBuf::from("/usr/bin/chromium")]);
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("chromium is not installed: run scripts/ensure-chromium");
}

/// A page as Chromium left it.
#[derive(Debug)]
pub struct Rendered {
    /// The DOM, serialized.
    pub dom: String,
    /// The page's console messages, one a line.
    pub console: Vec<String>,
}

/// Loads `url` in headless Chromium with a fresh profile, lets the page run
/// for `virtual_time` of virtual time (timers and network settle; the wall
/// clock wait is usually shorter), and returns its DOM and console.
pub async fn render(url: &str, virtual_time: Duration) -> Rendered {
    let profile = fresh_profile();
    let output = run(headless(&profile)
        // Console messages go to stderr as `INFO:CONSOLE` lines.
        .args(["--enable-logging=stderr", "--log-level=0"])
        .arg(format!("--virtual-time-budget={}", virtual_time.as_millis()))
        .arg("--dump-dom")
        .arg(url))
    .await;
    remove_dir_eventually(&profile);
    let stderr = String::from_utf8_lossy(&output.stderr);
    Rendered {
        dom: String::from_utf8(output.stdout).unwrap(),
        console: stderr
            .lines()
            .filter(|line| line.contains(":CONSOLE"))
            .map(str::to_owned)
            .collect(),
    }
}

/// A PNG of `url` as Chromium lays it out and paints it in a window
/// `width` × `height` pixels, without scrollbars.
pub async fn screenshot(url: &str, width: u32, height: u32) -> Vec<u8> {
    let profile = fresh_profile();
    let png = profile.with_extension("png");
    run(headless(&profile)
        .arg("--hide-scrollbars")
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url))
    .await;
    remove_dir_eventually(&profile);
    let bytes = std::fs::read(&png).unwrap();
    let _ = std::fs::remove_file(&png);
    bytes
}

/// A Chromium command with the flags every headless run here takes: no
/// sandbox (the tests run as root), no GPU, nothing fetched in the
/// background, and its own profile directory.
fn headless(profile: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `command` to its end (at most 2 minutes) and asserts it succeeded.
async fn run(command: &mut tokio::process::Command) -> std::process::Output {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("chromium answers within 2 minutes")
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A profile directory no other run uses.
fn fresh_profile() -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("turnstile-chromium-{nanos:x}-{:04x}", rand::random::<u16>()))
}

/// Removes `dir`, best effort: Chromium's helper processes may still be
/// writing to a profile for a moment after the browser exits.
pub fn remove_dir_eventually(dir: &Path) {
    for _ in 0..10 {
        if std::fs::remove_dir_all(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
