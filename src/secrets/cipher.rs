//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` values: AES-256-GCM with the data key, a 32-byte
//! IV, the key path as additional data and the tag stored apart from the ciphertext.

use aes_gcm::aead::consts::{U12, U32};
use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;

use super::tree::Scalar;

/// sops' cipher: AES-256-GCM with 32-byte nonces.
type SopsGcm = AesGcm<Aes256, U32>;
/// Files written by other tools may use the standard 12-byte nonce.
type StdGcm = AesGcm<Aes256, U12>;

pub const DATA_KEY_LEN: usize = 32;
pub const IV_LEN: usize = 32;

/// What an `ENC[…]` value decrypts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Plain {
    Scalar(Scalar),
    Comment(String),
}

/// Why a value could not be decrypted. The caller adds file and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CipherError {
    /// Not of the `ENC[AES256_GCM,…]` shape, or bad base64.
    Malformed(String),
    /// GCM authentication failed: wrong data key, wrong path, or changed ciphertext.
    Authentication,
    /// Decrypted, but the text is not a valid value of its `type:`.
    BadType(String),
}

/// True for a value sops would try to decrypt.
pub fn looks_encrypted(s: &str) -> bool {
    s.starts_with("ENC[AES256_GCM,") && s.ends_with(']')
}

struct Parsed {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    kind: String,
}

fn parse(value: &str) -> Result<Parsed, CipherError> {
    let inner = value
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| CipherError::Malformed("not an ENC[AES256_GCM,…] value".into()))?;
    let mut data = None;
    let mut iv = None;
    let mut tag = None;
    let mut kind = None;
    for part in inner.split(',') {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| CipherError::Malformed(format!("field `{part}` has no `:`")))?;
        let decode = |v: &str| {
            B64.decode(v)
                .map_err(|e| CipherError::Malformed(format!("field `{k}` is not base64: {e}")))
        };
        match k {
            "data" => data = Some(decode(v)?),
            "iv" => iv = Some(decode(v)?),
            "tag" => tag = Some(decode(v)?),
            "type" => kind = Some(v.to_string()),
            _ => return Err(CipherError::Malformed(format!("unknown field `{k}`"))),
        }
    }
    let missing = |f: &str| CipherError::Malformed(format!("field `{f}` is missing"));
    Ok(Parsed {
        data: data.ok_or_else(|| missing("data"))?,
        iv: iv.ok_or_else(|| missing("iv"))?,
        tag: tag.ok_or_else(|| missing("tag"))?,
        kind: kind.ok_or_else(|| missing("type"))?,
    })
}

/// The data key, keyed once for every value of a file (AES key schedule and GHASH key).
pub struct Cipher {
    sops: SopsGcm,
    std: StdGcm,
}

impl Cipher {
    pub fn new(key: &[u8; DATA_KEY_LEN]) -> Cipher {
        Cipher {
            sops: SopsGcm::new(key.into()),
            std: StdGcm::new(key.into()),
        }
    }

    /// Decrypt one value with the additional data (`db:password:`), also returning the value's
    /// IV (kept to re-encrypt an unchanged value identically).
    pub fn decrypt_with_iv(&self, value: &str, aad: &str) -> Result<(Plain, Vec<u8>), CipherError> {
        let p = parse(value)?;
        // The tag is stored apart from the ciphertext: decrypt in place, detached.
        let mut plain = p.data;
        if p.tag.len() != 16 {
            return Err(CipherError::Authentication);
        }
        let tag = aes_gcm::Tag::from_slice(&p.tag);
        match p.iv.len() {
            32 => self.sops.decrypt_in_place_detached(
                Nonce::<U32>::from_slice(&p.iv),
                aad.as_bytes(),
                &mut plain,
                tag,
            ),
            12 => self.std.decrypt_in_place_detached(
                Nonce::<U12>::from_slice(&p.iv),
                aad.as_bytes(),
                &mut plain,
                tag,
            ),
            n => return Err(CipherError::Malformed(format!("IV of {n} bytes"))),
        }
        .map_err(|_| CipherError::Authentication)?;
        let kind = p.kind.as_str();
        if kind == "bytes" {
            return Ok((Plain::Scalar(Scalar::Bytes(plain)), p.iv));
        }
        if !matches!(kind, "str" | "int" | "float" | "bool" | "time" | "comment") {
            return Err(CipherError::BadType(format!("unknown type `{kind}`")));
        }
        let text = String::from_utf8(plain)
            .map_err(|_| CipherError::BadType(format!("{kind} value is not UTF-8")))?;
        let bad = |what: &str| CipherError::BadType(format!("not a valid {what}"));
        let plain = match kind {
            "str" => Plain::Scalar(Scalar::Str(text)),
            "int" => Plain::Scalar(Scalar::Int(text.parse().map_err(|_| bad("int"))?)),
            "float" => Plain::Scalar(Scalar::Float(
                parse_go_float(&text).ok_or_else(|| bad("float"))?,
            )),
            "bool" => Plain::Scalar(Scalar::Bool(
                parse_go_bool(&text).ok_or_else(|| bad("bool"))?,
            )),
            "time" => Plain::Scalar(Scalar::Time(text)),
            _ => Plain::Comment(text),
        };
        Ok((plain, p.iv))
    }

