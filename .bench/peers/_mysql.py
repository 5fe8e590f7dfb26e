"""Shared by the MySQL/MariaDB adapters (dbqueue_mysql, laravel_mysql).

BENCH_MYSQL_URL names the server: mysql://user:password@127.0.0.1:3306/ (the
path, if any, is ignored). Each run drops and creates its own database there,
as the PostgreSQL adapters do, so the account needs CREATE and DROP.
"""
import os
import sys

sys.path.insert(0, os.environ.get("DBQUEUE_PATH", os.getcwd()))
import dbqueue  # noqa: E402  (its URL parser; the Laravel baseline uses PyMySQL directly)


def url(database):
    base = os.environ.get("BENCH_MYSQL_URL")
    if not base:
        raise SystemExit("BENCH_MYSQL_URL is not set (mysql://user:password@127.0.0.1:3306/)")
    scheme, _, rest = base.partition("://")
    where, _, query = rest.partition("?")
    return "%s://%s/%s%s" % (scheme, where.split("/")[0], database, "?" + query if query else "")


def connect(database, **extra):
    """A plain PyMySQL connection (autocommit on), as an app would open it."""
    import pymysql
    args = dbqueue._MySQL.parse(url(database).partition("://")[2])
    del args["url"]
    args.update(autocommit=True, **extra)
    return pymysql.connect(**args)


def recreate(database):
    conn = connect("mysql")
    try:
        cur = conn.cursor()
        cur.execute("DROP DATABASE IF EXISTS `%s`" % database)
        cur.execute("CREATE DATABASE `%s` CHARACTER SET utf8mb4" % database)
    finally:
        conn.close()


def settings_note():
    conn = connect("mysql")
    try:
        cur = conn.cursor()
        # tx_isolation: MariaDB's name (and MySQL 5.7's); MySQL 8 says transaction_isolation.
        cur.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin,"
                    " @@global.tx_isolation, @@innodb_buffer_pool_size")
        version, flush, sync_binlog, log_bin, isolation, pool = cur.fetchone()
    finally:
        conn.close()
    return ("%s innodb_flush_log_at_trx_commit=%s binlog=%s sync_binlog=%s server isolation=%s"
            " buffer_pool=%dMB" % (version, flush, "on" if log_bin else "off", sync_binlog,
                                   isolation, int(pool) // (1 << 20)))
