//! Who does things: the authenticated user and the role they acted in.
//!
//! Commands that need the actor for a rule (four-eyes release, who acknowledged) carry an
//! [`Actor`] that the command layer fills from the authenticated caller — never from a
//! request body. The same actor is written into every event's metadata.

use crate::validation::FieldError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest actor id, in bytes.
const ACTOR_ID_MAX: usize = 128;

/// A user's stable id (login name or directory id).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("minLength" = 1, "maxLength" = ACTOR_ID_MAX, "pattern" = "^[A-Za-z0-9._@-]*$"))]
pub struct ActorId(String);

impl ActorId {
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        let v = input.trim();
        if v.is_empty() || v.len() > ACTOR_ID_MAX {
            return Err(FieldError::new(
                "",
                format!("actor id must be 1 to {ACTOR_ID_MAX} characters"),
            ));
        }
        if !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        {
            return Err(FieldError::new(
                "",
                format!("actor id `{v}` may hold only letters, digits and . _ - @"),
            ));
        }
        Ok(Self(v.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ActorId {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ActorId> for String {
    fn from(value: ActorId) -> Self {
        value.0
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The roles of the lab (and of the system's own users).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Reception,
    Phlebotomist,
    Technologist,
    Pathologist,
    Clinician,
    Auditor,
    Analyst,
    Admin,
    /// The system itself (imports, scheduled jobs); never a person.
    System,
}

impl Role {
    /// The roles a person may hold: all but [`Role::System`].
    pub const PEOPLE: [Role; 8] = [
        Role::Reception,
        Role::Phlebotomist,
        Role::Technologist,
        Role::Pathologist,
        Role::Clinician,
        Role::Auditor,
        Role::Analyst,
        Role::Admin,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Reception => "reception",
            Role::Phlebotomist => "phlebotomist",
            Role::Technologist => "technologist",
            Role::Pathologist => "pathologist",
            Role::Clinician => "clinician",
            Role::Auditor => "auditor",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }

    pub fn parse(input: &str) -> Result<Self, FieldError> {
        serde_json::from_value(serde_json::Value::String(input.trim().to_ascii_lowercase()))
            .map_err(|_| FieldError::new("", format!("unknown role `{input}`")))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user acting in a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Actor {
    pub id: ActorId,
    pub role: Role,
}

impl Actor {
    pub fn new(id: ActorId, role: Role) -> Self {
        Self { id, role }
    }
}
