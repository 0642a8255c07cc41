//! Client authentication: which internal service is calling, and so which
//! Feishu app it acts as.
//!
//! Keys are never stored: the table maps SHA-256(key) to a client. Looking
//! up the digest of what the caller sent compares hashes, not keys, so the
//! time taken says nothing about how much of a key was right.

pub mod sdk_token;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use http::header::AUTHORIZATION;
use http::HeaderMap;

use sha2::{Digest, Sha256};

/// An internal service allowed to call (`[[clients]]`).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Label in logs (`name`).
    pub name: String,
    /// Index into the config's `[[apps]]` of the app it acts as (`app`).
    pub app: usize,
    /// SHA-256 of the client's gateway key (from `key_env`, `key_file` or
    /// `key_sha256`). The key itself is not kept.
    pub key_sha256: [u8; 32],
    /// For a store app: the tenant this client always acts for (`tenant`);
    /// otherwise it names one per request in `X-Tenant-Key`.
    pub tenant: Option<String>,
}

/// SHA-256 of a client key, as stored in [`ClientConfig::key_sha256`].
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// A configured client, as found by [`ClientTable::authenticate`].
#[derive(Debug, Clone)]
pub struct Client {
    /// Index in the config's `clients`.
    pub index: usize,
    /// Client name, for logs.
    pub name: String,
    /// Index of the app it acts as.
    pub app: usize,
    /// SHA-256 of its key (never the key itself).
    pub key_sha256: [u8; 32],
    /// The tenant it always acts for (store apps), if fixed in config.
    pub tenant: Option<String>,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer <key>` header.
    Missing,
    /// A bearer credential that matches no client.
    Unknown,
}

/// Hashes a SHA-256 digest by its first 8 bytes: a digest is already
/// uniform, so SipHash over it again (~1 500 instructions per request) buys
/// nothing. Flooding is no concern: callers only look up, and the table
/// holds the configured clients alone.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }

    /// The slice length `[u8; 32]` hashes first: the same for every key.
    fn write_usize(&mut self, _: usize) {}
}

/// The configured clients, by key digest.
#[derive(Debug)]
pub struct ClientTable {
    by_digest: HashMap<[u8; 32], usize, BuildHasherDefault<DigestHasher>>,
    by_name: HashMap<String, usize>,
    clients: Vec<Client>,
    app_ids: Vec<String>,
}

impl ClientTable {
    /// Builds the table from config; `app_ids` are the apps' Feishu ids
    /// by app index.
    pub fn new(clients: &[ClientConfig], app_ids: Vec<String>) -> Self {
        let mut by_digest = HashMap::with_capacity_and_hasher(clients.len(), Default::default());
        let mut by_name = HashMap::with_capacity(clients.len());
        let mut list = Vec::with_capacity(clients.len());
        for (index, c) in clients.iter().enumerate() {
            by_digest.insert(c.key_sha256, index);
            by_name.insert(c.name.clone(), index);
            list.push(Client {
                index,
                name: c.name.clone(),
                app: c.app,
                key_sha256: c.key_sha256,
                tenant: c.tenant.clone(),
            });
        }
        ClientTable {
            by_digest,
            by_name,
            clients: list,
            app_ids,
        }
    }

    /// The client named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Client> {
        self.by_name.get(name).map(|&i| &self.clients[i])
    }

    /// The Feishu app id of the app `client` acts as.
    pub fn app_id_of(&self, client: &Client) -> Option<&str> {
        self.app_ids.get(client.app).map(String::as_str)
    }

    /// Finds the client whose key is in the `Authorization: Bearer` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&Client, AuthError> {
        let key = bearer(headers).ok_or(AuthError::Missing)?;
        self.by_key(key.as_bytes()).ok_or(AuthError::Unknown)
    }

    /// Finds the client with this key.
    pub fn by_key(&self, key: &[u8]) -> Option<&Client> {
        self.by_digest
            .get(&key_digest(key))
            .map(|&i| &self.clients[i])
    }

    /// All clients.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }
}

/// The credential of an `Authorization: Bearer <credential>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let cred = rest.trim();
    (!cred.is_empty()).then_some(cred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn table() -> ClientTable {
        ClientTable::new(
            &[ClientConfig {
                name: "billing".into(),
                app: 0,
                key_sha256: key_digest(b"billing-key-0123456789"),
                tenant: None,
            }],
            vec!["cli_1".into()],
        )
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn finds_the_client_by_key() {
        let t = table();
        let c = t
            .authenticate(&headers("Bearer billing-key-0123456789"))
            .unwrap();
        assert_eq!(c.name, "billing");
        assert!(t
            .authenticate(&headers("bearer  billing-key-0123456789 "))
            .is_ok());
    }

    #[test]
    fn missing_malformed_and_unknown() {
        let t = table();
        assert_eq!(
            t.authenticate(&HeaderMap::new()).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            t.authenticate(&headers("Basic abc")).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            t.authenticate(&headers("Bearer ")).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            t.authenticate(&headers("Bearer billing-key-0123456788"))
                .unwrap_err(),
            AuthError::Unknown
        );
    }
}
