//! The kubeconfig that `cls up` writes, so that a new user's next command can be `kubectl apply -f examples/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Writes `home/kubeconfig` pointing kubectl at `address` (namespace `default`) and returns its path.
pub fn write(home: &Path, address: SocketAddr) -> std::io::Result<PathBuf> {
    let path = home.join("kubeconfig");
    let config = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: cls
  cluster:
    server: http://{address}
contexts:
- name: cls
  context:
    cluster: cls
    user: cls
    namespace: default
current-context: cls
users:
- name: cls
  user: {{}}
"
    );
    std::fs::write(&path, config)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_points_at_the_address() {
        let home = std::env::temp_dir().join(format!("cls-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let path = write(&home, "127.0.0.1:8080".parse().unwrap()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("server: http://127.0.0.1:8080"));
        assert!(text.contains("current-context: cls"));
        std::fs::remove_dir_all(&home).unwrap();
    }
}
