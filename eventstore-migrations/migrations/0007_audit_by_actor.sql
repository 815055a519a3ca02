-- Auditors ask "what did this user do between these times?": index the events by actor.
CREATE INDEX events_by_actor ON events ((metadata ->> 'actor_id'), recorded_at);
