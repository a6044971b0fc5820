//! MQTT CONNECT authentication, run by rumqttd's async auth hook before the connection
//! joins the router: username = user id, password = access JWT, client id =
//! `{user id}:{device id}`. The token must verify (signature, issuer, expiry), name the
//! same user, and belong to a session that was not revoked.
//!
//! rumqttd answers a refusal by closing the socket without a CONNACK code, so a client
//! cannot tell "bad token" from "network down" here; the SDK asks the REST API when
//! connects keep failing.

use tidings_auth::TokenKeys;
use tidings_store::Store;

use crate::guard::parse_client_id;

/// Why a CONNECT was refused, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    ClientId,
    OtherUser,
    Token(tidings_auth::TokenError),
    SessionEnded,
    Store,
}

pub async fn check(
    store: &dyn Store,
    keys: &TokenKeys,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<String, Refusal> {
    let (user, _device) = parse_client_id(client_id).ok_or(Refusal::ClientId)?;
    if user != username {
        return Err(Refusal::OtherUser);
    }
    let claims = keys.verify_access(password).map_err(Refusal::Token)?;
    if claims.sub != user {
        return Err(Refusal::OtherUser);
    }
    match store.session_active(&claims.sid).await {
        Ok(true) => Ok(claims.sub),
        Ok(false) => Err(Refusal::SessionEnded),
        Err(e) => {
            tracing::error!(error = %e, "cannot check a session at CONNECT");
            Err(Refusal::Store)
        }
    }
}
