//! Client authentication: which internal service is calling, and so which
//! Feishu app it acts as.
//!
//! Keys are never stored: the table maps SHA-256(key) to a client. Looking
//! up the digest of what the caller sent compares hashes, not keys, so the
//! time taken says nothing about how much of a key was right.

pub mod allow;
pub mod sdk_token;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};

pub use allow::{AllowList, AllowRule};

use crate::endpoints::Catalog;
use crate::observe::metrics::Metrics;
use crate::quota::Share;

/// The most keys one client may hold at once (the current one, the next,
/// the previous: a rotation needs two or three).
pub const MAX_KEYS_PER_CLIENT: usize = 8;

/// An internal service allowed to call (`[[clients]]`).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Label in logs and metrics (`name`).
    pub name: String,
    /// Index into the config's `[[apps]]` of the app it acts as (`app`).
    pub app: usize,
    /// SHA-256 of each of the client's gateway keys (`key_env`, `key_file`,
    /// `key_sha256`, each a string or a list), in config order: several at
    /// once while a key is rotated. The keys themselves are not kept.
    pub keys: Vec<[u8; 32]>,
    /// For a store app: the tenant this client always acts for (`tenant`);
    /// otherwise it names one per request in `X-Tenant-Key`.
    pub tenant: Option<String>,
    /// The endpoints it may call (`allow`); `None`: every endpoint.
    pub allow: Option<Vec<AllowRule>>,
    /// The most it may use of each quota key of its app (`quota_share`);
    /// `None`: all of it, first come, first served.
    pub quota_share: Option<Share>,
}

/// SHA-256 of a client key, as stored in [`ClientConfig::keys`].
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The name of a key in logs and metrics: the first 8 hex digits of its
/// SHA-256 (the start of its `key_sha256`). It says which key was used
/// without saying anything of the key.
pub fn key_id(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..4])
}

/// One key of a client.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// SHA-256 of the key (never the key itself).
    pub digest: [u8; 32],
    /// [`key_id`] of the key: its label in logs and metrics.
    pub id: String,
    /// Requests authenticated with this key
    /// (`feishu_gateway_client_requests_total{client,key}`).
    requests: IntCounter,
}

/// A configured client, as found by [`ClientTable::authenticate`].
#[derive(Debug)]
pub struct Client {
    /// Index in the config's `clients`.
    pub index: usize,
    /// Client name, for logs.
    pub name: String,
    /// Index of the app it acts as.
    pub app: usize,
    /// Its keys, in config order.
    pub keys: Vec<ClientKey>,
    /// The tenant it always acts for (store apps), if fixed in config.
    pub tenant: Option<String>,
    /// The endpoints it may call; `None`: every endpoint.
    pub allow: Option<AllowList>,
    /// The most it may use of each quota key of its app (`quota_share`).
    pub quota_share: Option<Share>,
}

impl Client {
    /// Counts one request authenticated with key `key` (an index into
    /// [`Client::keys`]).
    pub fn count_request(&self, key: usize) {
        if let Some(k) = self.keys.get(key) {
            k.requests.inc();
        }
    }

    /// The [`key_id`] of key `key`.
    pub fn key_id(&self, key: usize) -> Option<&str> {
        self.keys.get(key).map(|k| k.id.as_str())
    }
}

/// A client and which of its keys the caller presented (an index into
/// [`Client::keys`]).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client.
    pub client: Arc<Client>,
    /// The key it used (a gateway token counts as the key it was issued
    /// for).
    pub key: usize,
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

