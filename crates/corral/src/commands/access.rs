//! `corral token|user|audit|whoami`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use corral_api::{
    ApiToken, AuditEntry, CreateTokenRequest, CreateUserRequest, CreatedToken, UpdateUserRequest,
    User, WhoAmI,
};

use crate::cli::{AuditArgs, RemoteAddArgs, RemoteCommand, TokenCommand, UserCommand};
use crate::client::{encode, Client, API};
use crate::error::CliError;
use crate::output::{details, emit, format_time_ms, or_dash, print_out, render, table, Format};
use crate::remote::{parse_url, Remote, RemoteConfig, LOCAL};

pub async fn token(client: &Client, command: &TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let req = CreateTokenRequest {
                name: args.name.clone(),
                role: args.role,
                expires_in_secs: args.expires,
            };
            let made: CreatedToken = client.post(&format!("{API}/tokens"), &req).await?;
            emit(args.output.output, &made, |t| {
                format!(
                    "{}\n\nToken '{}' ({}, id {}). Store it now: it is shown only once.\n\
                     Use it as `Authorization: Bearer <token>` or with `corral remote add`.\n",
                    t.token, t.info.name, t.info.role, t.info.id
                )
            })
        }
        TokenCommand::List(out) => {
            let tokens: Vec<ApiToken> = client.get(&format!("{API}/tokens")).await?;
            emit(out.output, &tokens, |ts| token_table(ts))
        }
        TokenCommand::Revoke(args) => {
            let _: serde_json::Value = client
                .delete(&format!("{API}/tokens/{}", encode(&args.id)))
                .await?;
            print_out(format!("revoked token {}\n", args.id).as_bytes())
        }
    }
}

fn token_table(tokens: &[ApiToken]) -> String {
    let mut t = table(&["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED"]);
    for tok in tokens {
        t.add_row(vec![
            tok.id.clone(),
            tok.name.clone(),
            tok.role.to_string(),
            format_time_ms(tok.created_ms),
            or_dash(tok.expires_at_ms.map(format_time_ms)),
            or_dash(tok.last_used_ms.map(format_time_ms)),
        ]);
    }
    render(t)
}

pub async fn user(client: &Client, command: &UserCommand) -> Result<()> {
    match command {
        UserCommand::Add(args) => {
            let password = read_password(args.password_stdin)?;
            let req = CreateUserRequest {
                username: args.username.clone(),
                password,
                role: args.role,
            };
            let user: User = client.post(&format!("{API}/users"), &req).await?;
            print_out(format!("added user {} ({})\n", user.username, user.role).as_bytes())
        }
        UserCommand::List(out) => {
            let users: Vec<User> = client.get(&format!("{API}/users")).await?;
            emit(out.output, &users, |us| {
                let mut t = table(&["USERNAME", "ROLE", "CREATED"]);
                for u in us {
                    t.add_row(vec![
                        u.username.clone(),
                        u.role.to_string(),
                        format_time_ms(u.created_ms),
                    ]);
                }
                render(t)
            })
        }
        UserCommand::Remove(args) => {
            let _: serde_json::Value = client.delete(&user_path(&args.username)).await?;
            print_out(format!("removed user {}\n", args.username).as_bytes())
        }
        UserCommand::Passwd(args) => {
            let req = UpdateUserRequest {
                password: Some(read_password(args.password_stdin)?),
                role: None,
            };
            let _: User = client.patch(&user_path(&args.username), &req).await?;
            print_out(
                format!(
                    "new password set for {}; their sessions ended\n",
                    args.username
                )
                .as_bytes(),
            )
        }
        UserCommand::SetRole(args) => {
            let req = UpdateUserRequest {
                password: None,
                role: Some(args.role),
            };
            let user: User = client.patch(&user_path(&args.username), &req).await?;
            print_out(format!("{} is now {}\n", user.username, user.role).as_bytes())
        }
    }
}

fn user_path(name: &str) -> String {
    format!("{API}/users/{}", encode(name))
}

/// From stdin's first line, or asked twice on the terminal without echo.
fn read_password(from_stdin: bool) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on; pass --password-stdin and pipe it in");
    }
    let first = prompt_hidden("Password: ")?;
    let again = prompt_hidden("Again: ")?;
    if first != again {
        bail!("the passwords differ; nothing was changed");
    }
    Ok(first)
}

