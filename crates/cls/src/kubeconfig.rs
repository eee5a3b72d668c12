//! The kubeconfig that `cls up` writes, so that a new user's next command can be `kubectl apply -f examples/`.

use std::io::Write;

use base64::Engine;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `home/kubeconfig` pointing kubectl at `https://address` (namespace `default`) with the bearer `token`,
/// readable by its owner only, and returns its path. `authority` (PEM) is the certificate authority to trust; without
/// it the system's roots are used.
pub fn write(home: &Path, address: SocketAddr, token: &str, authority: Option<&str>) -> std::io::Result<PathBuf> {
    let path = home.join("kubeconfig");
    let authority = authority
        .map(|pem| {
            let data = base64::engine::general_purpose::STANDARD.encode(pem);
            format!("\n    certificate-authority-data: {data}")
        })
        .unwrap_or_default();
    let config = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: cls
  cluster:
    server: https://{address}{authority}
contexts:
- name: cls
  context:
    cluster: cls
    user: cls
    namespace: default
current-context: cls
users:
- name: cls
  user:
    token: {token}
"
    );
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(config.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_points_at_the_address() {
        let home = std::env::temp_dir().join(format!("cls-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let path = write(&home, "127.0.0.1:8080".parse().unwrap(), "cls_secret", Some("PEM")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("server: https://127.0.0.1:8080"));
        assert!(text.contains("certificate-authority-data: UEVN"));
        assert!(text.contains("current-context: cls"));
        assert!(text.contains("token: cls_secret"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "only its owner reads it");
        std::fs::remove_dir_all(&home).unwrap();
    }
}
