//! User administration, run in the daemon over a Unix socket in the data dir, or straight on the
//! store when no daemon holds it (sled allows one process per database).

use std::path::{Path, PathBuf};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::auth::password;
use crate::ids::UserName;
use crate::store::Users;

/// An administrative request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCmd {
    /// Create a user.
    Add { user: String, password: String },
    /// Delete a user.
    Del { user: String },
    /// List users.
    List,
    /// Change a password (and so revoke its session tokens).
    Passwd { user: String, password: String },
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl AdminCmd {
    fn to_line(&self) -> String {
        match self {
            AdminCmd::Add { user, password } => format!("add {user} {}\n", B64.encode(password)),
            AdminCmd::Del { user } => format!("del {user}\n"),
            AdminCmd::List => "list\n".into(),
            AdminCmd::Passwd { user, password } => format!("passwd {user} {}\n", B64.encode(password)),
        }
    }

    fn from_line(line: &str) -> Result<AdminCmd, String> {
        let pw = |s: Option<&str>| -> Result<String, String> {
            let bytes = B64.decode(s.ok_or("missing password")?).map_err(|e| e.to_string())?;
            String::from_utf8(bytes).map_err(|e| e.to_string())
        };
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("add"), Some(u)) => Ok(AdminCmd::Add { user: u.into(), password: pw(parts.next())? }),
            (Some("passwd"), Some(u)) => Ok(AdminCmd::Passwd { user: u.into(), password: pw(parts.next())? }),
            (Some("del"), Some(u)) => Ok(AdminCmd::Del { user: u.into() }),
            (Some("list"), None) => Ok(AdminCmd::List),
            _ => Err("unknown command".into()),
        }
    }
}

/// Where the daemon listens for admin requests.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Carries out `cmd` on the store; the text is for the operator.
pub fn execute(users: &Users, cmd: AdminCmd) -> Result<String, String> {
    let name = |u: &str| UserName::parse(u).map_err(|e| format!("user name {u:?}: {e}"));
    let hash = |p: &str| {
        if p.is_empty() {
            return Err("empty password".to_string());
        }
        password::hash_password(p).map_err(|e| e.to_string())
    };
    let store_err = |e: crate::store::StoreError| e.to_string();
    match cmd {
        AdminCmd::Add { user, password } => {
            let user = name(&user)?;
            match users.add(&user, hash(&password)?).map_err(store_err)? {
                true => Ok(format!("added {user}")),
                false => Err(format!("{user} exists")),
            }
        }
        AdminCmd::Passwd { user, password } => {
            let user = name(&user)?;
            match users.set_password(&user, hash(&password)?).map_err(store_err)? {
                true => Ok(format!("password of {user} changed; its session tokens are revoked")),
                false => Err(format!("no user {user}")),
            }
        }
        AdminCmd::Del { user } => {
            let user = name(&user)?;
            match users.remove(&user).map_err(store_err)? {
                true => Ok(format!("deleted {user}")),
                false => Err(format!("no user {user}")),
            }
        }
        AdminCmd::List => Ok(users.list().map_err(store_err)?.join("\n")),
    }
}

/// Carries out `cmd` straight on the database, when no daemon holds it; a deleted user's room
/// memberships go too (a running daemon leaves the rooms themselves: see `Revoke`).
pub fn execute_offline(db: &sled::Db, cmd: AdminCmd) -> Result<String, String> {
    let users = Users::open(db).map_err(|e| e.to_string())?;
    let deleted = match &cmd {
        AdminCmd::Del { user } => UserName::parse(user).ok(),
        _ => None,
    };
    let text = execute(&users, cmd)?;
    if let Some(user) = deleted {
        let journal = std::sync::Arc::new(crate::store::journal::Journal::new(db.clone()));
        let rooms = crate::store::Rooms::open(journal).map_err(|e| e.to_string())?;
        rooms.remove_user(&user).map_err(|e| e.to_string())?;
        // No committer runs offline: the removal becomes durable by flushing sled itself.
        db.flush().map_err(|e| e.to_string())?;
    }
    Ok(text)
}

/// What to run when an account's sessions must end (deleted, or password changed).
pub type Revoke = std::sync::Arc<dyn Fn(&UserName) + Send + Sync>;

/// Serves admin requests on the Unix socket until the process ends.
pub async fn serve(
    path: PathBuf,
    users: Users,
    committer: crate::store::Committer,
    revoke: Revoke,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let users = users.clone();
        let revoke = revoke.clone();
        let committer = committer.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(rd).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match AdminCmd::from_line(line.trim_end()) {
                Ok(cmd) => {
                    let revokes = match &cmd {
                        AdminCmd::Del { user } | AdminCmd::Passwd { user, .. } => UserName::parse(user).ok(),
                        _ => None,
                    };
                    let mut reply = tokio::task::spawn_blocking(move || execute(&users, cmd))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    if reply.is_ok() {
                        // A purge goes through the journal: "ok" only once it is durable, so a
                        // crash cannot replay the deleted user's older entries back.
                        if let Err(e) = committer.durable().await {
                            reply = Err(e.to_string());
                        }
                    }
                    if let (Ok(_), Some(user)) = (&reply, revokes) {
                        // Open sessions were authorised by what just changed: end them.
                        revoke(&user);
                    }
                    reply
                }
                Err(e) => Err(e),
            };
            let text = match reply {
                Ok(t) => format!("ok\n{t}"),
                Err(e) => format!("err\n{e}"),
            };
            let _ = wr.write_all(text.as_bytes()).await;
        });
    }
}

/// Sends `cmd` to a running daemon; `None` when no daemon listens at `path`.
pub fn send(path: &Path, cmd: &AdminCmd) -> Option<Result<String, String>> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    stream.write_all(cmd.to_line().as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (status, text) = reply.split_once('\n').unwrap_or((reply.as_str(), ""));
    Some(if status == "ok" { Ok(text.to_owned()) } else { Err(text.to_owned()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_a_user_offline_forgets_its_rooms() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let journal = std::sync::Arc::new(crate::store::journal::Journal::new(db.clone()));
        let rooms = crate::store::Rooms::open(journal).unwrap();
        let (alice, bob) = (UserName::parse("alice").unwrap(), UserName::parse("bob").unwrap());
        let record = crate::store::rooms::RoomRecord { nick: "A".into(), ..Default::default() };
        rooms.put(&alice, "lounge@muc.x", &record).unwrap();
        rooms.put(&bob, "lounge@muc.x", &record).unwrap();
        let users = Users::open(&db).unwrap();
        users.add(&alice, "$argon2id$stub".into()).unwrap();
        let del = |u: &str| execute_offline(&db, AdminCmd::Del { user: u.into() });
        assert_eq!(del("alice"), Ok("deleted alice".into()));
        assert_eq!(rooms.get(&alice, "lounge@muc.x").unwrap(), None);
        // A refused delete changes nothing.
        assert_eq!(del("bob"), Err("no user bob".into()));
        assert!(rooms.get(&bob, "lounge@muc.x").unwrap().is_some());
    }

    #[test]
    fn lines_round_trip_with_awkward_passwords() {
        for cmd in [
            AdminCmd::Add { user: "alice".into(), password: "p w\n\tü".into() },
            AdminCmd::Passwd { user: "bob".into(), password: "x".into() },
            AdminCmd::Del { user: "carol".into() },
            AdminCmd::List,
        ] {
            let line = cmd.to_line();
            assert_eq!(AdminCmd::from_line(line.trim_end()), Ok(cmd));
        }
        assert!(AdminCmd::from_line("drop everything").is_err());
    }
}
