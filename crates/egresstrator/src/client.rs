//! The running agent's endpoint (`--listen`), from the command line; neither needs Docker
//! or Consul:
//! - `egresstrator monitor` streams refused (and audited) flows from `/monitor`,
//!   human-readable or as JSON lines, until Ctrl-C or until the agent goes away (the agent
//!   attributes and explains every record, see [`crate::flows`]);
//! - `egresstrator status` prints `/status` as a table, or as it is with `--json`.

use std::future::Future;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Take};
use tokio::net::TcpStream;

use crate::flows::FlowRecord;

/// A line longer than this is not a record (and is not read whole).
const MAX_LINE: usize = 64 * 1024;

/// `GET path` on the agent; the reader is past the answer's head, which was a 200.
async fn get(listen: &str, path: &str) -> Result<BufReader<Take<TcpStream>>> {
    if listen == "off" {
        bail!("--listen is off: the agent's endpoint is disabled");
    }
    let mut stream = TcpStream::connect(listen).await.with_context(|| {
        format!("cannot reach the agent at {listen} (is it running, with --listen {listen}?)")
    })?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: egresstrator\r\n\r\n").as_bytes())
        .await?;
    let mut reader = BufReader::new(stream.take(MAX_LINE as u64));
    let mut status = String::new();
    reader.read_line(&mut status).await?;
    if !status.starts_with("HTTP/1.0 200") && !status.starts_with("HTTP/1.1 200") {
        bail!(
            "the agent at {listen} answered {path} with {:?} (an egresstrator older than 0.3 has no /monitor)",
            status.trim()
        );
    }
    loop {
        let mut header = String::new();
        reader.get_mut().set_limit(MAX_LINE as u64);
        if reader.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
    }
    Ok(reader)
}

/// `monitor`: streams until `stop` completes (0) or the agent ends the stream (1).
pub async fn monitor(
    listen: &str,
    containers: &[String],
    json: bool,
    stop: impl Future<Output = ()>,
) -> Result<ExitCode> {
    let mut reader = get(listen, "/monitor").await?;
    if !json {
        eprintln!("monitoring refused flows at {listen}; Ctrl-C ends");
    }
    tokio::pin!(stop);
    let mut line = String::new();
    loop {
        line.clear();
        // Bounds one read: a longer line comes in pieces, which parse as nothing and are
        // skipped.
        reader.get_mut().set_limit(MAX_LINE as u64);
        let read = tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            r = reader.read_line(&mut line) => r?,
        };
        if read == 0 {
            eprintln!("the agent ended the stream");
            return Ok(ExitCode::from(1));
        }
        show(line.trim_end(), containers, json);
    }
}

/// Prints one line of the stream, if it is a record the selection names.
fn show(line: &str, containers: &[String], json: bool) {
    if let Ok(record) = serde_json::from_str::<FlowRecord>(line) {
        if !record.matches(containers) {
            return;
        }
        if json {
            println!("{line}");
        } else {
            println!("{}", record.line());
        }
    } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        if let Some(n) = v.get("missed").and_then(serde_json::Value::as_u64) {
            eprintln!("monitor fell behind: {n} record(s) missed");
        }
    }
}

/// The `/status` document, at most this large.
const MAX_STATUS: u64 = 64 * 1024 * 1024;

