//! Who is acting, and the audit metadata written with every event.
//!
//! The actor, role, client address and correlation id come from the authenticated
//! caller (the API's token, the CLI's operator) — never from a command body. The reason
//! comes from the command itself when it has one. Keys are documented in
//! docs/architecture.md; the database refuses an event whose metadata lacks an actor.

use lis_domain::actor::Actor;
use std::collections::HashMap;
use uuid::Uuid;

/// The caller of one command.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub actor: Actor,
    /// Ties together everything done for one request or workflow.
    pub correlation_id: Uuid,
    /// The command or event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// The client's network address, as seen by the server.
    pub client_addr: Option<String>,
    /// The command id to write, when the caller fixed it (the API does for a request
    /// with an Idempotency-Key, so that a retry can find what an earlier attempt wrote);
    /// else each command gets a new one.
    pub command_id: std::sync::OnceLock<Uuid>,
    /// The version of the record the caller acted on, when it named one (the API's
    /// `If-Match`): a command on a record changed since is refused
    /// ([`crate::CommandError::Stale`]), so that nobody verifies, releases or
    /// acknowledges a value they have not seen.
    pub expected_version: std::sync::OnceLock<i64>,
}

impl CommandContext {
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            client_addr: None,
            command_id: std::sync::OnceLock::new(),
            expected_version: std::sync::OnceLock::new(),
        }
    }

    /// The metadata of the events of one command.
    pub(crate) fn metadata(
        &self,
        command_id: Uuid,
        command: &str,
        reason: Option<String>,
    ) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("actor_id".into(), self.actor.id.to_string());
        m.insert("actor_role".into(), self.actor.role.to_string());
        m.insert("command_id".into(), command_id.to_string());
        m.insert("command".into(), command.to_string());
        m.insert("correlation_id".into(), self.correlation_id.to_string());
        if let Some(c) = self.causation_id {
            m.insert("causation_id".into(), c.to_string());
        }
        if let Some(a) = &self.client_addr {
            m.insert("client_addr".into(), a.clone());
        }
        if let Some(r) = reason {
            m.insert("reason".into(), r);
        }
        m
    }
}
