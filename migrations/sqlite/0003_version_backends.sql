-- Which inference engines can run each version, as found at registration:
-- {"tract": "ok" | "unsupported: <reason>"}.
ALTER TABLE model_versions ADD COLUMN backends TEXT NOT NULL DEFAULT '{}';
