//! A small OAuth 2.0 token issuer for the local broker's OAUTHBEARER listener: the
//! client-credentials grant at `/token`, answering with ES256-signed JWTs whose `sub` is
//! the client id, and the key set (JWKS) the broker's own OIDC validator checks them with.
//!
//! librdkafka's built-in OIDC method (`sasl.oauthbearer.method=oidc`) fetches tokens from
//! it as it would from any identity provider; Kafka validates them with
//! `OAuthBearerValidatorCallbackHandler` against the JWKS file written beside the broker.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

use crate::{Error, Result};

/// The audience the broker expects in every token.
pub const AUDIENCE: &str = "weir-kafka";
/// The issuer named in every token.
pub const ISSUER: &str = "weir-test-issuer";
/// The key id of the signing key in the JWKS.
const KEY_ID: &str = "weir-test-key";
/// How long a token is valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

struct Issuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    clients: Mutex<BTreeMap<String, String>>,
    issued: Mutex<u64>,
}

/// A running token issuer; stopped when dropped.
pub struct TokenIssuer {
    port: u16,
    issuer: Arc<Issuer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("port", &self.port)
            .finish()
    }
}

impl TokenIssuer {
    /// Makes a signing key, writes its JWKS to `jwks_path` and serves `/token` on a free
    /// loopback port from a thread of its own (so that it outlives any one test's runtime).
    pub fn start(jwks_path: &Path) -> Result<Self> {
        let rng = SystemRandom::new();
        let pki = |e: ring::error::Unspecified| Error::Pki(format!("signing key: {e}"));
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(pki)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| Error::Pki(format!("signing key: {e}")))?;
        // An uncompressed P-256 point: 0x04, x (32 bytes), y (32 bytes).
        let point = key.public_key().as_ref();
        let jwks = serde_json::json!({
            "keys": [{
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": KEY_ID,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }]
        });
        std::fs::write(jwks_path, jwks.to_string())
            .map_err(|e| Error::io(format!("writing {}", jwks_path.display()), e))?;
        let issuer = Arc::new(Issuer {
            key,
            rng,
            clients: Mutex::new(BTreeMap::new()),
            issued: Mutex::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("binding the token issuer", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("binding the token issuer", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("binding the token issuer", e))?
            .port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/token", post(token))
            .with_state(issuer.clone());
        let thread = std::thread::Builder::new()
            .name("token-issuer".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|e| Error::io("starting the token issuer", e))?;
        Ok(Self {
            port,
            issuer,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The token endpoint's URL.
    pub fn token_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Registers a client: its tokens have `sub` = `client_id` (principal `User:<id>`).
    pub fn register(&self, client_id: &str, secret: &str) {
        if let Ok(mut c) = self.issuer.clients.lock() {
            c.insert(client_id.to_owned(), secret.to_owned());
        }
    }

    /// How many tokens were issued so far.
    pub fn issued(&self) -> u64 {
        self.issuer.issued.lock().map(|n| *n).unwrap_or(0)
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The client id and secret of a client-credentials request: HTTP basic auth (what
/// librdkafka sends) or `client_id`/`client_secret` in the form body.
fn credentials(headers: &HeaderMap, form: &BTreeMap<String, String>) -> Option<(String, String)> {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    basic.or_else(|| {
        Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ))
    })
}

fn form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace('+', " ").replace("%20", " ")))
        .collect()
}

/// An answer with a JSON body (clients such as librdkafka refuse any other content type).
type Json = (
    StatusCode,
    [(axum::http::header::HeaderName, &'static str); 1],
    String,
);

fn json(status: StatusCode, body: String) -> Json {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

async fn token(State(issuer): State<Arc<Issuer>>, headers: HeaderMap, body: String) -> Json {
    let form = form(&body);
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"unsupported_grant_type"}"#.into(),
        );
    }
    let known = credentials(&headers, &form).filter(|(id, secret)| {
        issuer
            .clients
            .lock()
            .is_ok_and(|c| c.get(id).is_some_and(|s| s == secret))
    });
    let Some((client, _)) = known else {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_client","error_description":"unknown client or wrong secret"}"#
                .into(),
        );
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": KEY_ID});
    let mut claims = serde_json::json!({
        "iss": ISSUER, "sub": client, "aud": AUDIENCE, "iat": now,
        "exp": now + TOKEN_LIFETIME.as_secs(),
    });
    // Kafka's validator refuses an empty scope claim: one is set only when asked for.
    if let Some(scope) = form.get("scope").filter(|s| !s.is_empty()) {
        claims["scope"] = scope.clone().into();
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let Ok(signature) = issuer.key.sign(&issuer.rng, signing_input.as_bytes()) else {
        return json(StatusCode::INTERNAL_SERVER_ERROR, "{}".into());
    };
    if let Ok(mut n) = issuer.issued.lock() {
        *n += 1;
    }
    let jwt = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    );
    json(
        StatusCode::OK,
        serde_json::json!({
            "access_token": jwt, "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME.as_secs(),
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_come_from_basic_auth_or_the_form() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Basic {}", STANDARD.encode("app:s3cret"))
                .parse()
                .unwrap(),
        );
        assert_eq!(
            credentials(&headers, &BTreeMap::new()),
            Some(("app".into(), "s3cret".into()))
        );
        let f = form("grant_type=client_credentials&client_id=a&client_secret=b&scope=x+y");
        assert_eq!(
            credentials(&HeaderMap::new(), &f),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(f["scope"], "x y");
    }
}
