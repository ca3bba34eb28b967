//! The documented etcd roles (docs/security.md) on the cluster's etcd, set up as an
//! operator would with `etcdctl`, through etcd's JSON gateway: `ferrocni-node` (read the
//! config, read-write `subnets/`) for one user per node, `ferrocni-operator` (everything under
//! the prefix) for the `operator` user, then authentication on. Passwords are random per
//! cluster, in 0600 files of the work directory.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{EtcdMember, http_post_tcp_with, wait_for};

const PREFIX: &str = "/coreos.com/network/";
const NODE_ROLE: &str = "ferrocni-node";
const OPERATOR_ROLE: &str = "ferrocni-operator";

/// A store user: its name and the file holding its password.
#[derive(Debug, Clone)]
pub struct EtcdCredentials {
    /// The etcd user name.
    pub user: String,
    /// Its password file (0600).
    pub password_file: PathBuf,
}

impl EtcdCredentials {
    /// The user's password.
    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file).expect("the password file").trim_end().to_string()
    }

    /// overlayd's and overlayctl's options for this user. The harness's etcd speaks plain
    /// HTTP on the cluster's private underlay (TLS is tested in overlayd/tests/etcd.rs), so the
    /// credentials need `--etcd-insecure-plaintext`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--etcd-username".into(),
            self.user.clone(),
            "--etcd-password-file".into(),
            self.password_file.display().to_string(),
            "--etcd-insecure-plaintext".into(),
        ]
    }
}

/// Authentication on the cluster's etcd: the root password (kept by the harness only) and
/// where the users' password files go.
#[derive(Debug)]
pub(super) struct EtcdAuth {
    root_password: String,
    dir: PathBuf,
}

impl EtcdAuth {
    /// Waits for `member` to answer, makes the roles, `root` and `operator`, and turns
    /// authentication on; the operator's credentials.
    pub(super) fn enable(member: &EtcdMember, dir: &Path) -> Result<(Self, EtcdCredentials), String> {
        let auth = EtcdAuth { root_password: random_password(), dir: dir.to_path_buf() };
        wait_for(Duration::from_secs(30), "etcd's gateway", || {
            gateway(member, "/v3/maintenance/status", &json!({}), None).is_ok()
        })?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        // The end of a prefix range: the prefix with its last byte raised ("/" + 1 = "0").
        let prefix_end = |p: &str| format!("{}0", p.trim_end_matches('/'));
        let grants = [
            (OPERATOR_ROLE, "READWRITE", PREFIX.to_string(), Some(prefix_end(PREFIX))),
            (NODE_ROLE, "READ", format!("{PREFIX}config"), None),
            (
                NODE_ROLE,
                "READWRITE",
                format!("{PREFIX}subnets/"),
                Some(prefix_end(&format!("{PREFIX}subnets/"))),
            ),
        ];
        for role in [OPERATOR_ROLE, NODE_ROLE] {
            gateway(member, "/v3/auth/role/add", &json!({"name": role}), None)?;
        }
        for (role, perm, key, end) in grants {
            let mut p = json!({"permType": perm, "key": b64(&key)});
            if let Some(end) = end {
                p["range_end"] = b64(&end).into();
            }
            gateway(member, "/v3/auth/role/grant", &json!({"name": role, "perm": p}), None)?;
        }
        gateway(member, "/v3/auth/user/add", &json!({"name": "root", "password": auth.root_password}), None)?;
        gateway(member, "/v3/auth/user/grant", &json!({"user": "root", "role": "root"}), None)?;
        let operator = auth.add_user(member, None, "operator", OPERATOR_ROLE)?;
        gateway(member, "/v3/auth/enable", &json!({}), None)?;
        Ok((auth, operator))
    }

    /// A user with the node role for node `id` (`node<id>`), made as root.
    pub(super) fn add_node_user(&self, member: &EtcdMember, id: usize) -> Result<EtcdCredentials, String> {
        let token = gateway(
            member,
            "/v3/auth/authenticate",
            &json!({"name": "root", "password": self.root_password}),
            None,
        )?["token"]
            .as_str()
            .ok_or("etcd gave root no token")?
            .to_string();
        self.add_user(member, Some(&token), &format!("node{id}"), NODE_ROLE)
    }

    fn add_user(
        &self,
        member: &EtcdMember,
        token: Option<&str>,
        user: &str,
        role: &str,
    ) -> Result<EtcdCredentials, String> {
        let password = random_password();
        gateway(member, "/v3/auth/user/add", &json!({"name": user, "password": password}), token)?;
        gateway(member, "/v3/auth/user/grant", &json!({"user": user, "role": role}), token)?;
        let password_file = self.dir.join(format!("etcd-{user}.password"));
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&password_file)
            .and_then(|mut f| writeln!(f, "{password}"))
            .map_err(|e| format!("{}: {e}", password_file.display()))?;
        Ok(EtcdCredentials { user: user.into(), password_file })
    }
}

/// One request to `member`'s JSON gateway, from inside its namespace; the answer's JSON.
fn gateway(member: &EtcdMember, path: &str, body: &Value, token: Option<&str>) -> Result<Value, String> {
    let addr = format!("{}:2379", member.ip);
    let headers: Vec<(&str, &str)> = token.map(|t| ("Authorization", t)).into_iter().collect();
    let (status, text) = member.ns.run(|| http_post_tcp_with(&addr, path, &body.to_string(), &headers))?;
    if status != 200 {
        return Err(format!("etcd {path}: HTTP {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("etcd {path}: {e}: {text}"))
}

fn random_password() -> String {
    std::iter::repeat_with(fastrand::alphanumeric).take(24).collect()
}
