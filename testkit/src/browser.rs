//! Headless Chromium, for tests of what a person sees: a page loaded over
//! HTTP with its scripts run, its DOM as they left it, and what it wrote to
//! the console (Content-Security-Policy violations included). Chromium
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
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let profile = std::env::temp_dir().join(format!("turnstile-chromium-{nanos:x}-{:04x}", rand::random::<u16>()));
    let child = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Console messages go to stderr as `INFO:CONSOLE` lines.
            "--enable-logging=stderr",
            "--log-level=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={}", virtual_time.as_millis()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("chromium answers within 2 minutes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed: {}\n{stderr}", output.status);
    remove_profile(&profile);
    Rendered {
        dom: String::from_utf8(output.stdout).unwrap(),
        console: stderr
            .lines()
            .filter(|line| line.contains(":CONSOLE"))
            .map(str::to_owned)
            .collect(),
    }
}

/// Best effort: Chromium's helper processes may still be writing to their
/// profile for a moment after the browser exits.
fn remove_profile(dir: &Path) {
    for _ in 0..10 {
        if std::fs::remove_dir_all(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
