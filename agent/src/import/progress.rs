//! Counters of an import, its progress line on stderr and its summary.
//!
//! On a terminal the line is redrawn in place a few times a second; otherwise (a log, CI, a pipe) a plain line
//! is printed every `--progress-every`, so logs stay readable.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Stats {
    /// Rows read (parsed or not).
    pub rows: AtomicU64,
    /// Input bytes read (compressed bytes for gzip input).
    pub bytes: AtomicU64,
    pub accepted: AtomicU64,
    pub replayed: AtomicU64,
    pub refused: AtomicU64,
    /// `--dry-run`: rows that passed every check made without sending.
    pub valid: AtomicU64,
    /// Every row up to this one has its outcome counted.
    pub settled_through: AtomicU64,
    by_reason: Mutex<BTreeMap<&'static str, u64>>,
    started: std::sync::OnceLock<Instant>,
}

impl Stats {
    pub fn refuse(&self, reason: &'static str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        *self.by_reason.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    fn started(&self) -> Instant {
        *self.started.get_or_init(Instant::now)
    }

    fn line(&self, total_bytes: Option<u64>, dry_run: bool) -> String {
        let elapsed = self.started().elapsed().as_secs_f64().max(1e-3);
        let rows = self.rows.load(Ordering::Relaxed);
        let outcome = if dry_run {
            format!("valid {}", self.valid.load(Ordering::Relaxed))
        } else {
            format!(
                "accepted {}, replayed {}",
                self.accepted.load(Ordering::Relaxed),
                self.replayed.load(Ordering::Relaxed)
            )
        };
        let mut line = format!(
            "import: {rows} rows, {:.0} rows/s, {outcome}, refused {}",
            rows as f64 / elapsed,
            self.refused.load(Ordering::Relaxed)
        );
        if let Some(total) = total_bytes.filter(|t| *t > 0) {
            let done = self.bytes.load(Ordering::Relaxed).min(total);
            let share = done as f64 / total as f64;
            line.push_str(&format!(", {:.1}% of {:.1} MiB", share * 100.0, total as f64 / 1048576.0));
            if share > 0.0 && share < 1.0 {
                let eta = elapsed * (1.0 - share) / share;
                line.push_str(&format!(", ETA {}", clock_text(eta)));
            }
        }
        line
    }

    /// The final report (stdout): `key=value` counts first, so scripts can read them.
    pub fn summary(&self, dry_run: bool, refusals: Option<&Path>) -> String {
        let elapsed = self.started().elapsed().as_secs_f64().max(1e-3);
        let rows = self.rows.load(Ordering::Relaxed);
        let reasons = self.by_reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let outcome = if dry_run {
            format!("valid={} (dry run: nothing sent)", self.valid.load(Ordering::Relaxed))
        } else {
            format!(
                "accepted={} replayed={}",
                self.accepted.load(Ordering::Relaxed),
                self.replayed.load(Ordering::Relaxed)
            )
        };
        let mut out = format!(
            "rows={rows} {outcome} refused={}{} in {elapsed:.1} s, {:.0} rows/s, peak RSS {}\n",
            self.refused.load(Ordering::Relaxed),
            if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(" ")) },
            rows as f64 / elapsed,
            peak_rss().map_or_else(|| "unknown".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        );
        if let Some(p) = refusals {
            out.push_str(&format!("refused rows: {}\n", p.display()));
        }
        out
    }
}

/// This process's peak resident set (VmHWM), in KiB; Linux only.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_text(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

pub struct Progress {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Stops the line and prints it a last time.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub fn spawn(stats: Arc<Stats>, total_bytes: Option<u64>, every: Duration, dry_run: bool) -> Progress {
    stats.started();
    let tty = std::io::stderr().is_terminal();
    let period = if tty { Duration::from_millis(250) } else { every.max(Duration::from_millis(100)) };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stopped.changed() => true,
            };
            let line = stats.line(total_bytes, dry_run);
            let mut err = std::io::stderr().lock();
            let _ = if tty {
                // Redrawn in place; the last one stays.
                write!(err, "\r{line}\x1b[K{}", if last { "\n" } else { "" })
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
            if last {
                return;
            }
        }
    });
    Progress { stop, task }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_rate_counts_share_and_eta() {
        let s = Stats::default();
        s.started();
        s.rows.store(500, Ordering::Relaxed);
        s.accepted.store(400, Ordering::Relaxed);
        s.replayed.store(90, Ordering::Relaxed);
        s.refuse("invalid");
        s.bytes.store(256, Ordering::Relaxed);
        let l = s.line(Some(1024), false);
        assert!(l.contains("500 rows") && l.contains("accepted 400, replayed 90, refused 1"), "{l}");
        assert!(l.contains("25.0% of 0.0 MiB") && l.contains("ETA "), "{l}");
        let summary = s.summary(false, None);
        assert!(summary.starts_with("rows=500 accepted=400 replayed=90 refused=1 (invalid=1)"), "{summary}");
    }

    #[test]
    fn eta_reads_as_a_clock() {
        assert_eq!(clock_text(75.0), "1:15");
        assert_eq!(clock_text(3725.0), "1:02:05");
    }
}
