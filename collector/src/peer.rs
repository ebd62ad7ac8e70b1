//! What a request's connection says about its client: its address and, over TLS, the names of
//! the client certificate the handshake verified against `[tls] client_ca` (its subject
//! alternative names: URIs such as a mesh's SPIFFE IDs, and DNS names). The listeners put a
//! [`Peer`] into every request's extensions (HTTP) or connection info (gRPC); [`crate::auth`]
//! maps certificate names to `[[auth.tokens]]` entries, so a sidecar may authenticate with its
//! mesh identity instead of a bearer token.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;

/// The client of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Its address; None where the listener recorded none.
    pub addr: Option<SocketAddr>,
    /// The URI and DNS subject alternative names of its verified client certificate; empty
    /// without one.
    pub cert_names: Arc<[String]>,
}

impl Peer {
    /// A client at `ip` without a certificate.
    pub fn at(ip: IpAddr) -> Peer {
        Peer {
            addr: Some(SocketAddr::new(ip, 0)),
            cert_names: Arc::from([]),
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.addr.map(|a| a.ip())
    }

    /// The peer of a request: the [`Peer`] its listener recorded, else the address axum's
    /// `ConnectInfo` or tonic's TCP listener recorded (no certificate names).
    pub fn of(extensions: &http::Extensions) -> Peer {
        if let Some(peer) = extensions.get::<Peer>() {
            return peer.clone();
        }
        let addr = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .or_else(|| {
                extensions
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|c| c.remote_addr())
            });
        Peer {
            addr,
            cert_names: Arc::from([]),
        }
    }
}
