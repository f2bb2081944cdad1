//! The agent as a daemon: `mirror-agent -n <ns> run --config FILE`, started
//! by a test and killed when its guard drops (its sessions stay pinned, as
//! after a real `kill -9`; the topology's guard removes them).
use std::{
    fs,
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{topology::Netns, wait_until};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    netns: String,
    extra: Vec<String>,
}

impl Daemon {
    /// Writes `yaml` as the config and starts the daemon on `ns`; returns
    /// once it has reconciled for the first time.
    pub fn start(ns: &Netns, yaml: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "mirror-daemon-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("daemon dir");
        let config = dir.join("config.yaml");
        fs::write(&config, yaml).expect("config");
        let mut d = Self {
            child: None,
            log: dir.join("daemon.log"),
            dir,
            config,
            netns: ns.name.clone(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        d.spawn();
        d
    }

    /// Starts (again) with the same config and arguments; waits until ready.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let before = self.log_text().matches(" ready").count();
        let child = crate::agent_command()
            .args(["-n", &self.netns, "--log-format", "text", "run", "--config"])
            .arg(&self.config)
            .args(&self.extra)
            .env("MIRROR_AGENT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning the daemon");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "the daemon to be ready", || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("the daemon exited ({status}) before it was ready:\n{}", self.log_text());
            }
            self.log_text().matches(" ready").count() > before
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Replaces the config the way editors and config managers do (a new
    /// file renamed over the old one).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.join("config.yaml.tmp");
        fs::write(&tmp, yaml).expect("config");
        fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        wait_until(timeout, &format!("{count}× {needle:?} in the daemon log"), || {
            self.log_text().matches(needle).count() >= count
        });
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().expect("waiting for the daemon")
    }

    /// Sends SIGHUP (reload).
    pub fn hup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGHUP) };
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
