//! `/admin/v1`: JSON over mTLS for admins. Handlers parse, call one service, map the result;
//! errors are RFC 9457 problem documents naming the field and rule where input was refused.

mod problem;

use actix_web::dev::Payload;
use actix_web::http::header::{AUTHORIZATION, ETAG, IF_MATCH, LOCATION};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::Serialize;

use crate::domain::admin::FieldError;
use crate::http::{PeerCertificate, RequestId};
use crate::service::Services;
use crate::service::admin::auth::{Presented, authenticate};
use crate::service::admin::partners::Updated;
use crate::service::admin::registry::{self, Outcome};
use crate::service::admin::trust_profiles::{self, Activated};
use crate::service::admin::{AdminError, Caller, auth, consents, operations, partners, proposals};

pub use problem::AdminProblem;

type Reply = Result<HttpResponse, AdminProblem>;

pub fn routes(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/admin/v1")
            .route("/whoami", web::get().to(whoami))
            .route("/admins", web::get().to(list_admins))
            .route("/admins/{id}", web::patch().to(update_admin))
            .route("/token", web::post().to(token))
            .route("/partners", web::get().to(list_partners))
            .route("/partners", web::post().to(create_partner))
            .route("/partners/{id}", web::get().to(get_partner))
            .route("/partners/{id}", web::patch().to(update_partner))
            .route(
                "/partners/{id}/trust-profiles",
                web::get().to(list_profiles),
            )
            .route(
                "/partners/{id}/trust-profiles",
                web::post().to(create_profile),
            )
            .route(
                "/partners/{id}/trust-profiles/diff",
                web::get().to(diff_profiles),
            )
            .route(
                "/partners/{id}/trust-profiles/suspend",
                web::post().to(suspend_profile),
            )
            .route(
                "/partners/{id}/trust-profiles/{version}",
                web::get().to(get_profile),
            )
            .route(
                "/partners/{id}/trust-profiles/{version}/activate",
                web::post().to(activate_profile),
            )
            .route("/clients", web::get().to(list_clients))
            .route("/clients", web::post().to(create_client))
            .route("/clients/{id}", web::get().to(get_client))
            .route("/clients/{id}", web::patch().to(update_client))
            .route("/audiences", web::get().to(list_audiences))
            .route("/audiences", web::post().to(create_audience))
            // Audience ids are URIs: the rest of the path, slashes included.
            .route("/audiences/{id:.+}", web::get().to(get_audience))
            .route("/audiences/{id:.+}", web::patch().to(update_audience))
            .route("/consents", web::get().to(list_consents))
            .route("/consents", web::post().to(grant_consent))
            .route("/consents/{id}", web::get().to(get_consent))
            .route("/consents/{id}/revoke", web::post().to(revoke_consent))
            .route("/audit", web::get().to(audit))
            .route("/keys", web::get().to(keys))
            .route("/keys/rotate", web::post().to(rotate_keys))
            .route("/policy", web::get().to(policy))
            .route("/policy/reload", web::post().to(reload_policy))
            .route("/policy/decide", web::post().to(decide))
            .route("/proposals", web::get().to(list_proposals))
            .route("/proposals/{id}", web::get().to(get_proposal))
            .route("/proposals/{id}/approve", web::post().to(approve))
            .route("/proposals/{id}/reject", web::post().to(reject)),
    );
}

/// The authenticated admin making the request: extracting it authenticates the certificate (and
/// the bearer token, if any) and audits a refusal.
struct AdminCaller(Caller);

impl FromRequest for AdminCaller {
    type Error = AdminProblem;
    type Future = LocalBoxFuture<'static, Result<Self, AdminProblem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let services = req
                .app_data::<web::Data<Services>>()
                .cloned()
                .ok_or(AdminError::Unavailable)?;
            let certificate = PeerCertificate::extract(&req)
                .await
                .map_err(|_| AdminError::Unavailable)?;
            let request_id = RequestId::extract(&req)
                .await
                .map_err(|_| AdminError::Unavailable)?;
            let bearer = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .map(|value| value.strip_prefix("Bearer ").unwrap_or(""));
            let presented = Presented {
                certificate: certificate.0.as_ref(),
                bearer,
                request_id: request_id.0.to_string(),
            };
            Ok(Self(authenticate(&services, presented).await?))
        })
    }
}

