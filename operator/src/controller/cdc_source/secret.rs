//! The database credentials, from the Secret named by `spec.postgres.credentialsSecretRef`.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::controller::{Context, Error};
use crate::crd::CdcSource;

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
