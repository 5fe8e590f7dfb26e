-- sqlite (schema version 2)

CREATE TABLE IF NOT EXISTS dbqueue_migrations (
    tbl VARCHAR(63) PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dbqueue_state (
    name VARCHAR(190) PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS "jobs" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue VARCHAR(255) NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reserved_at INTEGER,
    available_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    reserved_until INTEGER,
    unique_key VARCHAR(255)
);
CREATE TABLE IF NOT EXISTS "failed_jobs" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid VARCHAR(255) NOT NULL UNIQUE,
    connection TEXT NOT NULL,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    exception TEXT NOT NULL,
    failed_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS "jobs_ready" ON "jobs" (queue, available_at, id) WHERE reserved_at IS NULL;
CREATE INDEX IF NOT EXISTS "jobs_reserved" ON "jobs" (reserved_at) WHERE reserved_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS "jobs_unique" ON "jobs" (queue, unique_key) WHERE unique_key IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS "failed_jobs_uuid" ON "failed_jobs" (uuid);
CREATE TABLE IF NOT EXISTS "dbqueue_rate" (
    name VARCHAR(100) NOT NULL,
    slot INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (name, slot)
);
CREATE INDEX IF NOT EXISTS "dbqueue_rate_sent" ON "dbqueue_rate" (name, sent_at);

-- postgresql (schema version 2)

CREATE TABLE IF NOT EXISTS dbqueue_migrations (
    tbl VARCHAR(63) PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dbqueue_state (
    name VARCHAR(190) PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS "jobs" (
    id BIGSERIAL PRIMARY KEY,
    queue VARCHAR(255) NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reserved_at BIGINT,
    available_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    reserved_until BIGINT,
    unique_key VARCHAR(255)
);
CREATE TABLE IF NOT EXISTS "failed_jobs" (
    id BIGSERIAL PRIMARY KEY,
    uuid VARCHAR(255) NOT NULL UNIQUE,
    connection TEXT NOT NULL,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    exception TEXT NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "jobs_ready" ON "jobs" (queue, available_at, id) WHERE reserved_at IS NULL;
CREATE INDEX IF NOT EXISTS "jobs_reserved" ON "jobs" (reserved_at) WHERE reserved_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS "jobs_unique" ON "jobs" (queue, unique_key) WHERE unique_key IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS "failed_jobs_uuid" ON "failed_jobs" (uuid);
CREATE TABLE IF NOT EXISTS "dbqueue_rate" (
    name VARCHAR(100) NOT NULL,
    slot INTEGER NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (name, slot)
);
CREATE INDEX IF NOT EXISTS "dbqueue_rate_sent" ON "dbqueue_rate" (name, sent_at);
