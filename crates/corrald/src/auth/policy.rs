//! Which role each request needs: one table-like function over method and route, so a
//! new endpoint is visibly placed (and admin-only until someone decides otherwise).

use axum::http::Method;
use corral_api::Role;

/// What a request needs before it reaches its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the login itself, the OpenAPI document, the web console's files.
    Public,
    /// Any valid credential, whatever its role (whoami, logout).
    Authenticated,
    /// At least this role.
    Role(Role),
}

/// `route` is the matched route template (`/api/v1/vms/{name}/stop`), or the raw path when
/// no route matched (then only `/api` paths need credentials, so a probe of unknown API
/// paths cannot tell which exist).
pub fn required(method: &Method, route: &str) -> Access {
    if !route.starts_with("/api/") && route != "/metrics" {
        return Access::Public; // the web console's files
    }
    match route {
        "/api/openapi.json" => return Access::Public,
        "/api/v1/auth/login" => return Access::Public,
        "/api/v1/auth/logout" | "/api/v1/auth/whoami" => return Access::Authenticated,
        _ => {}
    }
    // Host-to-host migration calls carry the arriving VM and its TLS keys: admins only.
    if [
        "/api/v1/users",
        "/api/v1/tokens",
        "/api/v1/audit",
        "/api/v1/migrations",
    ]
    .iter()
    .any(|p| route == *p || route.starts_with(&format!("{p}/")))
    {
        return Access::Role(Role::Admin);
    }
    if is_console(route) {
        return Access::Role(Role::Operator);
    }
    if *method == Method::GET || *method == Method::HEAD {
        return Access::Role(Role::Viewer);
    }
    // Looking at another host's certificate (before migrating there) trusts nothing.
    if is_operator_action(method, route) || route == "/api/v1/host/probe-certificate" {
        return Access::Role(Role::Operator);
    }
    Access::Role(Role::Admin)
}

/// Interactive sessions with a guest, and what it printed: an operator's.
pub fn is_console(route: &str) -> bool {
    matches!(
        route,
        "/api/v1/vms/{name}/console" | "/api/v1/vms/{name}/console/log" | "/api/v1/vms/{name}/vnc"
    )
}

fn is_operator_action(method: &Method, route: &str) -> bool {
    const POWER: [&str; 6] = ["start", "stop", "restart", "pause", "resume", "migrate"];
    if *method == Method::POST {
        if let Some(action) = route.strip_prefix("/api/v1/vms/{name}/") {
            return POWER.contains(&action)
                || action == "snapshots"
                || action == "snapshots/{snapshot}/revert";
        }
    }
    *method == Method::DELETE
        && matches!(
            route,
            "/api/v1/vms/{name}/snapshots/{snapshot}" | "/api/v1/operations/{id}"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(method: Method, route: &str) -> Access {
        required(&method, route)
    }

    #[test]
    fn roles_follow_the_issue() {
        use corral_api::Role as R;
        use Access::{Authenticated, Public, Role};
        assert_eq!(needs(Method::GET, "/"), Public);
        assert_eq!(needs(Method::GET, "/assets/index.js"), Public);
        assert_eq!(needs(Method::POST, "/api/v1/auth/login"), Public);
        assert_eq!(needs(Method::GET, "/api/v1/auth/whoami"), Authenticated);
        assert_eq!(needs(Method::GET, "/api/v1/vms"), Role(R::Viewer));
        assert_eq!(needs(Method::GET, "/metrics"), Role(R::Viewer));
        assert_eq!(needs(Method::GET, "/api/v1/nope"), Role(R::Viewer));
        assert_eq!(
            needs(Method::POST, "/api/v1/vms/{name}/stop"),
            Role(R::Operator)
        );
        assert_eq!(
            needs(Method::GET, "/api/v1/vms/{name}/vnc"),
            Role(R::Operator)
        );
        assert_eq!(
            needs(Method::POST, "/api/v1/vms/{name}/snapshots"),
            Role(R::Operator)
        );
        assert_eq!(
            needs(Method::DELETE, "/api/v1/vms/{name}/snapshots/{snapshot}"),
            Role(R::Operator)
        );
        assert_eq!(
            needs(Method::DELETE, "/api/v1/operations/{id}"),
            Role(R::Operator)
        );
        assert_eq!(needs(Method::POST, "/api/v1/vms"), Role(R::Admin));
        assert_eq!(needs(Method::DELETE, "/api/v1/vms/{name}"), Role(R::Admin));
        assert_eq!(
            needs(Method::POST, "/api/v1/vms/{name}/clone"),
            Role(R::Admin)
        );
        assert_eq!(needs(Method::GET, "/api/v1/users"), Role(R::Admin));
        assert_eq!(needs(Method::GET, "/api/v1/tokens"), Role(R::Admin));
        assert_eq!(needs(Method::DELETE, "/api/v1/tokens/{id}"), Role(R::Admin));
        assert_eq!(needs(Method::GET, "/api/v1/audit"), Role(R::Admin));
        assert_eq!(
            needs(Method::PUT, "/api/v1/vms/{name}/firewall"),
            Role(R::Admin)
        );
    }
}
