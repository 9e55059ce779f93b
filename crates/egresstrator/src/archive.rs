//! Builds the tar archives handed to Docker (`PUT /containers/{id}/archive`, and the root
//! filesystem of the helper image) with the `tar` crate. Names and link targets of any
//! length are written with GNU long-name records, which Docker's reader (Go's archive/tar)
//! understands.

use std::io;

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

/// Writes the members, then the two zero blocks that end an archive. Owner root, mtime 0,
/// so the same members always give the same bytes.
pub fn write(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match e {
            Entry::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, path.trim_start_matches('/'), io::empty())?;
            }
            Entry::File { path, mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path.trim_start_matches('/'), data.as_slice())?;
            }
            Entry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path.trim_start_matches('/'), target)?;
            }
        }
    }
    b.into_inner()
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
            // Beyond ustar's 100-byte link field and 255-byte name: the old writer's limits.
            Entry::Symlink {
                path: format!("egresstrator/{}", "n".repeat(200)),
                target: format!("{}/../rules.nft", "t".repeat(150)),
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
        let long_link = std::fs::read_link(dir.join("egresstrator").join("n".repeat(200)))
            .expect("long symlink");
        assert_eq!(
            long_link,
            std::path::PathBuf::from(format!("{}/../rules.nft", "t".repeat(150)))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