/// The configured clients, by key digest: everything a request needs to
/// know about its caller (keys, app, tenant, allow list) in one value.
///
/// Built once from config (`app::build`) and shared as an
/// `Arc<ClientTable>`; a request keeps the [`Caller`] (an `Arc<Client>`)
/// it was authenticated as. So a live reload can build a new table and
/// swap the `Arc` atomically, while requests in flight finish with the
/// clients they started with. The allow lists are compiled against one
/// catalog: swap the two together.
#[derive(Debug)]
pub struct ClientTable {
    by_digest: HashMap<[u8; 32], (usize, usize), BuildHasherDefault<DigestHasher>>,
    by_name: HashMap<String, usize>,
    clients: Vec<Arc<Client>>,
    app_ids: Vec<String>,
}

impl ClientTable {
    /// Builds the table from config; `app_ids` are the apps' Feishu ids by
    /// app index; allow lists are compiled against `catalog`; each key's
    /// request counter starts at 0 in `metrics`.
    pub fn new(
        clients: &[ClientConfig],
        app_ids: Vec<String>,
        catalog: &Catalog,
        metrics: &Metrics,
    ) -> Self {
        let mut by_digest = HashMap::with_capacity_and_hasher(clients.len(), Default::default());
        let mut by_name = HashMap::with_capacity(clients.len());
        let mut list = Vec::with_capacity(clients.len());
        for (index, c) in clients.iter().enumerate() {
            let keys = c
                .keys
                .iter()
                .enumerate()
                .map(|(k, digest)| {
                    by_digest.insert(*digest, (index, k));
                    let id = key_id(digest);
                    ClientKey {
                        requests: metrics.client_key_requests(&c.name, &id),
                        digest: *digest,
                        id,
                    }
                })
                .collect();
            by_name.insert(c.name.clone(), index);
            list.push(Arc::new(Client {
                index,
                name: c.name.clone(),
                app: c.app,
                keys,
                tenant: c.tenant.clone(),
                allow: c
                    .allow
                    .as_ref()
                    .map(|rules| AllowList::compile(rules, catalog)),
                quota_share: c.quota_share,
            }));
        }
        ClientTable {
            by_digest,
            by_name,
            clients: list,
            app_ids,
        }
    }

    /// The client named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Client>> {
        self.by_name.get(name).map(|&i| &self.clients[i])
    }

    /// The Feishu app id of the app `client` acts as.
    pub fn app_id_of(&self, client: &Client) -> Option<&str> {
        self.app_ids.get(client.app).map(String::as_str)
    }

    /// Finds the client whose key is in the `Authorization: Bearer` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let key = bearer(headers).ok_or(AuthError::Missing)?;
        self.by_key(key.as_bytes()).ok_or(AuthError::Unknown)
    }

    /// Finds the client holding this key, and which of its keys it is.
    pub fn by_key(&self, key: &[u8]) -> Option<Caller> {
        self.by_digest.get(&key_digest(key)).map(|&(i, k)| Caller {
            client: Arc::clone(&self.clients[i]),
            key: k,
        })
    }

    /// All clients.
    pub fn clients(&self) -> &[Arc<Client>] {
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
        let metrics = Metrics::new(prometheus::Registry::new(), &[], &[]).unwrap();
        ClientTable::new(
            &[ClientConfig {
                name: "billing".into(),
                app: 0,
                keys: vec![
                    key_digest(b"billing-key-0123456789"),
                    key_digest(b"billing-key-NEXT-0123456789"),
                ],
                tenant: None,
                allow: None,
                quota_share: None,
            }],
            vec!["cli_1".into()],
            &Catalog::builtin(),
            &metrics,
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
        assert_eq!(c.client.name, "billing");
        assert_eq!(c.key, 0);
        // The next key, during a rotation: the same client, named by its
        // digest prefix.
        let next = t
            .authenticate(&headers("Bearer billing-key-NEXT-0123456789"))
            .unwrap();
        assert_eq!((next.client.name.as_str(), next.key), ("billing", 1));
        let id = next.client.key_id(1).unwrap();
        assert_eq!(
            id,
            &hex::encode(key_digest(b"billing-key-NEXT-0123456789"))[..8]
        );
        assert_ne!(Some(id), next.client.key_id(0));
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
