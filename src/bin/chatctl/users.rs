//! `chatctl users ...`: list, show, search, create, reset a password, ban,
//! unban, delete.

use super::*;

pub(super) fn users(cli: &Cli, cmd: &UsersCmd, o: &Out) -> Result<(), Failure> {
    let list = |users: &[UserRow]| {
        let rows: Vec<Vec<String>> = users
            .iter()
            .map(|u| {
                vec![
                    u.id.to_string(),
                    u.name.clone(),
                    u.online.to_string(),
                    u.banned.to_string(),
                    u.deleted.to_string(),
                ]
            })
            .collect();
        table(&["ID", "NAME", "ONLINE", "BANNED", "DELETED"], &rows);
    };
    let listed = |req: Request| -> Result<(), Failure> {
        let (r, line) = request(cli, req)?;
        let Reply::Users { users } = &r else {
            return Err(unexpected(&r));
        };
        o.show(&line, || list(users));
        Ok(())
    };
    match cmd {
        UsersCmd::List { offset, limit } => listed(Request::Users {
            query: None,
            offset: *offset as usize,
            limit: *limit as usize,
        })?,
        UsersCmd::Search { query } => listed(Request::Users {
            query: Some(query.clone()),
            offset: 0,
            limit: 100,
        })?,
        UsersCmd::Show { user } => {
            let (r, line) = request(
                cli,
                Request::User {
                    user: UserArg::parse(user),
                },
            )?;
            let Reply::User {
                user: u,
                created_ms,
                sessions_here,
                friends,
                groups,
            } = &r
            else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                let groups: Vec<String> = groups.iter().map(|g| g.0.to_string()).collect();
                for (label, val) in [
                    ("id", u.id.to_string()),
                    ("name", u.name.clone()),
                    ("created (UTC)", format_time(*created_ms)),
                    ("online", u.online.to_string()),
                    ("banned", u.banned.to_string()),
                    ("deleted", u.deleted.to_string()),
                    ("sessions here", sessions_here.to_string()),
                    ("friends", friends.to_string()),
                    ("groups", format!("[{}]", groups.join(","))),
                ] {
                    println!("{label:<14} {val}");
                }
            });
        }
        UsersCmd::Create { name, password } => {
            let req = Request::UserCreate {
                name: name.clone(),
                password: password.get()?,
            };
            let (r, line) = request(cli, req)?;
            let Reply::Created { user } = &r else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                println!("created user {} ({})", user.id, user.name)
            });
        }
        UsersCmd::ResetPassword { user, password } => {
            let req = Request::UserPassword {
                user: UserArg::parse(user),
                password: password.get()?,
            };
            let (r, line) = request(cli, req)?;
            let Reply::UserChanged { user, .. } = &r else {
                return Err(unexpected(&r));
            };
            o.show(&line, || println!("password of user {user} changed"));
        }
        UsersCmd::Ban { user } | UsersCmd::Unban { user } => {
            let user = UserArg::parse(user);
            let req = if matches!(cmd, UsersCmd::Ban { .. }) {
                Request::UserBan { user }
            } else {
                Request::UserUnban { user }
            };
            let (r, line) = request(cli, req)?;
            let Reply::UserChanged { user, banned, .. } = &r else {
                return Err(unexpected(&r));
            };
            let what = if *banned == Some(true) {
                "banned"
            } else {
                "unbanned"
            };
            o.show(&line, || println!("user {user} {what}"));
        }
        UsersCmd::Delete { user } => {
            let req = Request::UserDelete {
                user: UserArg::parse(user),
            };
            let (r, line) = request(cli, req)?;
            let Reply::UserChanged { user, .. } = &r else {
                return Err(unexpected(&r));
            };
            o.show(&line, || println!("user {user} deleted"));
        }
    }
    Ok(())
}
