//! Tenant identifiers: who owns a span, a class, an objective or a proxy registration.
//!
//! A request names its tenant with the `X-Scope-OrgID` header (Tempo's and Mimir's), or the
//! token it presents binds one; without either it belongs to [`TenantId::SINGLE`], the one
//! tenant of a server that does not use tenants. A tenant's data lives under its own folder
//! and catalog, so an identifier must be safe as a path component: 1 to 64 characters from
//! `A-Z a-z 0-9 _ - .`, not starting with a dot.

use std::fmt;
use std::sync::Arc;

/// The header that names a request's tenant (lower case, as HTTP/2 and gRPC metadata carry it).
pub const TENANT_HEADER: &str = "x-scope-orgid";

/// Longest tenant identifier accepted.
pub const MAX_TENANT_CHARS: usize = 64;

/// A checked tenant identifier. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The tenant of requests that name none.
    pub const SINGLE: &'static str = "single";

    /// The default tenant.
    pub fn single() -> TenantId {
        TenantId(Arc::from(Self::SINGLE))
    }

    /// Checks `id`; the error says what is wrong with it.
    pub fn parse(id: &str) -> Result<TenantId, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if id.is_empty() || id.len() > MAX_TENANT_CHARS {
            return Err(format!(
                "tenant must be 1 to {MAX_TENANT_CHARS} characters, got {}",
                id.len()
            ));
        }
        if id.starts_with('.') || !id.chars().all(allowed) {
            return Err(format!(
                "tenant {:?} may only hold letters, digits, '_', '-' and '.', and may not start \
                 with '.'",
                id.chars().take(MAX_TENANT_CHARS).collect::<String>()
            ));
        }
        Ok(TenantId(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the default tenant.
    pub fn is_single(&self) -> bool {
        &*self.0 == Self::SINGLE
    }
}

impl Default for TenantId {
    fn default() -> Self {
        TenantId::single()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_safe_path_components() {
        for ok in ["single", "acme", "team-a_1", "org.example"] {
            assert_eq!(TenantId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", ".", "..", "../etc", "a/b", "a b", "é", ".hidden"] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TenantId::parse(&"x".repeat(65)).is_err());
        assert!(TenantId::single().is_single());
    }
}
