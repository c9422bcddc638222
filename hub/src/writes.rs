//! The hub's writes to Kubernetes: creating and deleting WhatsAppSessions and changing the
//! few spec fields the API exposes (suspend/resume, phone-code pairing). Everything else is
//! read from the cache.

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use whatsapp_crds::{PairingMethod, PairingSpec, WhatsAppSession, WhatsAppSessionSpec};

use crate::cache::SessionView;
use crate::error::ApiError;

const FIELD_MANAGER: &str = "whatsapp-hub";

pub struct SessionWriter {
    client: Client,
    /// Where `POST /api/sessions` creates sessions.
    namespace: String,
}

impl SessionWriter {
    pub fn new(client: Client, namespace: String) -> SessionWriter {
        SessionWriter { client, namespace }
    }

    pub async fn create(
        &self,
        cliente_id: i64,
        phone_number: Option<String>,
    ) -> Result<WhatsAppSession, ApiError> {
        let pairing = match phone_number {
            Some(phone) => PairingSpec { method: PairingMethod::PhoneCode, phone_number: Some(phone) },
            None => PairingSpec::default(),
        };
        let spec: WhatsAppSessionSpec = serde_json::from_value(json!({"clienteId": cliente_id}))
            .map_err(|e| ApiError::Kubernetes(e.to_string()))?;
        let session = WhatsAppSession::new(
            &crate::cache::session_name(cliente_id),
            WhatsAppSessionSpec { pairing, ..spec },
        );
        let api: Api<WhatsAppSession> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        api.create(&params, &session).await.map_err(|e| match e {
            kube::Error::Api(ae) if ae.code == 409 => ApiError::SessionExists(cliente_id),
            e => kube_error(e),
        })
    }

    pub async fn delete(&self, session: &SessionView) -> Result<(), ApiError> {
        self.api(session).delete(&session.name, &DeleteParams::foreground()).await.map_err(kube_error)?;
        Ok(())
    }

    /// Suspends (the pod stops, the login is kept) or resumes a session.
    pub async fn set_suspended(&self, session: &SessionView, suspended: bool) -> Result<(), ApiError> {
        self.patch_spec(session, json!({"suspended": suspended})).await
    }

    /// Switches the session to phone-code pairing with this number.
    pub async fn pair_by_phone(&self, session: &SessionView, phone: &str) -> Result<(), ApiError> {
        self.patch_spec(session, json!({"pairing": {"method": "PhoneCode", "phoneNumber": phone}})).await
    }

    async fn patch_spec(&self, session: &SessionView, spec: serde_json::Value) -> Result<(), ApiError> {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        self.api(session)
            .patch(&session.name, &params, &Patch::Merge(json!({"spec": spec})))
            .await
            .map_err(kube_error)?;
        Ok(())
    }

    fn api(&self, session: &SessionView) -> Api<WhatsAppSession> {
        Api::namespaced(self.client.clone(), &session.namespace)
    }
}

/// Admission refusals (the CRD's CEL rules) are the caller's 400; the rest is ours.
fn kube_error(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(ae) if ae.code == 422 || ae.code == 400 => {
            ApiError::validation("INVALID_SESSION", ae.message)
        }
        kube::Error::Api(ae) if ae.code == 404 => {
            ApiError::NotFound("the session was deleted meanwhile".into())
        }
        e => ApiError::Kubernetes(e.to_string()),
    }
}