fn with_etag<T: Serialize>(
    mut response: actix_web::HttpResponseBuilder,
    version: i32,
    body: &T,
) -> HttpResponse {
    response
        .insert_header((ETAG, format!("\"{version}\"")))
        .json(body)
}

/// The version an update was made against: `If-Match: "N"`.
fn if_match(req: &HttpRequest) -> Result<Option<i32>, AdminProblem> {
    let Some(value) = req.headers().get(IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|value| {
            value
                .trim()
                .strip_prefix('"')?
                .strip_suffix('"')?
                .parse()
                .ok()
        })
        .map(Some)
        .ok_or_else(|| {
            AdminError::Invalid(FieldError::new(
                "If-Match",
                "etag",
                "must be one strong ETag as returned by the server, e.g. \"3\"",
            ))
            .into()
        })
}

async fn whoami(AdminCaller(caller): AdminCaller) -> Reply {
    Ok(with_etag(
        HttpResponse::Ok(),
        caller.admin.version,
        &caller.admin,
    ))
}

async fn token(
    services: web::Data<Services>,
    certificate: PeerCertificate,
    AdminCaller(caller): AdminCaller,
) -> Reply {
    let Some(presented) = certificate.0.as_ref() else {
        return Err(AdminError::Unauthenticated("a client certificate is required").into());
    };
    let issued = auth::issue_token(&services, &caller, presented).await?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(issued))
}

async fn list_partners(services: web::Data<Services>, AdminCaller(caller): AdminCaller) -> Reply {
    Ok(HttpResponse::Ok().json(partners::list(&services, &caller).await?))
}

async fn create_partner(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    body: web::Bytes,
) -> Reply {
    let partner = partners::create(&services, &caller, &body).await?;
    let mut response = HttpResponse::Created();
    response.insert_header((LOCATION, format!("/admin/v1/partners/{}", partner.id)));
    Ok(with_etag(response, partner.version, &partner))
}

async fn get_partner(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
) -> Reply {
    let partner = partners::get(&services, &caller, &id).await?;
    Ok(with_etag(HttpResponse::Ok(), partner.version, &partner))
}

async fn update_partner(
    req: HttpRequest,
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    let expected = if_match(&req)?;
    match partners::update(&services, &caller, &id, expected, &body).await? {
        Updated::Applied(partner) => Ok(with_etag(HttpResponse::Ok(), partner.version, &partner)),
        Updated::Proposed(proposal) => Ok(proposed(&proposal)),
    }
}

/// 202: the change waits for an approver; where to follow it.
fn proposed(proposal: &crate::domain::admin::Proposal) -> HttpResponse {
    let mut response = HttpResponse::Accepted();
    response.insert_header((LOCATION, format!("/admin/v1/proposals/{}", proposal.id)));
    with_etag(response, proposal.version, proposal)
}

#[derive(serde::Deserialize)]
struct ProposalQuery {
    status: Option<String>,
}

async fn list_proposals(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    query: web::Query<ProposalQuery>,
) -> Reply {
    let listed = proposals::list(&services, &caller, query.status.as_deref()).await?;
    Ok(HttpResponse::Ok().json(listed))
}

fn proposal_id(id: &str) -> Result<uuid::Uuid, AdminProblem> {
    uuid::Uuid::parse_str(id).map_err(|_| AdminError::NotFound(format!("proposal `{id}`")).into())
}

async fn get_proposal(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
) -> Reply {
    let proposal = proposals::get(&services, &caller, proposal_id(&id)?).await?;
    Ok(with_etag(HttpResponse::Ok(), proposal.version, &proposal))
}

async fn approve(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
) -> Reply {
    let decided = proposals::decide(&services, &caller, proposal_id(&id)?, true, None).await?;
    Ok(with_etag(HttpResponse::Ok(), decided.version, &decided))
}

