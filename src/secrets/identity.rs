//! Age identities (where sops finds them) and the data key wrapped to each recipient.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::armor::{ArmoredReader, ArmoredWriter, Format as ArmorFormat};

use super::SecretsError;
use super::cipher::DATA_KEY_LEN;
use super::metadata::AgeStanza;

/// The age identities Keystone may decrypt with. Debug shows only the public keys.
#[derive(Clone, Default)]
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    /// Where each key came from (for error messages), parallel to `keys`.
    sources: Vec<String>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("recipients", &self.recipients())
            .field("sources", &self.sources)
            .finish()
    }
}

impl Identities {
    /// Collect identities as sops does, the explicit file first: `explicit_key_file`
    /// (`--age-key-file`), `SOPS_AGE_KEY` (inline), `SOPS_AGE_KEY_FILE`, `SOPS_AGE_KEY_CMD`, then
    /// `$XDG_CONFIG_HOME/sops/age/keys.txt` (or `~/.config/sops/age/keys.txt`) if it exists.
    /// A source that is named but unreadable is an error; finding no identity at all is
    /// [`SecretsError::NoIdentity`].
    pub fn discover(explicit_key_file: Option<&Path>) -> Result<Identities, SecretsError> {
        let mut ids = Identities::default();
        if let Some(path) = explicit_key_file {
            ids.add_file(path)?;
        }
        if let Ok(inline) = std::env::var("SOPS_AGE_KEY")
            && !inline.trim().is_empty()
        {
            ids.add_text("SOPS_AGE_KEY", &inline)?;
        }
        if let Some(path) = std::env::var_os("SOPS_AGE_KEY_FILE").filter(|p| !p.is_empty()) {
            ids.add_file(Path::new(&path))?;
        }
        if let Ok(cmd) = std::env::var("SOPS_AGE_KEY_CMD")
            && !cmd.trim().is_empty()
        {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| SecretsError::Identity {
                    source_name: "SOPS_AGE_KEY_CMD".into(),
                    message: format!("cannot run `{cmd}`: {e}"),
                })?;
            if !out.status.success() {
                return Err(SecretsError::Identity {
                    source_name: "SOPS_AGE_KEY_CMD".into(),
                    message: format!("`{cmd}` failed with {}", out.status),
                });
            }
            ids.add_text("SOPS_AGE_KEY_CMD", &String::from_utf8_lossy(&out.stdout))?;
        }
        if let Some(default) = default_keys_file()
            && default.is_file()
        {
            ids.add_file(&default)?;
        }
        if ids.keys.is_empty() {
            return Err(SecretsError::NoIdentity);
        }
        Ok(ids)
    }

    /// Identities from one keys file.
    pub fn from_file(path: &Path) -> Result<Identities, SecretsError> {
        let mut ids = Identities::default();
        ids.add_file(path)?;
        Ok(ids)
    }

    /// Identities from the text of a keys file (`source_name` labels errors).
    pub fn from_text(source_name: &str, text: &str) -> Result<Identities, SecretsError> {
        let mut ids = Identities::default();
        ids.add_text(source_name, text)?;
        Ok(ids)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|e| SecretsError::Io {
            file: path.display().to_string(),
            message: format!("cannot read the age key file: {e}"),
        })?;
        self.add_text(&path.display().to_string(), &text)
    }

    fn add_text(&mut self, source_name: &str, text: &str) -> Result<(), SecretsError> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| SecretsError::Identity {
                source_name: format!("{source_name}:{}", n + 1),
                message: "not an age identity (expected a line starting AGE-SECRET-KEY-1)".into(),
            })?;
            self.keys.push(id);
            self.sources.push(source_name.to_string());
        }
        Ok(())
    }

    /// The public keys (`age1…`) of these identities.
    pub fn recipients(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.to_public().to_string())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Open the data key from whichever stanza one of these identities can.
    pub(crate) fn unwrap_data_key(
        &self,
        file: &str,
        stanzas: &[AgeStanza],
    ) -> Result<[u8; DATA_KEY_LEN], SecretsError> {
        let mine = self.recipients();
        // Try the stanzas addressed to one of our public keys first: it avoids useless work.
        let mut order: Vec<&AgeStanza> = stanzas
            .iter()
            .filter(|s| mine.contains(&s.recipient))
            .collect();
        order.extend(stanzas.iter().filter(|s| !mine.contains(&s.recipient)));
        for stanza in order {
            let Ok(decryptor) =
                age::Decryptor::new_buffered(ArmoredReader::new(stanza.enc.as_bytes()))
            else {
                continue;
            };
            let Ok(mut reader) =
                decryptor.decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            else {
                continue;
            };
            let mut key = Vec::new();
            if reader.read_to_end(&mut key).is_ok() && key.len() == DATA_KEY_LEN {
                let mut out = [0u8; DATA_KEY_LEN];
                out.copy_from_slice(&key);
                return Ok(out);
            }
        }
        Err(SecretsError::WrongKey {
            file: file.to_string(),
            recipients: stanzas.iter().map(|s| s.recipient.clone()).collect(),
            identities: mine,
        })
    }
}

/// sops' default keys file location on Linux.
pub fn default_keys_file() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(xdg).join("sops/age/keys.txt"));
    }
    std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .map(|home| PathBuf::from(home).join(".config/sops/age/keys.txt"))
}

/// Parse `age1…` recipients.
pub fn parse_recipients(list: &[String]) -> Result<Vec<age::x25519::Recipient>, SecretsError> {
    list.iter()
        .map(|r| {
            age::x25519::Recipient::from_str(r.trim()).map_err(|e| SecretsError::BadRecipient {
                recipient: r.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// Wrap the data key to one recipient as an armored age file, like sops (trailing newline).
pub(crate) fn wrap_data_key(
    key: &[u8; DATA_KEY_LEN],
    recipient: &age::x25519::Recipient,
) -> Result<String, SecretsError> {
    let fail = |e: String| SecretsError::BadRecipient {
        recipient: recipient.to_string(),
        message: e,
    };
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::new();
    let armored = ArmoredWriter::wrap_output(&mut out, ArmorFormat::AsciiArmor)
        .map_err(|e| fail(e.to_string()))?;
    let mut writer = encryptor
        .wrap_output(armored)
        .map_err(|e| fail(e.to_string()))?;
    writer.write_all(key).map_err(|e| fail(e.to_string()))?;
    writer
        .finish()
        .and_then(|armored| armored.finish())
        .map_err(|e| fail(e.to_string()))?;
    let mut text = String::from_utf8(out).expect("armor is ASCII");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A fresh random data key.
pub(crate) fn new_data_key() -> [u8; DATA_KEY_LEN] {
    use rand::RngCore;
    let mut key = [0u8; DATA_KEY_LEN];
    rand::thread_rng().fill_bytes(&mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_skip_comments_and_name_bad_lines() {
        let id = age::x25519::Identity::generate();
        let line = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string();
        let text = format!(
            "# created: now\n# public key: {}\n\n{line}\n",
            id.to_public()
        );
        let ids = Identities::from_text("keys.txt", &text).unwrap();
        assert_eq!(ids.recipients(), vec![id.to_public().to_string()]);
        // Debug shows public keys only.
        assert!(!format!("{ids:?}").contains(&line));

        let err = Identities::from_text("keys.txt", &format!("{line}\nAGE-SECRET-KEY-1NOPE\n"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "keys.txt:2: not an age identity (expected a line starting AGE-SECRET-KEY-1)"
        );
    }
}
