//! Fencing the leader. The Lease says who leads, but a replica learns that it lost the Lease
//! only when a renewal comes back refused; a renewal that hangs or fails tells it nothing, and
//! it would go on reconciling after a standby took over. So, as client-go does, a leader that
//! has not seen its Lease renewed within the renew deadline steps down by itself, before the
//! Lease can expire and anyone else can take it, and leads again only once it sees a renewal.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

/// The renew deadline of a Lease of `duration` renewed `grace` before it expires: renewals
/// come every `duration - grace`, so half the grace past that one is missing, still before
/// the Lease expires.
pub fn renew_deadline(duration: Duration, grace: Duration) -> Duration {
    duration.saturating_sub(grace / 2)
}

/// Watches the Lease `name` and answers whether `identity` holds it with a renewal seen (on
/// this replica's clock) within `deadline`. Ends when every receiver is gone.
pub fn fence(api: Api<Lease>, name: &str, identity: String, deadline: Duration) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut leases = watcher(api, config).default_backoff().applied_objects().boxed();
    tokio::spawn(async move {
        let mut seen: Option<(Option<String>, Instant)> = None;
        let valid = |seen: &Option<(Option<String>, Instant)>| {
            seen.as_ref().is_some_and(|(_, at)| at.elapsed() < deadline)
        };
        loop {
            let expires = seen.as_ref().map_or_else(Instant::now, |(_, at)| *at + deadline);
            // Once the renewal has expired only the watch can change the answer: waiting on
            // the past deadline again would spin (a core at 100% while the API server is away).
            let live = valid(&seen);
            tokio::select! {
                _ = tx.closed() => return,
                item = leases.next() => match item {
                    Some(Ok(lease)) => seen = renewal(&lease, &identity, seen),
                    Some(Err(error)) => warn!(%error, "watching the leader Lease"),
                    None => return,
                },
                _ = tokio::time::sleep_until(expires), if live => {}
            }
            let valid = valid(&seen);
            tx.send_if_modified(|v| std::mem::replace(v, valid) != valid);
        }
    });
    rx
}

/// The last renewal of `identity`'s Lease: its renew time, and when it was first seen here.
fn renewal(
    lease: &Lease,
    identity: &str,
    seen: Option<(Option<String>, Instant)>,
) -> Option<(Option<String>, Instant)> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref().map(|t| t.0.to_string());
    match seen {
        Some((before, at)) if before == renewed => Some((before, at)),
        _ => Some((renewed, Instant::now())),
    }
}

/// A client for the Lease alone, so a hung API connection fails its calls in time.
pub async fn lease_client(deadline: Duration) -> Result<Client, kube::Error> {
    whatsapp_runtime::kube_client_with_timeout(
        "whatsapp-operator",
        (deadline / 3).max(Duration::from_secs(1)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed_second: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::from_second(renewed_second).unwrap(),
                )),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn the_deadline_falls_between_a_renewal_and_the_expiry() {
        let (duration, grace) = (Duration::from_secs(15), Duration::from_secs(5));
        let deadline = renew_deadline(duration, grace);
        assert!(deadline > duration - grace && deadline < duration, "{deadline:?}");
    }

    #[test]
    fn only_a_new_renewal_of_our_own_lease_counts() {
        let first = renewal(&lease("a", 10), "a", None).unwrap();
        // The same renewal seen again (a relist) is not news: it keeps the time it was first seen.
        let again = renewal(&lease("a", 10), "a", Some(first.clone())).unwrap();
        assert_eq!(again, first);
        let renewed = renewal(&lease("a", 13), "a", Some(again)).unwrap();
        assert_ne!(renewed.0, first.0);
        assert!(renewed.1 >= first.1);
        assert_eq!(renewal(&lease("b", 14), "a", Some(renewed)), None, "someone else's lease");
    }
}