async fn reject(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    let body = crate::domain::admin::Body::parse(&body, &["reason"]).map_err(AdminError::from)?;
    let reason = body.required_text("reason").map_err(AdminError::from)?;
    let decided =
        proposals::decide(&services, &caller, proposal_id(&id)?, false, Some(reason)).await?;
    Ok(with_etag(HttpResponse::Ok(), decided.version, &decided))
}

fn profile_version(version: &str) -> Result<i32, AdminProblem> {
    version
        .parse()
        .map_err(|_| AdminError::NotFound(format!("profile version `{version}`")).into())
}

#[derive(Serialize)]
struct ProfileVersions {
    active_version: i32,
    versions: Vec<crate::domain::admin::TrustProfileVersion>,
}

async fn list_profiles(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    partner: web::Path<String>,
) -> Reply {
    let (active_version, versions) = trust_profiles::list(&services, &caller, &partner).await?;
    let listed = ProfileVersions {
        active_version,
        versions,
    };
    Ok(with_etag(HttpResponse::Ok(), active_version, &listed))
}

async fn create_profile(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    partner: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    let created = trust_profiles::create(&services, &caller, &partner, &body).await?;
    let mut response = HttpResponse::Created();
    response.insert_header((
        LOCATION,
        format!(
            "/admin/v1/partners/{partner}/trust-profiles/{}",
            created.version
        ),
    ));
    Ok(with_etag(response, created.version, &created))
}

async fn get_profile(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    path: web::Path<(String, String)>,
) -> Reply {
    let (partner, version) = path.into_inner();
    let found =
        trust_profiles::get(&services, &caller, &partner, profile_version(&version)?).await?;
    Ok(with_etag(HttpResponse::Ok(), found.version, &found))
}

#[derive(serde::Deserialize)]
struct DiffQuery {
    from: i32,
    to: i32,
}

async fn diff_profiles(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    partner: web::Path<String>,
    query: web::Query<DiffQuery>,
) -> Reply {
    let compared =
        trust_profiles::compare(&services, &caller, &partner, query.from, query.to).await?;
    Ok(HttpResponse::Ok().json(compared))
}

async fn activate_profile(
    req: HttpRequest,
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    path: web::Path<(String, String)>,
) -> Reply {
    let (partner, version) = path.into_inner();
    let version = profile_version(&version)?;
    let expected = if_match(&req)?;
    match trust_profiles::activate(&services, &caller, &partner, version, expected).await? {
        Activated::Applied(active) => Ok(with_etag(HttpResponse::Ok(), active.version, &active)),
        Activated::Proposed(proposal) => Ok(proposed(&proposal)),
    }
}

async fn suspend_profile(
    req: HttpRequest,
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    partner: web::Path<String>,
) -> Reply {
    let expected = if_match(&req)?;
    let suspended = trust_profiles::suspend(&services, &caller, &partner, expected).await?;
    Ok(with_etag(HttpResponse::Ok(), suspended.version, &suspended))
}

fn consent_id(id: &str) -> Result<uuid::Uuid, AdminProblem> {
    uuid::Uuid::parse_str(id).map_err(|_| AdminError::NotFound(format!("consent `{id}`")).into())
}

async fn list_consents(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    filter: web::Query<crate::domain::admin::ConsentFilter>,
) -> Reply {
    Ok(HttpResponse::Ok().json(consents::list(&services, &caller, &filter).await?))
}

async fn grant_consent(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    body: web::Bytes,
) -> Reply {
    Ok(proposed(&consents::grant(&services, &caller, &body).await?))
}

async fn get_consent(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
) -> Reply {
    let consent = consents::get(&services, &caller, consent_id(&id)?).await?;
    Ok(with_etag(HttpResponse::Ok(), consent.version, &consent))
}

async fn revoke_consent(
    req: HttpRequest,
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    let expected = if_match(&req)?;
    let revoked = consents::revoke(&services, &caller, consent_id(&id)?, expected, &body).await?;
    Ok(with_etag(HttpResponse::Ok(), revoked.version, &revoked))
}

