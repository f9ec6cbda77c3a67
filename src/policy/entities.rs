//! Cedar requests: the principal, resource and context entities built from a decision's
//! inputs, and evaluation against the loaded set.

use std::str::FromStr;

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    Request, RestrictedExpression,
};
use serde_json::Value;

use crate::domain::audiences::Audience;
use crate::domain::clients::Client;

use super::{Action, Loaded, PolicyContext};

/// The hot path: entities and context built directly (the policies were validated against the
/// schema when loaded; the policy tests exercise the same shapes through the schema).
pub(super) fn evaluate_request(
    loaded: &Loaded,
    action: Action,
    client: &Client,
    audience: &Audience,
    context: &PolicyContext<'_>,
) -> Result<(bool, Vec<String>), String> {
    let text = |value: &str| RestrictedExpression::new_string(value.to_owned());
    let partner = uid("Partner", client.partner.as_str())?;
    let principal = uid("Client", client.id.as_str())?;
    let resource = uid("Audience", audience.id.as_str())?;
    let entity =
        |uid: EntityUid, attrs: Vec<(&str, RestrictedExpression)>, parents: Vec<EntityUid>| {
            Entity::new(
                uid,
                attrs
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect::<HashMap<_, _>>(),
                parents.into_iter().collect::<HashSet<_>>(),
            )
            .map_err(|error| error.to_string())
        };
    let entities = Entities::from_entities(
        [
            entity(
                partner.clone(),
                vec![("region", text(&client.partner_region))],
                Vec::new(),
            )?,
            entity(
                principal.clone(),
                vec![
                    ("partner", text(client.partner.as_str())),
                    ("region", text(&client.partner_region)),
                ],
                vec![partner],
            )?,
            entity(
                resource.clone(),
                vec![
                    ("region", text(&audience.region)),
                    ("kind", text(&audience.kind)),
                    (
                        "cross_region_allowed",
                        RestrictedExpression::new_bool(audience.cross_region_allowed),
                    ),
                ],
                Vec::new(),
            )?,
        ],
        None,
    )
    .map_err(|error| error.to_string())?;
    let context = Context::from_pairs([
        (
            "scopes".to_owned(),
            RestrictedExpression::new_set(
                context
                    .scopes
                    .to_vec()
                    .into_iter()
                    .map(RestrictedExpression::new_string),
            ),
        ),
        ("subject_partner".to_owned(), text(context.subject_partner)),
        ("subject_issuer".to_owned(), text(context.subject_issuer)),
        ("subject_region".to_owned(), text(context.subject_region)),
        (
            "consent".to_owned(),
            RestrictedExpression::new_bool(context.consent),
        ),
        (
            "delegation_depth".to_owned(),
            RestrictedExpression::new_long(context.delegation_depth),
        ),
    ])
    .map_err(|error| error.to_string())?;
    let request = Request::new(
        principal,
        uid("Action", action.name())?,
        resource,
        context,
        None,
    )
    .map_err(|error| error.to_string())?;
    authorize(loaded, &request, &entities)
}

fn authorize(
    loaded: &Loaded,
    request: &Request,
    entities: &Entities,
) -> Result<(bool, Vec<String>), String> {
    let response = Authorizer::new().is_authorized(request, &loaded.policies, entities);
    if let Some(error) = response.diagnostics().errors().next() {
        return Err(error.to_string());
    }
    let determining = response
        .diagnostics()
        .reason()
        .map(PolicyId::to_string)
        .collect();
    Ok((response.decision() == Decision::Allow, determining))
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let kind =
        EntityTypeName::from_str(&format!("Tessera::{kind}")).map_err(|error| error.to_string())?;
    Ok(EntityUid::from_type_name_and_id(kind, EntityId::new(id)))
}

pub(super) fn evaluate(
    loaded: &Loaded,
    entities: &Value,
    principal: &str,
    action: &str,
    resource: &str,
    context: Value,
) -> Result<(bool, Vec<String>), String> {
    let action = uid("Action", action)?;
    let entities = Entities::from_json_value(entities.clone(), Some(&loaded.schema))
        .map_err(|error| error.to_string())?;
    let context = Context::from_json_value(context, Some((&loaded.schema, &action)))
        .map_err(|error| error.to_string())?;
    let request = Request::new(
        uid("Client", principal)?,
        action,
        uid("Audience", resource)?,
        context,
        Some(&loaded.schema),
    )
    .map_err(|error| error.to_string())?;
    authorize(loaded, &request, &entities)
}
