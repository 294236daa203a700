//! Guest images: register, describe, deregister.

use super::*;

impl Core {
    pub(super) fn register_image(&mut self, rec: ImageRecord) -> Reply {
        validate_image(&rec)?;
        if self.images.contains_key(&rec.ami) {
            return Err(ApiError::new(
                ErrorCode::InvalidAmiIdDuplicate,
                format!("the image id '{}' is already registered", rec.ami),
            ));
        }
        self.commit_records(vec![Edit::PutImage(rec.clone())])?;
        self.images.insert(rec.ami.clone(), rec.clone());
        Ok(Response::Images { images: vec![rec] })
    }

    pub(super) fn image(&self, ami: &str) -> Result<&ImageRecord, ApiError> {
        self.images.get(ami).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidAmiIdNotFound,
                format!("the image id '{}' does not exist", ami.escape_default()),
            )
        })
    }

    pub(super) fn describe_images(&self, amis: &[String]) -> Reply {
        let images = if amis.is_empty() {
            self.images.values().cloned().collect()
        } else {
            let mut out: Vec<ImageRecord> = Vec::new();
            for ami in amis {
                let rec = self.image(ami)?;
                if !out.contains(rec) {
                    out.push(rec.clone());
                }
            }
            out
        };
        Ok(Response::Images { images })
    }

    pub(super) fn deregister_image(&mut self, ami: &str) -> Reply {
        let rec = self.image(ami)?.clone();
        self.commit_records(vec![Edit::DeleteImage {
            ami: rec.ami.clone(),
        }])?;
        self.images.remove(ami);
        Ok(Response::Images { images: vec![rec] })
    }
}

/// A registered image: `ami-` + 8 lowercase hex digits, existing regular files
/// by absolute path (a bzImage kernel, an initramfs initrd), 32 to 65536 MiB, a printable command line of at most 1024
/// characters.
pub(super) fn validate_image(rec: &ImageRecord) -> Result<(), ApiError> {
    let bad = |msg: String| Err(ApiError::new(ErrorCode::InvalidParameterValue, msg));
    let ami_ok = rec.ami.strip_prefix("ami-").is_some_and(|h| {
        h.len() == 8
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !ami_ok {
        return bad(format!(
            "invalid image id '{}': expected ami- and 8 lowercase hex digits",
            rec.ami.escape_default()
        ));
    }
    let files = [
        ("kernel", Some(&rec.kernel)),
        ("initrd", Some(&rec.initrd)),
        ("disk", rec.disk.as_ref()),
    ];
    for (what, path) in files {
        let Some(path) = path else { continue };
        let shown = path.display().to_string().escape_default().to_string();
        if !path.is_absolute() {
            return bad(format!("invalid {what} '{shown}': not an absolute path"));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return bad(format!("invalid {what} '{shown}': not a regular file")),
            Err(e) => return bad(format!("invalid {what} '{shown}': {e}")),
        }
        let content = match what {
            "kernel" => crate::qemu::check_kernel(path),
            "initrd" => crate::qemu::check_initrd(path),
            _ => Ok(()),
        };
        if let Err(why) = content {
            return bad(format!("invalid {what} '{shown}': {why}"));
        }
    }
    if !(32..=65536).contains(&rec.memory_mb) {
        return bad(format!(
            "invalid memory size '{}' MiB: must be 32 to 65536",
            rec.memory_mb
        ));
    }
    if rec.append.len() > 1024 || !rec.append.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return bad(format!(
            "invalid kernel command line '{}': up to 1024 printable ASCII characters",
            rec.append.escape_default()
        ));
    }
    Ok(())
}
