//! The database credentials, from the Secret named by `spec.postgres.credentialsSecretRef`, and
//! the CA certificate from `spec.postgres.caCert`.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, ResourceExt};

use crate::controller::{Context, Error};
use crate::crd::CdcSource;
use crate::crd::cdc_source::{CaCertRef, CaSourceKind};

/// What the guard logs in with.
pub(super) struct Credentials {
    pub username: String,
    pub password: String,
}

/// Reads the credentials Secret; a missing Secret or key is a dependency to wait for.
pub(super) async fn credentials(cdc: &CdcSource, ctx: &Context) -> Result<Credentials, Error> {
    let ns = cdc.namespace().unwrap_or_default();
    let secret_name = &cdc.spec.postgres.credentials_secret_ref.name;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = secrets
        .get_opt(secret_name)
        .await?
        .ok_or_else(|| Error::Dependency {
            what: format!("Secret {ns}/{secret_name} (spec.postgres.credentialsSecretRef)"),
            problem: "not found: create it with keys username and password".into(),
        })?;
    let field = |key: &'static str| -> Result<String, Error> {
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| Error::Dependency {
                what: format!("Secret {ns}/{secret_name}"),
                problem: format!("has no key {key:?} (it needs username and password)"),
            })?;
        String::from_utf8(value.0.clone()).map_err(|source| Error::SecretNotText {
            secret: format!("{ns}/{secret_name}"),
            key,
            source,
        })
    };
    Ok(Credentials {
        username: field("username")?,
        password: field("password")?,
    })
}

/// The PEM bytes of `spec.postgres.caCert`; missing is a dependency to wait for.
pub(super) async fn ca_certificate(
    cdc: &CdcSource,
    ctx: &Context,
    r: &CaCertRef,
) -> Result<Vec<u8>, Error> {
    let ns = cdc.namespace().unwrap_or_default();
    let what = format!("{:?} {ns}/{} (spec.postgres.caCert)", r.kind, r.name);
    let missing = |problem: String| Error::Dependency {
        what: what.clone(),
        problem,
    };
    let value = match r.kind {
        CaSourceKind::Secret => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            let s = api
                .get_opt(&r.name)
                .await?
                .ok_or_else(|| missing("not found".into()))?;
            s.data.and_then(|mut d| d.remove(&r.key)).map(|b| b.0)
        }
        CaSourceKind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let c = api
                .get_opt(&r.name)
                .await?
                .ok_or_else(|| missing("not found".into()))?;
            c.data
                .and_then(|mut d| d.remove(&r.key))
                .map(String::into_bytes)
                .or_else(|| {
                    c.binary_data
                        .and_then(|mut d| d.remove(&r.key))
                        .map(|b| b.0)
                })
        }
    };
    value.ok_or_else(|| missing(format!("has no key {:?}", r.key)))
}
