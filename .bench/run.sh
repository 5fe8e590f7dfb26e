#!/usr/bin/env bash
# Every benchmark figure of the README in one go (about 8 minutes):
#   .bench/run.sh                 # peers and dbqueue side by side, W1..W4, plus
#                                 # the supplementary runs and the extra checks
#   .bench/run.sh main            # only the main table (peers + dbqueue, W1..W4)
#   .bench/run.sh dbqueue         # only dbqueue's rows (quick, for development)
#   ROUNDS=2 .bench/run.sh main   # the main table twice (the second round in reverse order)
#   .bench/run.sh mysql           # MariaDB/MySQL rows: dbqueue, the Laravel-style baseline
#                                 # and dbqueue on PostgreSQL side by side, then the checks
# MySQL/MariaDB rows need BENCH_MYSQL_URL (mysql://user:password@127.0.0.1:3306/, an
# account that may create and drop databases: bench_* are made fresh per run) and
# PyMySQL in the venv (installed here when missing); without the URL they are left out.
# The harness (/work/shared/bench, or $BENCH_SRC) is copied into a temp dir with
# our adapters (.bench/peers/dbqueue_*.py); dbqueue is imported from this checkout.
# The venv with the peers is $BENCH_HOME/venv (default /tmp/dbqueue-bench), made
# by the harness's setup.sh when missing. Results: $BENCH_HOME/results/.
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
SRC=${BENCH_SRC:-/work/shared/bench}
BENCH_HOME=${BENCH_HOME:-/tmp/dbqueue-bench}; export BENCH_HOME
export DBQUEUE_PATH="$REPO"
WHAT=${1:-all}
ROUNDS=${ROUNDS:-2}

TMP=$(mktemp -d /tmp/dbqueue-bench-run.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cp -r "$SRC"/. "$TMP"/
chmod -R u+w "$TMP"
cp "$HERE"/peers/*.py "$TMP"/peers/     # dbqueue_*, laravel_mysql and their _mysql helper
cd "$TMP"
# One change to the harness copy: `sync` before every run. Without it the
# previous run's dirty pages (a peer's deleted or rewritten files) are written
# back during the next run's fsyncs, and whoever runs later in the list is
# measured slower on W1 (seen: 10-40% for the same code run second).
sed -i 's|^    t0=\$(date +%s.%N)$|    sync; t0=$(date +%s.%N)|' run_peers.sh
grep -q '    sync; t0=' run_peers.sh || { echo "run.sh: could not add sync to run_peers.sh" >&2; exit 2; }
[ -x "$BENCH_HOME/venv/bin/python" ] || ./setup.sh
PY="$BENCH_HOME/venv/bin/python"
MYSQL_PEERS=""
if [ -n "${BENCH_MYSQL_URL:-}" ]; then
  export BENCH_MYSQL_URL
  "$PY" -c "import pymysql" 2>/dev/null || "$BENCH_HOME/venv/bin/pip" install -q PyMySQL
  MYSQL_PEERS="dbqueue_mysql laravel_mysql"
fi

SQLITE_PEERS="huey_sqlite persistqueue_sqlite litequeue_sqlite"
PG_PEERS="procrastinate_pg pgqueuer_pg"
section() { printf '\n######## %s\n' "$*"; }

machine() {
  section "machine"
  echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$PY" -c 'import sys, sqlite3; print("Python", sys.version.split()[0], "SQLite", sqlite3.sqlite_version)'
  psql "host=/var/run/postgresql user=root dbname=postgres" -Atc "show server_version" 2>/dev/null \
    | sed 's/^/PostgreSQL /'
  if [ -n "$MYSQL_PEERS" ]; then
    "$PY" -c 'import sys; sys.path.insert(0, "peers"); import _mysql; print(_mysql.settings_note())'
  fi
}

main_table() {
  local order="huey_sqlite persistqueue_sqlite litequeue_sqlite dbqueue_sqlite procrastinate_pg pgqueuer_pg dbqueue_pg $MYSQL_PEERS"
  for r in $(seq "$ROUNDS"); do
    section "main table, round $r: peers and dbqueue, W1..W4, every queue at its defaults"
    RUN_TAG=main-r$r ./run_peers.sh $order
    order=$(echo $order | tr ' ' '\n' | tac | tr '\n' ' ')   # the next round in reverse order
  done
}

supplementary() {
  for s in NORMAL FULL; do
    section "supplementary: SQLite queues at synchronous=$s"
    BENCH_SQLITE_SYNCHRONOUS=$s RUN_TAG=sqlite-sync-$s WORKLOADS="W1 W3 W4" \
      ./run_peers.sh dbqueue_sqlite $SQLITE_PEERS
  done
  section "supplementary: PostgreSQL queues with planner statistics (ANALYZE after the prefill)"
  BENCH_PG_ANALYZE=1 RUN_TAG=pg-analyze WORKLOADS="W3 W4" ./run_peers.sh dbqueue_pg $PG_PEERS
}

extras() {
  section "dbqueue checks: INSERT floor, flat with size and query plans, latency, idle CPU, RSS, import time"
  "$PY" "$HERE/checks.py" sqlite postgresql ${MYSQL_PEERS:+mysql}
}

mysql_table() {
  [ -n "$MYSQL_PEERS" ] || { echo "run.sh: BENCH_MYSQL_URL is not set" >&2; exit 2; }
  local order="dbqueue_mysql laravel_mysql dbqueue_pg"
  for r in $(seq "$ROUNDS"); do
    section "MySQL/MariaDB, round $r: dbqueue, the Laravel-style claim, dbqueue on PostgreSQL, W1..W4"
    RUN_TAG=mysql-r$r ./run_peers.sh $order
    order=$(echo $order | tr ' ' '\n' | tac | tr '\n' ' ')
  done
  section "dbqueue checks on MySQL/MariaDB: INSERT floor, latency, idle CPU, plans, RSS"
  "$PY" "$HERE/checks.py" mysql
}

case "$WHAT" in
  all) machine; main_table; supplementary; extras;;
  main) machine; main_table;;
  supplementary) machine; supplementary;;
  extras) machine; extras;;
  dbqueue) machine; ./run_peers.sh dbqueue_sqlite dbqueue_pg ${MYSQL_PEERS:+dbqueue_mysql};;
  mysql) machine; mysql_table;;
  *) echo "usage: $0 [all|main|supplementary|extras|dbqueue|mysql]" >&2; exit 2;;
esac
