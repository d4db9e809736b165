//! The `security.istio.io` CRDs ambit reads: AuthorizationPolicy and PeerAuthentication.
//!
//! Schemas are structural (every level typed) but keep `spec` open
//! (`x-kubernetes-preserve-unknown-fields`): the control plane's translation is the one place
//! that validates policy fields, with errors naming the field, and an open schema lets
//! policies written for Istio apply unchanged. The few fields whose values are closed sets
//! (`action`, `mtls.mode`) are declared, so a typo is rejected at `kubectl apply` already.
//!
//! `v1` is the stored version; `v1beta1` is served with the identical schema (no conversion
//! needed) because most published Istio examples still use it.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps, JSONSchemaPropsOrBool, JSON,
};
use serde_json::Value;

use super::common::meta;
use super::Object;

const GROUP: &str = "security.istio.io";

pub fn all() -> Vec<Object> {
    vec![
        crd(
            "AuthorizationPolicy",
            "authorizationpolicies",
            "authorizationpolicy",
            &["ap"],
            authorization_policy_spec(),
        )
        .into(),
        crd(
            "PeerAuthentication",
            "peerauthentications",
            "peerauthentication",
            &["pa"],
            peer_authentication_spec(),
        )
        .into(),
    ]
}

fn crd(
    kind: &str,
    plural: &str,
    singular: &str,
    short: &[&str],
    spec: JSONSchemaProps,
) -> CustomResourceDefinition {
    let name = format!("{plural}.{GROUP}");
    let schema = object(BTreeMap::from([
        ("spec".to_string(), spec),
        // Written by controllers, never read by ambit; kept open for them.
        ("status".to_string(), open_object()),
    ]));
    let version = |name: &str, storage: bool| CustomResourceDefinitionVersion {
        name: name.to_string(),
        served: true,
        storage,
        schema: Some(CustomResourceValidation {
            open_api_v3_schema: Some(schema.clone()),
        }),
        subresources: Some(CustomResourceSubresources {
            status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
            ..Default::default()
        }),
        ..Default::default()
    };
    CustomResourceDefinition {
        metadata: meta(&name, None, "ambit"),
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_string(),
            names: CustomResourceDefinitionNames {
                kind: kind.to_string(),
                list_kind: Some(format!("{kind}List")),
                plural: plural.to_string(),
                singular: Some(singular.to_string()),
                short_names: Some(short.iter().map(|s| s.to_string()).collect()),
                categories: Some(vec![
                    "istio-io".to_string(),
                    "security-istio-io".to_string(),
                ]),
            },
            scope: "Namespaced".to_string(),
            versions: vec![version("v1", true), version("v1beta1", false)],
            ..Default::default()
        },
        ..Default::default()
    }
}

fn authorization_policy_spec() -> JSONSchemaProps {
    let mut spec = open_object();
    spec.properties = Some(BTreeMap::from([(
        "action".to_string(),
        string_enum(&["ALLOW", "DENY", "AUDIT", "CUSTOM"]),
    )]));
    spec
}

fn peer_authentication_spec() -> JSONSchemaProps {
    let modes = &["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];
    let mut mtls = open_object();
    mtls.properties = Some(BTreeMap::from([("mode".to_string(), string_enum(modes))]));
    let mut spec = open_object();
    spec.properties = Some(BTreeMap::from([
        ("mtls".to_string(), mtls.clone()),
        // Keys are port numbers as strings; each value has the same shape as `mtls`.
        (
            "portLevelMtls".to_string(),
            JSONSchemaProps {
                type_: Some("object".to_string()),
                additional_properties: Some(JSONSchemaPropsOrBool::Schema(Box::new(mtls))),
                ..Default::default()
            },
        ),
    ]));
    spec
}

fn object(properties: BTreeMap<String, JSONSchemaProps>) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some("object".to_string()),
        properties: Some(properties),
        ..Default::default()
    }
}

fn open_object() -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some("object".to_string()),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..Default::default()
    }
}

fn string_enum(values: &[&str]) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some("string".to_string()),
        enum_: Some(
            values
                .iter()
                .map(|v| JSON(Value::String(v.to_string())))
                .collect(),
        ),
        ..Default::default()
    }
}
