//! MQTT CONNECT authentication: username = user id, password = an access JWT or a
//! device credential's secret, client id = `{user id}:{device id}`. A token must verify
//! (signature, issuer, expiry), name the same user, and belong to a session that was
//! not revoked; a device secret must be a live credential of that user. Every refusal
//! maps to a CONNACK code, so a device can tell a bad password from a network failure.

use tidings_auth::{device, TokenKeys};
use tidings_store::DeviceGrant;
use tidings_store::Store;

use crate::connection::Refusal as ConnAckRefusal;

pub use tidings_store::acl::parse_client_id;

/// Why a CONNECT was refused, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoCredentials,
    ClientId,
    OtherUser,
    Token(tidings_auth::TokenError),
    SessionEnded,
    Store,
}

impl Refusal {
    /// The CONNACK code: malformed client ids are "identifier rejected", another user's
    /// client id is "not authorized", and every token problem is "bad user name or
    /// password" (refresh or log in again).
    pub fn connack(&self) -> ConnAckRefusal {
        match self {
            Refusal::ClientId => ConnAckRefusal::ClientId,
            Refusal::OtherUser => ConnAckRefusal::NotAuthorized,
            Refusal::NoCredentials | Refusal::Token(_) | Refusal::SessionEnded => {
                ConnAckRefusal::BadCredentials
            }
            Refusal::Store => ConnAckRefusal::ServerUnavailable,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no_credentials",
            Refusal::ClientId => "client_id",
            Refusal::OtherUser => "other_user",
            Refusal::Token(_) => "token",
            Refusal::SessionEnded => "session_ended",
            Refusal::Store => "store",
        }
    }
}

/// Who an accepted CONNECT is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub device: String,
    pub session: String,
    pub grant: DeviceGrant,
}

pub async fn check(
    store: &dyn Store,
    keys: &TokenKeys,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Identity, Refusal> {
    let (user, device) = parse_client_id(client_id).ok_or(Refusal::ClientId)?;
    let (Some(username), Some(password)) = (username, password) else {
        return Err(Refusal::NoCredentials);
    };
    if user != username {
        return Err(Refusal::OtherUser);
    }
    if device::is_secret(password) {
        return match store
            .device_credential_by_secret(&device::secret_hash(password))
            .await
        {
            Ok(Some(c)) if c.user_id == user => Ok(Identity {
                user: c.user_id,
                device: device.to_owned(),
                session: c.id,
                grant: c.grant,
            }),
            Ok(Some(_)) => Err(Refusal::OtherUser),
            Ok(None) => Err(Refusal::SessionEnded),
            Err(e) => {
                tracing::error!(error = %e, "cannot check a device credential at CONNECT");
                Err(Refusal::Store)
            }
        };
    }
    let claims = keys.verify_access(password).map_err(Refusal::Token)?;
    if claims.sub != user {
        return Err(Refusal::OtherUser);
    }
    match store.session_active(&claims.sid).await {
        Ok(true) => Ok(Identity {
            user: claims.sub,
            device: device.to_owned(),
            session: claims.sid,
            grant: DeviceGrant::default(),
        }),
        Ok(false) => Err(Refusal::SessionEnded),
        Err(e) => {
            tracing::error!(error = %e, "cannot check a session at CONNECT");
            Err(Refusal::Store)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_client_id;
    use tidings_core::protocol::ids::new_id;

    #[test]
    fn client_ids_name_a_user_and_a_device() {
        let u = new_id();
        assert_eq!(
            parse_client_id(&format!("{u}:phone")),
            Some((u.as_str(), "phone"))
        );
        for bad in [
            u.clone(),
            format!("{u}:"),
            format!("{u}:a/b"),
            format!("{u}:+"),
            "x:phone".into(),
            format!(":{u}"),
        ] {
            assert_eq!(parse_client_id(&bad), None, "{bad}");
        }
    }
}
