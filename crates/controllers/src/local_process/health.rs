//! Health checks of a local process: `http` (a status below 400), `tcp` (a connection), `exec` (exit status 0),
//! each bounded by `timeoutSeconds`.

use std::time::Duration;

use cls_core::resources::HealthCheck;

use super::supervisor::Desired;

/// Default `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

pub fn timeout(check: &HealthCheck) -> Duration {
    check
        .timeout_seconds
        .filter(|seconds| *seconds > 0)
        .map_or(DEFAULT_TIMEOUT, |seconds| Duration::from_secs(seconds as u64))
}

/// Runs the check once; `Err` says why it failed.
pub async fn probe(check: &HealthCheck, desired: &Desired, http: &reqwest::Client) -> Result<(), String> {
    let limit = timeout(check);
    if let Some(http_check) = &check.http {
        let url = format!("http://127.0.0.1:{}{}", http_check.port, http_check.path);
        let response = http.get(&url).timeout(limit).send().await.map_err(|error| format!("GET {url}: {error}"))?;
        if response.status().as_u16() >= 400 {
            return Err(format!("GET {url} answered {}", response.status()));
        }
        return Ok(());
    }
    if let Some(tcp) = &check.tcp {
        let address = format!("127.0.0.1:{}", tcp.port);
        return match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("connect {address}: {error}")),
            Err(_) => Err(format!("connect {address}: timed out")),
        };
    }
    if let Some(exec) = &check.exec {
        let Some((program, args)) = exec.command.split_first() else { return Ok(()) };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(desired.env.iter().map(|(name, value)| (name, value)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(directory) = &desired.working_dir {
            command.current_dir(directory);
        }
        return match tokio::time::timeout(limit, command.status()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("{program} {status}")),
            Ok(Err(error)) => Err(format!("{program}: {error}")),
            Err(_) => Err(format!("{program}: timed out")),
        };
    }
    Ok(())
}
