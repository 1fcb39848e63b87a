-- Per-model grants: a principal (user:<oid>, group:<id>, role:<app role>, app:<client id>)
-- may read or write one model. The model's creator owns it without a grant.
CREATE TABLE model_grants (
    model_id   BIGINT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    principal  TEXT   NOT NULL,
    permission TEXT   NOT NULL CHECK (permission IN ('read', 'write')),
    granted_at TEXT   NOT NULL,
    granted_by TEXT   NOT NULL,
    PRIMARY KEY (model_id, principal)
);

-- Every write, by whom and when. Rows name the model instead of referencing it, so the
-- history outlives the model.
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    principal TEXT NOT NULL,
    action    TEXT NOT NULL,
    model     TEXT,
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_model ON audit_log (model, id);
