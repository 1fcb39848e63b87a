-- Every alias change, kept: who pointed which alias of a model from which version to
-- which, and when. version NULL: the alias was removed (deleted, or its version archived);
-- previous NULL: it was created. Resolving an alias as of a time reads the last change
-- at or before it.
CREATE TABLE alias_history (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id   BIGINT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    alias      TEXT   NOT NULL,
    version    BIGINT,
    previous   BIGINT,
    changed_at TEXT   NOT NULL,
    changed_by TEXT   NOT NULL
);
CREATE INDEX alias_history_at ON alias_history (model_id, alias, changed_at, id);

-- Aliases set before their history was kept: where they point, as of their last change.
INSERT INTO alias_history (model_id, alias, version, previous, changed_at, changed_by)
SELECT model_id, alias, version, NULL, updated_at, '' FROM aliases;
