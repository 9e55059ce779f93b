//! A minimal ustar writer: enough to hand files to Docker (`PUT /containers/{id}/archive`)
//! and to import a root filesystem as an image, without a tar dependency.
//!
//! Only regular files, directories and symbolic links; names up to 100 bytes (255 with the
//! ustar prefix field). Longer names are an error, never a silent truncation.

/// One archive member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// Why an archive cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarError {
    #[error("tar member name {0:?} is too long for ustar")]
    NameTooLong(String),
    #[error("tar link target {0:?} is longer than 100 bytes")]
    LinkTooLong(String),
}

/// Writes the members, then the two zero blocks that end an archive.
pub fn write(entries: &[Entry]) -> Result<Vec<u8>, TarError> {
    let mut out = Vec::new();
    for e in entries {
        let (path, mode, size, kind, link, data): (&str, u32, usize, u8, &str, &[u8]) = match e {
            Entry::Dir { path, mode } => (path, *mode, 0, b'5', "", &[]),
            Entry::File { path, mode, data } => (path, *mode, data.len(), b'0', "", data),
            Entry::Symlink { path, target } => (path, 0o777, 0, b'2', target, &[]),
        };
        let mut h = [0u8; 512];
        let path = path.trim_start_matches('/');
        let (prefix, name) = split_name(path)?;
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        octal(&mut h[124..136], size as u64);
        octal(&mut h[136..148], 0); // mtime
        h[156] = kind;
        if link.len() > 100 {
            return Err(TarError::LinkTooLong(link.to_owned()));
        }
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let cks = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(cks.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    Ok(out)
}

fn split_name(path: &str) -> Result<(&str, &str), TarError> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    // ustar: prefix (≤155) + '/' + name (≤100), split at a slash.
    for (i, _) in path.match_indices('/') {
        let (p, n) = (&path[..i], &path[i + 1..]);
        if p.len() <= 155 && n.len() <= 100 && !n.is_empty() {
            return Ok((p, n));
        }
    }
    Err(TarError::NameTooLong(path.to_owned()))
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_reads_back_with_the_system_tar() {
        let data = write(&[
            Entry::Dir {
                path: "egresstrator".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "egresstrator/rules.nft".into(),
                mode: 0o644,
                data: b"table inet egresstrator {}\n".to_vec(),
            },
            Entry::Symlink {
                path: "egresstrator/link".into(),
                target: "rules.nft".into(),
            },
            Entry::File {
                path: format!("{}/{}", "d".repeat(120), "f"),
                mode: 0o600,
                data: vec![7; 1000],
            },
        ])
        .expect("writes");
        assert_eq!(data.len() % 512, 0);
        let dir = std::env::temp_dir().join(format!("egt-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let archive = dir.join("a.tar");
        std::fs::write(&archive, &data).expect("write");
        let out = std::process::Command::new("tar")
            .args(["-x", "-f"])
            .arg(&archive)
            .arg("-C")
            .arg(&dir)
            .output()
            .expect("tar runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("egresstrator/link")).expect("link"),
            "table inet egresstrator {}\n"
        );
        assert_eq!(
            std::fs::read(dir.join("d".repeat(120)).join("f"))
                .expect("long")
                .len(),
            1000
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overlong_names_are_refused() {
        let e = write(&[Entry::Dir {
            path: "x".repeat(300),
            mode: 0o755,
        }]);
        assert!(matches!(e, Err(TarError::NameTooLong(_))));
    }
}