fn prompt_hidden(prompt: &str) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    tcsetattr(&stdin, SetArg::TCSANOW, &saved)?;
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub async fn audit(client: &Client, args: &AuditArgs) -> Result<()> {
    let entries: Vec<AuditEntry> = client
        .get(&format!("{API}/audit?limit={}", args.limit))
        .await?;
    emit(args.output.output, &entries, |es| {
        let mut t = table(&[
            "TIME", "ACTOR", "ROLE", "SOURCE", "REQUEST", "STATUS", "DETAIL",
        ]);
        for e in es {
            t.add_row(vec![
                format_time_ms(e.time_ms),
                e.actor.clone(),
                or_dash(e.role),
                e.source.clone(),
                format!("{} {}", e.method, e.path),
                e.status.to_string(),
                or_dash(e.detail.clone()),
            ]);
        }
        render(t)
    })
}

pub async fn whoami(client: &Client, format: Format) -> Result<()> {
    let me: WhoAmI = client.get(&format!("{API}/auth/whoami")).await?;
    emit(format, &me, |w| {
        details(&[
            ("Name", w.name.clone()),
            ("Credential", w.kind.as_str().to_string()),
            ("Role", w.role.to_string()),
            ("Expires", or_dash(w.expires_at_ms.map(format_time_ms))),
        ])
    })
}

/// `corral remote …`: kept in the local config file; only `add` talks to the remote.
pub async fn remote(command: &RemoteCommand) -> Result<()> {
    let mut config = RemoteConfig::load()?;
    match command {
        RemoteCommand::Add(args) => remote_add(&mut config, args).await,
        RemoteCommand::List(out) => {
            let rows: Vec<serde_json::Value> = std::iter::once(serde_json::json!({
                "name": LOCAL, "url": "unix socket", "fingerprint": null,
                "default": config.default.as_deref().unwrap_or(LOCAL) == LOCAL,
            }))
            .chain(config.remotes.iter().map(|(name, r)| {
                serde_json::json!({
                    "name": name, "url": r.url, "fingerprint": r.fingerprint,
                    "default": config.default.as_deref() == Some(name.as_str()),
                })
            }))
            .collect();
            emit(out.output, &rows, |rows| {
                let mut t = table(&["NAME", "URL", "CERTIFICATE (SHA-256)", "DEFAULT"]);
                for r in rows {
                    let fp = r["fingerprint"]
                        .as_str()
                        .map(|f| format!("{}…", &f[..f.len().min(16)]));
                    t.add_row(vec![
                        r["name"].as_str().unwrap_or_default().to_string(),
                        r["url"].as_str().unwrap_or_default().to_string(),
                        or_dash(fp),
                        if r["default"] == true { "*" } else { "" }.to_string(),
                    ]);
                }
                render(t)
            })
        }
        RemoteCommand::Remove(args) => {
            if config.remotes.remove(&args.name).is_none() {
                bail!(CliError::new(format!("no remote named '{}'", args.name)));
            }
            if config.default.as_deref() == Some(args.name.as_str()) {
                config.default = None;
            }
            config.save()?;
            print_out(format!("removed remote {}\n", args.name).as_bytes())
        }
        RemoteCommand::Switch(args) => {
            if args.name != LOCAL && !config.remotes.contains_key(&args.name) {
                bail!(CliError::new(format!("no remote named '{}'", args.name))
                    .with_hint("`corral remote list` shows them"));
            }
            config.default = (args.name != LOCAL).then(|| args.name.clone());
            config.save()?;
            print_out(format!("commands now go to {}\n", args.name).as_bytes())
        }
    }
}

async fn remote_add(config: &mut RemoteConfig, args: &RemoteAddArgs) -> Result<()> {
    if args.name == LOCAL || config.remotes.contains_key(&args.name) {
        bail!(
            CliError::new(format!("a remote named '{}' exists already", args.name))
                .with_hint("choose another name, or `corral remote remove` it first")
        );
    }
    let (host, port) = parse_url(&args.url)?;
    let want = args
        .fingerprint
        .as_deref()
        .map(|f| f.replace(':', "").to_lowercase());
    let (_, seen) = crate::remote::connect(&host, port, want.as_deref()).await?;
    if want.is_none() && !args.accept_certificate {
        eprintln!("Certificate fingerprint (SHA-256): {seen}");
        eprintln!("Compare it with `corral host info` on that host.");
        if !std::io::stdin().is_terminal() {
            bail!(
                CliError::new("not trusting the certificate without a terminal to ask on")
                    .with_hint("pass --fingerprint HEX (checked) or --accept-certificate")
            );
        }
        eprint!("Trust it? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!(CliError::new("not trusted; nothing was saved"));
        }
    }
    let remote = Remote {
        url: format!(
            "https://{}:{port}",
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            }
        ),
        fingerprint: seen,
        token: args.token.clone(),
    };
    let me: WhoAmI = Client::remote(&args.name, remote.clone())?
        .get(&format!("{API}/auth/whoami"))
        .await?;
    config.remotes.insert(args.name.clone(), remote);
    config.save()?;
    print_out(format!("added remote {} as {} ({})\n", args.name, me.name, me.role).as_bytes())
}
