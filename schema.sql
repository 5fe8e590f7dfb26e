-- sqlite (schema version 3)

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
    unique_key VARCHAR(255),
    expires_at INTEGER
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
CREATE INDEX IF NOT EXISTS "jobs_expires" ON "jobs" (queue, expires_at) WHERE expires_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS "failed_jobs_uuid" ON "failed_jobs" (uuid);
CREATE INDEX IF NOT EXISTS "failed_jobs_queue" ON "failed_jobs" (queue);
CREATE TABLE IF NOT EXISTS "dbqueue_rate" (
    name VARCHAR(100) NOT NULL,
    slot INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (name, slot)
);
CREATE INDEX IF NOT EXISTS "dbqueue_rate_sent" ON "dbqueue_rate" (name, sent_at);
CREATE TABLE IF NOT EXISTS "dbqueue_sent" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl VARCHAR(63) NOT NULL,
    sent_at INTEGER NOT NULL,
    queue TEXT NOT NULL,
    uuid TEXT,
    job TEXT NOT NULL,
    template TEXT,
    subject TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reply TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "dbqueue_sent_time" ON "dbqueue_sent" (tbl, sent_at, id);

-- postgresql (schema version 3)

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
    unique_key VARCHAR(255),
    expires_at BIGINT
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
CREATE INDEX IF NOT EXISTS "jobs_expires" ON "jobs" (queue, expires_at) WHERE expires_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS "failed_jobs_uuid" ON "failed_jobs" (uuid);
CREATE INDEX IF NOT EXISTS "failed_jobs_queue" ON "failed_jobs" (queue);
CREATE TABLE IF NOT EXISTS "dbqueue_rate" (
    name VARCHAR(100) NOT NULL,
    slot INTEGER NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (name, slot)
);
CREATE INDEX IF NOT EXISTS "dbqueue_rate_sent" ON "dbqueue_rate" (name, sent_at);
CREATE TABLE IF NOT EXISTS "dbqueue_sent" (
    id BIGSERIAL PRIMARY KEY,
    tbl VARCHAR(63) NOT NULL,
    sent_at BIGINT NOT NULL,
    queue TEXT NOT NULL,
    uuid TEXT,
    job TEXT NOT NULL,
    template TEXT,
    subject TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reply TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "dbqueue_sent_time" ON "dbqueue_sent" (tbl, sent_at, id);

-- mysql (schema version 3)

CREATE TABLE IF NOT EXISTS dbqueue_migrations (
    tbl VARCHAR(63) PRIMARY KEY,
    version INTEGER NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS dbqueue_state (
    name VARCHAR(190) PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS `jobs` (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    queue VARCHAR(255) NOT NULL,
    payload LONGTEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reserved_at BIGINT,
    available_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    reserved_until BIGINT,
    unique_key VARBINARY(1020),
    expires_at BIGINT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS `failed_jobs` (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    uuid VARCHAR(255) NOT NULL UNIQUE,
    connection TEXT NOT NULL,
    queue TEXT NOT NULL,
    payload LONGTEXT NOT NULL,
    exception LONGTEXT NOT NULL,
    failed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
SET @dbqueue_ddl = (SELECT IF(COUNT(*) = 0, 'CREATE INDEX `jobs_ready` ON `jobs` (queue, reserved_at, available_at, id)', 'DO 0') FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'jobs' AND index_name = 'jobs_ready');
PREPARE dbqueue_ddl FROM @dbqueue_ddl;
EXECUTE dbqueue_ddl;
DEALLOCATE PREPARE dbqueue_ddl;
SET @dbqueue_ddl = (SELECT IF(COUNT(*) = 0, 'CREATE INDEX `jobs_reserved` ON `jobs` (reserved_at)', 'DO 0') FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'jobs' AND index_name = 'jobs_reserved');
PREPARE dbqueue_ddl FROM @dbqueue_ddl;
EXECUTE dbqueue_ddl;
DEALLOCATE PREPARE dbqueue_ddl;
SET @dbqueue_ddl = (SELECT IF(COUNT(*) = 0, 'CREATE UNIQUE INDEX `jobs_unique` ON `jobs` (queue, unique_key)', 'DO 0') FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'jobs' AND index_name = 'jobs_unique');
PREPARE dbqueue_ddl FROM @dbqueue_ddl;
EXECUTE dbqueue_ddl;
DEALLOCATE PREPARE dbqueue_ddl;
SET @dbqueue_ddl = (SELECT IF(COUNT(*) = 0, 'CREATE INDEX `jobs_expires` ON `jobs` (queue, expires_at)', 'DO 0') FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'jobs' AND index_name = 'jobs_expires');
PREPARE dbqueue_ddl FROM @dbqueue_ddl;
EXECUTE dbqueue_ddl;
DEALLOCATE PREPARE dbqueue_ddl;
SET @dbqueue_ddl = (SELECT IF(COUNT(*) = 0, 'CREATE UNIQUE INDEX `failed_jobs_uuid` ON `failed_jobs` (uuid)', 'DO 0') FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'failed_jobs' AND index_name = 'failed_jobs_uuid');
PREPARE dbqueue_ddl FROM @dbqueue_ddl;
EXECUTE dbqueue_ddl;
DEALLOCATE PREPARE dbqueue_ddl;
CREATE TABLE IF NOT EXISTS `dbqueue_rate` (
    name VARCHAR(100) NOT NULL,
    slot INTEGER NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (name, slot),
    INDEX `dbqueue_rate_sent` (name, sent_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS `dbqueue_sent` (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tbl VARCHAR(63) NOT NULL,
    sent_at BIGINT NOT NULL,
    queue TEXT NOT NULL,
    uuid TEXT,
    job TEXT NOT NULL,
    template TEXT,
    subject TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reply TEXT NOT NULL,
    INDEX `dbqueue_sent_time` (tbl, sent_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