/// `status`: the agent's view as a table (or the raw document with `--json`).
pub async fn status(listen: &str, json: bool) -> Result<ExitCode> {
    let mut reader = get(listen, "/status").await?;
    reader.get_mut().set_limit(MAX_STATUS);
    let mut body = String::new();
    reader.read_to_string(&mut body).await?;
    if json {
        print!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let doc: serde_json::Value = serde_json::from_str(&body).context("the agent's /status")?;
    let now = crate::status::unix_nanos(std::time::SystemTime::now());
    print!("{}", table(&doc, now));
    Ok(ExitCode::SUCCESS)
}

/// The running agent's `/status` document.
pub async fn status_doc(listen: &str) -> Result<serde_json::Value> {
    let mut reader = get(listen, "/status").await?;
    reader.get_mut().set_limit(MAX_STATUS);
    let mut body = String::new();
    reader.read_to_string(&mut body).await?;
    serde_json::from_str(&body).context("the agent's /status")
}

/// The status document as text: a summary line, then one row per container.
pub fn table(doc: &serde_json::Value, now: i64) -> String {
    use serde_json::Value;
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let policy = &doc["policy"];
    let mut out = format!(
        "egresstrator {} ({}): policy from {} (index {}, {}), raw-socket guard {}\n",
        s(&doc["version"]),
        s(&doc["mode"]),
        s(&policy["source"]),
        policy["kv_index"],
        match doc["policy_age_seconds"].as_u64() {
            Some(a) => format!("{a}s old"),
            None => "never current".to_owned(),
        },
        s(&doc["raw_socket_guard"]),
    );
    if let Some(e) = policy["error"].as_str() {
        out.push_str(&format!("consul: {e}\n"));
    }
    let mut rows = vec![[
        "CONTAINER",
        "NAME",
        "POSTURE",
        "ACLS",
        "APPLIED",
        "FLOWS/1M",
        "ERROR",
    ]
    .map(str::to_owned)];
    for c in doc["containers"].as_array().into_iter().flatten() {
        let acls: Vec<String> = c["acls"].as_array().into_iter().flatten().map(s).collect();
        let applied = c["applied_at_unix_nano"].as_i64().filter(|t| *t > 0);
        let mut error = s(&c["error"]);
        if let Some(b) = c["bypassable"].as_str() {
            let sep = if error.is_empty() { "" } else { "; " };
            error = format!("bypassable: {b}{sep}{error}");
        }
        rows.push([
            crate::docker::short_id(&s(&c["id"])).to_owned(),
            s(&c["name"]),
            s(&c["posture"]),
            if acls.is_empty() {
                "-".into()
            } else {
                acls.join(",")
            },
            applied.map_or("-".into(), |t| {
                format!("{}s ago", (now - t).max(0) / 1_000_000_000)
            }),
            c["flows_last_minute"].as_u64().unwrap_or(0).to_string(),
            error,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (cell, w) in r.iter().zip(&widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_lines_up_and_says_what_matters() {
        let doc = serde_json::json!({
            "version": "0.3.0",
            "mode": "local",
            "policy": {"source": "consul", "kv_index": 42, "error": null, "fresh_at_unix": 1},
            "policy_age_seconds": 3,
            "raw_socket_guard": "verified",
            "containers": [
                {"id": "a".repeat(64), "name": "web", "acls": ["web", "db"],
                 "posture": "allowlist", "applied_at_unix_nano": 1_000_000_000i64,
                 "flows_last_minute": 7, "error": null},
                {"id": "b".repeat(64), "name": "batch-long-name", "acls": [],
                 "posture": "deny-all", "applied_at_unix_nano": 0, "flows_last_minute": 0,
                 "error": "acl 'x' does not exist", "bypassable": "it holds CAP_NET_ADMIN"}
            ]
        });
        let t = table(&doc, 6_000_000_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "egresstrator 0.3.0 (local): policy from consul (index 42, 3s old), raw-socket guard verified"
        );
        assert_eq!(
            lines[1],
            "CONTAINER     NAME             POSTURE    ACLS    APPLIED  FLOWS/1M  ERROR"
        );
        assert_eq!(
            lines[2],
            "aaaaaaaaaaaa  web              allowlist  web,db  5s ago   7"
        );
        assert_eq!(
            lines[3],
            "bbbbbbbbbbbb  batch-long-name  deny-all   -       -        0         bypassable: it holds CAP_NET_ADMIN; acl 'x' does not exist"
        );
    }
}
