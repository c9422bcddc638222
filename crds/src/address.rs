//! Where a session's pod serves its API. The operator names every child after the session
//! (StatefulSet and headless Service `<name>`, so pod 0 is `<name>-0`), and the hub derives
//! the address from those names: never from the status, which the session pod writes.

/// The port a session pod serves its API on: the container's and the Service's `http` port.
pub const SESSION_PORT: i32 = 8080;

/// The stable DNS name of a session's pod: pod 0 of its StatefulSet under its headless Service.
pub fn session_host(namespace: &str, name: &str) -> String {
    format!("{name}-0.{name}.{namespace}.svc")
}

/// The base URL of a session pod's API.
pub fn session_url(namespace: &str, name: &str) -> String {
    format!("http://{}:{SESSION_PORT}", session_host(namespace, name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_address_follows_the_names_the_operator_gives() {
        assert_eq!(super::session_url("leads", "cliente-7"), "http://cliente-7-0.cliente-7.leads.svc:8080");
    }
}
