//! The roles under test — `serve`, `relay`, `project` — as child processes of this
//! binary, with the environment a benchmark needs, and their peak memory (VmHWM from
//! `/proc/PID/status`, benchmark 6).

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings every child gets on top of the bench's own environment: no rate limits
/// (the load comes from one address and a few users), long-lived tokens, and a token
/// key and seal key made for this run unless the operator configured them.
fn bench_env() -> Vec<(String, String)> {
    let mut env = vec![
        ("LIS_RATE_PER_ADDRESS".to_string(), "0".to_string()),
        ("LIS_RATE_PER_USER".to_string(), "0".to_string()),
        ("LIS_TOKEN_TTL_SECS".to_string(), "86400".to_string()),
    ];
    if std::env::var_os("LIS_JWT_SECRET").is_none() {
        env.push((
            "LIS_JWT_SECRET".into(),
            B64.encode(rand::random::<[u8; 32]>()),
        ));
    }
    if std::env::var_os("LIS_SEAL_KEY").is_none() {
        env.push((
            "LIS_SEAL_KEY".into(),
            B64.encode(rand::random::<[u8; 32]>()),
        ));
    }
    env
}

struct Running {
    name: &'static str,
    child: Child,
}

/// Child processes of `lisledger`, killed when dropped.
pub struct Roles {
    running: Vec<Running>,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
}

impl Roles {
    /// Starts `lisledger serve` and waits until `base/healthz` answers, then the other
    /// roles (after the API has made the read models' schemas: two processes making
    /// them at once can collide). Each logs to `log_dir/ROLE.log`.
    pub async fn start(
        base: &str,
        others: &[&'static str],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let mut roles = Self {
            running: Vec::new(),
            env: bench_env(),
            log_dir: log_dir.to_path_buf(),
        };
        roles.spawn("serve")?;
        roles.wait_healthy(base).await?;
        for &name in others {
            roles.spawn(name)?;
        }
        Ok(roles)
    }

    fn spawn(&mut self, name: &'static str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the lisledger binary")?;
        let log = std::fs::File::create(self.log_dir.join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .arg(name)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start `lisledger {name}`"))?;
        tracing::info!(role = name, pid = child.id(), "started");
        self.running.push(Running { name, child });
        Ok(())
    }

    /// Fails if a role has exited (its log says why).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for r in &mut self.running {
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "`lisledger {}` exited ({status}); see {}",
                    r.name,
                    self.log_dir.join(format!("{}.log", r.name)).display()
                );
            }
        }
        Ok(())
    }

    /// Waits until `GET base/healthz` answers 200.
    async fn wait_healthy(&mut self, base: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > until {
                bail!("the API at {base} did not become healthy within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each role's peak resident memory so far, in KiB.
    pub fn peak_memory(&self) -> Vec<(&'static str, Option<u64>)> {
        self.running
            .iter()
            .map(|r| (r.name, vm_hwm_kib(r.child.id())))
            .collect()
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        for r in &mut self.running {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

/// `VmHWM` (peak resident set) of a process, in KiB; `None` off Linux or once it is gone.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\tlisledger\nVmPeak:\t  200 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(super::parse_vm_hwm(status), Some(12345));
        assert_eq!(super::parse_vm_hwm("Name:\tx\n"), None);
        assert!(super::vm_hwm_kib(std::process::id()).is_some());
    }
}