    /// Encrypt plaintext bytes of a value of type `kind`. `iv` reuses a previous IV (so an
    /// unchanged value keeps its exact ciphertext); otherwise a fresh random one is drawn.
    pub fn encrypt(&self, plain: &[u8], kind: &str, aad: &str, iv: Option<&[u8]>) -> String {
        let iv: Vec<u8> = match iv {
            Some(iv) if iv.len() == IV_LEN => iv.to_vec(),
            _ => {
                let mut iv = vec![0u8; IV_LEN];
                rand::thread_rng().fill_bytes(&mut iv);
                iv
            }
        };
        let out = self
            .sops
            .encrypt(
                Nonce::<U32>::from_slice(&iv),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let (data, tag) = out.split_at(out.len() - 16);
        format!(
            "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
            B64.encode(data),
            B64.encode(&iv),
            B64.encode(tag)
        )
    }
}

/// Decrypt one value with the data key and the additional data (`db:password:`).
pub fn decrypt(value: &str, key: &[u8; DATA_KEY_LEN], aad: &str) -> Result<Plain, CipherError> {
    decrypt_with_iv(value, key, aad).map(|(plain, _)| plain)
}

/// [`decrypt`], also returning the value's IV (kept to re-encrypt an unchanged value
/// identically). Keys the cipher for this one value; a file's walk uses one [`Cipher`].
pub fn decrypt_with_iv(
    value: &str,
    key: &[u8; DATA_KEY_LEN],
    aad: &str,
) -> Result<(Plain, Vec<u8>), CipherError> {
    Cipher::new(key).decrypt_with_iv(value, aad)
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_go_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.replace('_', "").parse().ok(),
    }
}

/// Encrypt plaintext bytes of a value of type `kind` (see [`Cipher::encrypt`]).
pub fn encrypt(
    plain: &[u8],
    kind: &str,
    key: &[u8; DATA_KEY_LEN],
    aad: &str,
    iv: Option<&[u8]>,
) -> String {
    Cipher::new(key).encrypt(plain, kind, aad, iv)
}

/// Encrypt a scalar; see [`encrypt`].
#[cfg(test)]
pub fn encrypt_scalar(
    value: &Scalar,
    key: &[u8; DATA_KEY_LEN],
    aad: &str,
    iv: Option<&[u8]>,
) -> String {
    encrypt(&value.to_bytes(), value.type_name(), key, aad, iv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aad_binding() {
        let key = [7u8; 32];
        let enc = encrypt_scalar(&Scalar::Int(5432), &key, "db:port:", None);
        assert!(enc.ends_with(",type:int]"), "{enc}");
        assert_eq!(
            decrypt(&enc, &key, "db:port:"),
            Ok(Plain::Scalar(Scalar::Int(5432)))
        );
        assert_eq!(
            decrypt(&enc, &key, "db:other:"),
            Err(CipherError::Authentication)
        );
        let (_, iv) = decrypt_with_iv(&enc, &key, "db:port:").unwrap();
        assert_eq!(
            encrypt_scalar(&Scalar::Int(5432), &key, "db:port:", Some(&iv)),
            enc
        );
    }
}
