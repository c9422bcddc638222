//! The one way every cache gets its objects at start (and after its watch expires).

use std::fmt::Debug;

use kube::api::{Api, WatchParams};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;

/// Objects per page where lists come in pages (see [`initial_lists`]).
const LIST_PAGE: u32 = 100;

/// A watcher configuration whose initial list is streamed one object at a time where the API
/// server offers it (WatchList: on by default since Kubernetes 1.32), else listed in pages of
/// [`LIST_PAGE`]. A list parsed whole holds all its objects at once, managedFields and all:
/// that was the operator's peak memory (66 MiB of heap at 1,000 sessions against 25 MiB live
/// after), which the allocator keeps as resident memory.
///
/// `api` is probed once with a streamed watch that selects nothing: the API server answers it
/// with an empty stream, or refuses it as Invalid when the feature gate is off.
pub async fn initial_lists<K>(api: &Api<K>) -> watcher::Config
where
    K: Clone + DeserializeOwned + Debug,
{
    let nothing = "whatsapp.leadmaster.dev/list-probe=none";
    match api.watch(&WatchParams::streaming_lists().labels(nothing).timeout(1), "0").await {
        Ok(_) => watcher::Config::default().streaming_lists(),
        Err(kube::Error::Api(refusal)) if (400..500).contains(&refusal.code) => {
            tracing::info!(error = %refusal, page = LIST_PAGE, "the API server does not stream lists: listing in pages");
            watcher::Config::default().page_size(LIST_PAGE)
        }
        // Paging works on every API server: the safe choice when the probe could not tell.
        Err(error) => {
            tracing::warn!(%error, page = LIST_PAGE, "could not ask the API server whether it streams lists: listing in pages");
            watcher::Config::default().page_size(LIST_PAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::RawQuery;
    use axum::http::StatusCode;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Client;
    use kube::runtime::watcher::InitialListStrategy;

    use super::*;

    /// An API server that answers a watch the way Kubernetes does: a streamed list refused as
    /// Invalid (the WatchList feature gate off), or an empty stream.
    async fn api_server(streams_lists: bool) -> Api<ConfigMap> {
        const REFUSAL: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"Invalid","code":422,
            "message":"ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"}"#;
        let watch = move |RawQuery(query): RawQuery| async move {
            let streamed = query.unwrap_or_default().contains("sendInitialEvents=true");
            if streamed && !streams_lists {
                (StatusCode::UNPROCESSABLE_ENTITY, REFUSAL)
            } else {
                (StatusCode::OK, "")
            }
        };
        let app = axum::Router::new().route("/api/v1/configmaps", axum::routing::get(watch));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Api::all(Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client"))
    }

    #[tokio::test]
    async fn a_cache_streams_its_list_where_the_api_server_offers_it_and_pages_elsewhere() {
        let streamed = initial_lists(&api_server(true).await).await;
        assert_eq!(streamed.initial_list_strategy, InitialListStrategy::StreamingList);

        let paged = initial_lists(&api_server(false).await).await;
        assert_eq!(paged.initial_list_strategy, InitialListStrategy::ListWatch);
        assert_eq!(paged.page_size, Some(LIST_PAGE));
    }
}
