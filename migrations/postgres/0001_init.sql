-- Registered models. `last_version` is the counter versions are drawn from: it only
-- ever grows, so a version number is never handed out twice, even after archive/delete.
CREATE TABLE models (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    description  TEXT    NOT NULL DEFAULT '',
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    last_version BIGINT  NOT NULL DEFAULT 0
);

CREATE TABLE model_tags (
    model_id BIGINT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    key      TEXT   NOT NULL,
    value    TEXT   NOT NULL,
    PRIMARY KEY (model_id, key)
);

-- One row per immutable model version; the artifact lives in object storage under its sha256.
CREATE TABLE model_versions (
    model_id    BIGINT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    sha256      TEXT   NOT NULL,
    size        BIGINT NOT NULL,
    created_at  TEXT   NOT NULL,
    created_by  TEXT   NOT NULL,
    description TEXT   NOT NULL DEFAULT '',
    tags        TEXT   NOT NULL DEFAULT '{}',
    status      TEXT   NOT NULL DEFAULT 'ready',
    signature   TEXT   NOT NULL,
    PRIMARY KEY (model_id, version)
);
CREATE INDEX model_versions_sha256 ON model_versions (sha256);

CREATE TABLE aliases (
    model_id   BIGINT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    alias      TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    updated_at TEXT   NOT NULL,
    PRIMARY KEY (model_id, alias),
    FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version) ON DELETE CASCADE
);