fn outcome<T: Serialize>(outcome: Outcome<T>) -> HttpResponse {
    match outcome {
        Outcome::Applied(stored) => with_etag(HttpResponse::Ok(), stored.version, &stored),
        Outcome::Proposed(proposal) => proposed(&proposal),
    }
}

async fn list_clients(services: web::Data<Services>, AdminCaller(caller): AdminCaller) -> Reply {
    Ok(HttpResponse::Ok().json(registry::clients(&services, &caller).await?))
}

async fn create_client(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    body: web::Bytes,
) -> Reply {
    Ok(proposed(
        &registry::create_client(&services, &caller, &body).await?,
    ))
}

async fn get_client(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
) -> Reply {
    let client = registry::client(&services, &caller, &id).await?;
    Ok(with_etag(HttpResponse::Ok(), client.version, &client))
}

async fn update_client(
    req: HttpRequest,
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    let expected = if_match(&req)?;
    Ok(outcome(
        registry::update_client(&services, &caller, &id, expected, &body).await?,
    ))
}

async fn list_audiences(services: web::Data<Services>, AdminCaller(caller): AdminCaller) -> Reply {
    Ok(HttpResponse::Ok().json(registry::audiences(&services, &caller).await?))
}

async fn create_audience(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    body: web::Bytes,
) -> Reply {
    let created = registry::create_audience(&services, &caller, &body).await?;
    let mut response = HttpResponse::Created();
    response.insert_header((LOCATION, format!("/admin/v1/audiences/{}", created.doc.id)));
    Ok(with_etag(response, created.version, &created))
}

async fn get_audience(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
) -> Reply {
    let audience = registry::audience(&services, &caller, &id).await?;
    Ok(with_etag(HttpResponse::Ok(), audience.version, &audience))
}

async fn update_audience(
    req: HttpRequest,
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    let expected = if_match(&req)?;
    Ok(outcome(
        registry::update_audience(&services, &caller, &id, expected, &body).await?,
    ))
}

async fn audit(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    query: web::Query<crate::service::admin::audit_query::AuditQuery>,
) -> Reply {
    let page =
        crate::service::admin::audit_query::query(&services, &caller, query.into_inner()).await?;
    Ok(HttpResponse::Ok().json(page))
}

async fn keys(services: web::Data<Services>, AdminCaller(caller): AdminCaller) -> Reply {
    Ok(HttpResponse::Ok().json(operations::keys(&services, &caller).await?))
}

#[derive(Serialize)]
struct RotationBody {
    retired: String,
    activated: String,
    next: String,
}

async fn rotate_keys(services: web::Data<Services>, AdminCaller(caller): AdminCaller) -> Reply {
    let rotation = operations::rotate(&services, &caller).await?;
    Ok(HttpResponse::Ok().json(RotationBody {
        retired: rotation.retired,
        activated: rotation.activated,
        next: rotation.next,
    }))
}

async fn policy(services: web::Data<Services>, AdminCaller(caller): AdminCaller) -> Reply {
    Ok(HttpResponse::Ok().json(operations::policy(&services, &caller).await?))
}

async fn reload_policy(services: web::Data<Services>, AdminCaller(caller): AdminCaller) -> Reply {
    Ok(HttpResponse::Ok().json(operations::reload(&services, &caller).await?))
}

async fn decide(
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    body: web::Bytes,
) -> Reply {
    Ok(HttpResponse::Ok().json(operations::decide(&services, &caller, &body).await?))
}

async fn list_admins(services: web::Data<Services>, AdminCaller(caller): AdminCaller) -> Reply {
    Ok(HttpResponse::Ok().json(crate::service::admin::auth::admins(&services, &caller).await?))
}

async fn update_admin(
    req: HttpRequest,
    services: web::Data<Services>,
    AdminCaller(caller): AdminCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    use crate::service::admin::admins::{self, Updated};
    let expected = if_match(&req)?;
    match admins::update(&services, &caller, &id, expected, &body).await? {
        Updated::Applied(admin) => Ok(with_etag(HttpResponse::Ok(), admin.version, &admin)),
        Updated::Proposed(proposal) => Ok(proposed(&proposal)),
    }
}
