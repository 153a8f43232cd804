# shellcheck shell=bash
# Helpers shared by script/bootstrap, script/server, script/test and .ci/run.
#
# Source it; do not run it. Everything here works under `set -euo pipefail`.
# Processes are only ever stopped through PID files written by these scripts.

# Repository root, whatever the caller's working directory.
CHRONICLE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Per-checkout state (databases, broker data, logs, PID files); ignored by git.
CHRONICLE_DATA="$CHRONICLE_ROOT/.data"
# Per-user cache outside the work tree (Kafka's jars, fetched once).
CACHE="${CHRONICLE_CACHE:-$HOME/.cache/chronicle}"
# The development broker: Apache Kafka from Maven Central, with the log4j2 version its release
# ships, fetched by a pinned maven-dependency-plugin.
KAFKA_VERSION="4.1.1"
KAFKA_LOG4J_VERSION="2.24.3"
MAVEN_DEPENDENCY_PLUGIN_VERSION="3.8.1"
# The test runner, built once into ~/.cargo/bin.
NEXTEST_VERSION="0.9.151"
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
# Port of the private PostgreSQL cluster, used only when no server is reachable.
CHRONICLE_PRIVATE_PG_PORT="${CHRONICLE_PRIVATE_PG_PORT:-55432}"
# Set to 1 by ensure_postgres when it started the private cluster itself.
CHRONICLE_PG_STARTED="${CHRONICLE_PG_STARTED:-0}"

# Prints what the script is doing.
say() {
  printf '==> %s\n' "$*"
}

# Prints an error and exits.
die() {
  printf '==> ERROR: %s\n' "$*" >&2
  exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (no sudo found)"
  fi
}

# Installs Debian packages, refreshing the package lists once per script run.
APT_UPDATED=0
apt_install() {
  if [[ $APT_UPDATED == 0 ]]; then
    as_root apt-get update
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# Succeeds when something accepts TCP connections on HOST:PORT.
port_open() {
  local host=$1 port=$2
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# Prints the last lines of a log file to stderr, indented.
log_tail() {
  local file=$1 lines=${2:-40}
  if [[ -f $file ]]; then
    printf '==> last %s lines of %s:\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" | sed 's/^/    /' >&2
  fi
}

# --- processes and PID files ------------------------------------------------------------------

# Seconds since the epoch at which PID started (Linux /proc); empty when unknown.
_proc_start_epoch() {
  local pid=$1 stat rest btime ticks
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
  rest=${stat##*) }
  # shellcheck disable=SC2206 # word splitting is the point
  local fields=($rest)
  btime=$(awk '/^btime/ {print $2}' /proc/stat)
  ticks=$(getconf CLK_TCK)
  echo $((btime + fields[19] / ticks))
}

# Succeeds while PID is a running (not zombie) process.
pid_alive() {
  local pid=$1 state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r /proc/$pid/stat ]]; then
    state=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    state=${state##*) }
    [[ ${state:0:1} != Z ]] || return 1
  fi
}

# Prints the PID recorded in FILE if that process is still the one we started; else nothing.
# A PID file older than the process holding its PID is stale (the PID was reused).
pidfile_pid() {
  local file=$1 pid started written
  [[ -f $file ]] || return 0
  pid=$(head -n 1 "$file" 2>/dev/null || true)
  pid_alive "$pid" || return 0
  started=$(_proc_start_epoch "$pid")
  written=$(stat -c %Y "$file" 2>/dev/null || echo 0)
  if [[ -n $started && $started -gt $((written + 2)) ]]; then
    return 0
  fi
  echo "$pid"
}

# Writes PID to FILE.
write_pidfile() {
  local file=$1 pid=$2
  mkdir -p "$(dirname "$file")"
  echo "$pid" >"$file"
}

# Stops the process named by a PID file: SIGTERM, wait up to TIMEOUT seconds (default 20), then
# SIGKILL that PID only. Removes the file. A missing file or a dead process is not an error.
stop_pidfile() {
  local file=$1 timeout=${2:-20} pid name deadline
  [[ -f $file ]] || return 0
  name=$(basename "$file" .pid)
  pid=$(pidfile_pid "$file")
  if [[ -z $pid ]]; then
    rm -f "$file"
    return 0
  fi
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while pid_alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if pid_alive "$pid"; then
    say "$name (pid $pid) still running after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    while pid_alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.1
    done
  fi
  rm -f "$file"
}

# Starts a command in the background in its own session (so a Ctrl-C in the terminal reaches
# only the script, which then stops things in order), appending stdout and stderr to LOG.
# Usage: spawn LOG PIDFILE command args...  Sets SPAWNED_PID.
spawn() {
  local log=$1 pidfile=$2
  shift 2
  mkdir -p "$(dirname "$log")"
  setsid "$@" >>"$log" 2>&1 </dev/null &
  SPAWNED_PID=$!
  write_pidfile "$pidfile" "$SPAWNED_PID"
}

# --- Apache Kafka (the development broker) -----------------------------------------------------
#
# Kafka is assembled from its Maven Central jars (the machines reach Maven Central, not the Apache
# download site) into $KAFKA_HOME/libs, once. Brokers run in KRaft mode, broker and controller in
# one JVM; script/broker/server.properties holds the settings they share.

# Succeeds when java (17 or newer) and mvn are callable; on Debian installs what is missing.
ensure_java() {
  local version
  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 ||
      die "Kafka needs Java 17+ and Maven: install a JDK 17 and Apache Maven, then re-run"
    say "installing Java 17 and Maven with apt-get (Kafka runs on the JVM and is fetched with Maven)"
    apt_install openjdk-17-jdk-headless maven
  fi
  version=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
  [[ ${version%%.*} =~ ^[0-9]+$ && ${version%%.*} -ge 17 ]] ||
    die "Kafka $KAFKA_VERSION needs Java 17 or newer; \`java -version\` says ${version:-nothing}"
}

# Installs Apache Kafka's jars into $KAFKA_HOME/libs unless they are already there.
ensure_kafka() {
  if [[ -f $KAFKA_HOME/.complete ]]; then
    say "kafka $KAFKA_VERSION: reusing $KAFKA_HOME"
    return 0
  fi
  ensure_java
  mkdir -p "$CACHE"
  # One install at a time per cache, even when two scripts start together.
  exec 9>"$CACHE/kafka-$KAFKA_VERSION.lock"
  flock 9
  if [[ ! -f $KAFKA_HOME/.complete ]]; then
    say "installing Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME (once)"
    rm -rf "$KAFKA_HOME"
    mkdir -p "$KAFKA_HOME"
    # The broker (kafka_2.13), its command-line tools, and the log4j2 binding that Kafka's
    # release archive adds by hand: without it the broker runs silently.
    cat >"$KAFKA_HOME/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.chronicle</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
    # Maven 3.8 prints colour codes even in batch mode; they are stripped from what it says
    # (pipefail keeps Maven's exit code).
    if ! (cd "$KAFKA_HOME" && mvn -B -q -Dstyle.color=never -f pom.xml \
      "org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN_VERSION:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs") 2>&1 | sed 's/\x1b\[[0-9;]*m//g'; then
      die "fetching Apache Kafka $KAFKA_VERSION from Maven Central failed (see above)"
    fi
    local reported
    reported=$(java -cp "$KAFKA_HOME/libs/*" kafka.Kafka --version 2>/dev/null | head -n 1 || true)
    [[ $reported == "$KAFKA_VERSION"* ]] ||
      die "the jars in $KAFKA_HOME/libs do not run as Kafka $KAFKA_VERSION (kafka.Kafka --version: ${reported:-nothing})"
    touch "$KAFKA_HOME/.complete"
    say "kafka $KAFKA_VERSION installed ($(du -sh "$KAFKA_HOME/libs" | cut -f1) of jars)"
  fi
  exec 9>&-
}

# Runs a Kafka class from the cached jars with the tools' quiet logging.
kafka_java() {
  java -Dlog4j2.configurationFile="$CHRONICLE_ROOT/script/broker/tools-log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" "$@"
}

# Succeeds when HOST:PORT answers a Kafka ApiVersions (v0) request without an error code: a
# broker is serving. (ApiVersions is the one request every Kafka version answers at v0.)
kafka_api_versions_ok() {
  local host=$1 port=$2
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    # size=19, api_key=18 (ApiVersions), api_version=0, correlation_id=1, client_id="chronicle"
    printf "\x00\x00\x00\x13\x00\x12\x00\x00\x00\x00\x00\x01\x00\x09chronicle" >&3
    reply=$(head -c 10 <&3 | od -An -tx1 | tr -d " \n")
    # size (4 bytes), correlation_id=1, error_code=0
    [[ ${#reply} -eq 20 && ${reply:8:12} == 000000010000 ]]
  ' _ "$host" "$port" 2>/dev/null
}

# Starts a single-node KRaft broker on 127.0.0.1:PORT (its controller on PORT+1) with its data in
# DATADIR, logging to DATADIR/broker.log and writing DATADIR/broker.pid. Formats DATADIR on first
# use and keeps it across restarts. Waits until the broker says it started and answers
# ApiVersions (bounded), and fails loudly, with the end of its log, when it does not.
# CHRONICLE_KAFKA_HEAP sets the JVM heap (default 512m).
start_broker() {
  local port=$1 datadir=$2 timeout=${3:-90} controller pid deadline lines
  controller=$((port + 1))
  [[ -f $KAFKA_HOME/.complete ]] || die "Apache Kafka is not installed (run script/bootstrap)"
  mkdir -p "$datadir"
  datadir=$(cd "$datadir" && pwd)
  local p
  for p in "$port" "$controller"; do
    if port_open 127.0.0.1 "$p"; then
      die "cannot start the broker: something already listens on 127.0.0.1:$p"
    fi
  done
  {
    cat "$CHRONICLE_ROOT/script/broker/server.properties"
    cat <<PROPS

# This node (written by script/lib.sh start_broker).
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
log.dirs=$datadir/log
PROPS
  } >"$datadir/server.properties"
  if [[ ! -f $datadir/log/meta.properties ]]; then
    say "formatting a KRaft data directory in $datadir/log"
    kafka_java kafka.tools.StorageTool format --ignore-formatted \
      -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$datadir/server.properties" >>"$datadir/broker.log" 2>&1 || {
      log_tail "$datadir/broker.log"
      die "formatting the broker's data directory failed"
    }
  fi
  say "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (controller :$controller), data in $datadir"
  touch "$datadir/broker.log"
  lines=$(wc -l <"$datadir/broker.log")
  # JVM options as Kafka's own kafka-run-class.sh sets them.
  # shellcheck disable=SC2086 # the heap option is one word
  setsid java -Xms"${CHRONICLE_KAFKA_HEAP:-512m}" -Xmx"${CHRONICLE_KAFKA_HEAP:-512m}" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CHRONICLE_ROOT/script/broker/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$datadir/server.properties" \
    >>"$datadir/broker.log" 2>&1 </dev/null &
  pid=$!
  write_pidfile "$datadir/broker.pid" "$pid"
  deadline=$((SECONDS + timeout))
  until tail -n +"$((lines + 1))" "$datadir/broker.log" | grep -q 'Kafka Server started' &&
    kafka_api_versions_ok 127.0.0.1 "$port"; do
    if ! pid_alive "$pid"; then
      log_tail "$datadir/broker.log"
      rm -f "$datadir/broker.pid"
      die "the broker exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$datadir/broker.log"
      stop_pidfile "$datadir/broker.pid"
      die "the broker did not start on 127.0.0.1:$port within ${timeout}s"
    fi
    sleep 0.2
  done
  say "broker ready on 127.0.0.1:$port (pid $pid, log $datadir/broker.log)"
}

# --- PostgreSQL ---------------------------------------------------------------------------------

# psql without user config, quiet, unaligned, stopping at the first error.
psql_cmd() {
  psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# Succeeds when URL accepts a login.
# The tag of this checkout in the names of the test databases (chronicle_t_<checkout>_<run>_<id>):
# 8 hex digits of a hash of its path, so that checkouts sharing one PostgreSQL server never touch
# each other's databases.
test_checkout_tag() {
  printf '%s' "$CHRONICLE_ROOT" | sha256sum | cut -c1-8
}

# A fresh tag for one run of the tests of this checkout: <checkout>_<6 random hex digits>
# (CHRONICLE_TEST_RUN; the e2e harness names its databases after it).
new_test_run_tag() {
  printf '%s_%s' "$(test_checkout_tag)" "$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
}

# Drops the databases that earlier test runs of checkout CHECKOUT left on the server at ADMIN_URL
# (a failed test keeps its database for inspection), except those of run KEEP (the run now
# starting). Only one script/test runs per checkout at a time (its PID file says so), so every
# other run of this checkout is over; other checkouts' databases are never touched, nor are
# databases named otherwise.
drop_earlier_test_databases() {
  local admin_url=$1 checkout=$2 keep=$3 force="" db
  [[ $checkout =~ ^[0-9a-f]{8}$ ]] || die "not a checkout tag: $checkout"
  if (($(psql_cmd "$admin_url" -c 'show server_version_num') >= 130000)); then
    force=" WITH (FORCE)"
  fi
  while IFS= read -r db; do
    [[ -n $db ]] || continue
    # Template databases (tests may clone from one) cannot be dropped while marked as templates.
    psql_cmd "$admin_url" \
      -c "ALTER DATABASE \"$db\" IS_TEMPLATE false" \
      -c "DROP DATABASE IF EXISTS \"$db\"$force" >/dev/null
    say "dropped $db, left by an earlier test run of this checkout"
  done < <(psql_cmd "$admin_url" -v ours="chronicle_t_${checkout}_" -v keep="chronicle_t_${keep}_" \
    <<<"select datname from pg_database where starts_with(datname, :'ours')
          and not starts_with(datname, :'keep') order by 1")
}

pg_can_login() {
  psql_cmd "$1" -c 'select 1' >/dev/null 2>&1
}

# Prints URL with its database replaced by DB (query parameters kept).
pg_url_with_db() {
  local url=$1 db=$2
  if [[ $url =~ ^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$ ]]; then
    printf '%s/%s%s\n' "${BASH_REMATCH[1]}" "$db" "${BASH_REMATCH[4]}"
  else
    die "DATABASE_URL must be a postgres:// URL (got something else)"
  fi
}

# Prints the first directory holding initdb and pg_ctl: PATH, /usr/local/bin, then
# /usr/lib/postgresql/*/bin, newest version first.
pg_server_bindir() {
  local dir candidates=()
  # Through symlinks: /usr/local/bin may link initdb and pg_ctl alone, while the directory they
  # live in also holds psql and postgres of the same version.
  if dir=$(command -v initdb 2>/dev/null); then
    candidates+=("$(dirname "$(readlink -f "$dir")")")
  fi
  candidates+=(/usr/local/bin)
  while IFS= read -r dir; do
    candidates+=("$dir")
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
  for dir in "${candidates[@]}"; do
    if [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

# Makes psql and pg_isready callable, installing PostgreSQL with apt-get if no binaries exist.
ensure_pg_tools() {
  local bindir
  if command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1; then
    return 0
  fi
  if ! bindir=$(pg_server_bindir); then
    install_postgresql
    bindir=$(pg_server_bindir) || die "PostgreSQL installed but initdb/pg_ctl not found"
  fi
  PATH="$bindir:$PATH"
  export PATH
  command -v psql >/dev/null 2>&1 || die "psql not found (looked in PATH and $bindir)"
}

install_postgresql() {
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL not found and apt-get unavailable: install PostgreSQL 15+"
  say "installing PostgreSQL with apt-get"
  apt_install postgresql
}

# Runs a PostgreSQL server binary; initdb and postgres refuse to run as root, so as root they
# run as the `postgres` system user.
_pg_run() {
  if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root and no 'postgres' user exists for the private cluster"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Paths of the private cluster.
_private_pg_dir() { echo "$CHRONICLE_DATA/postgres"; }

# Chooses a PostgreSQL server and exports CHRONICLE_PG_ADMIN_URL, a URL of its `postgres`
# database with the right to CREATE DATABASE:
#   1. DATABASE_URL's server, when DATABASE_URL is set;
#   2. 127.0.0.1:5432 as user postgres, when reachable (and CHRONICLE_PRIVATE_POSTGRES is not 1);
#   3. a private cluster in .data/postgres on 127.0.0.1:$CHRONICLE_PRIVATE_PG_PORT (trust auth),
#      created and started when needed; sets CHRONICLE_PG_STARTED=1 when this call started it.
ensure_postgres() {
  ensure_pg_tools
  if [[ -n ${DATABASE_URL:-} ]]; then
    CHRONICLE_PG_ADMIN_URL=$(pg_url_with_db "$DATABASE_URL" postgres)
    pg_isready -q -d "$CHRONICLE_PG_ADMIN_URL" -t 5 ||
      die "DATABASE_URL is set but its server is not reachable"
    pg_can_login "$CHRONICLE_PG_ADMIN_URL" ||
      die "DATABASE_URL is set but logging in to its 'postgres' database failed"
    say "postgres: using the server of DATABASE_URL"
    export CHRONICLE_PG_ADMIN_URL
    return 0
  fi
  local system_url="postgres://postgres@127.0.0.1:5432/postgres"
  if [[ ${CHRONICLE_PRIVATE_POSTGRES:-0} != 1 ]] && pg_isready -q -h 127.0.0.1 -p 5432 -t 3; then
    if pg_can_login "$system_url"; then
      say "postgres: using the server on 127.0.0.1:5432"
      CHRONICLE_PG_ADMIN_URL=$system_url
      export CHRONICLE_PG_ADMIN_URL
      return 0
    fi
    say "postgres: 127.0.0.1:5432 is up but refuses user postgres without a password; using a private cluster"
  fi
  start_private_postgres
}

start_private_postgres() {
  local dir bindir port=$CHRONICLE_PRIVATE_PG_PORT
  dir=$(_private_pg_dir)
  CHRONICLE_PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export CHRONICLE_PG_ADMIN_URL
  if pg_isready -q -h 127.0.0.1 -p "$port" -t 2; then
    pg_can_login "$CHRONICLE_PG_ADMIN_URL" ||
      die "something on 127.0.0.1:$port speaks PostgreSQL but refuses user postgres"
    say "postgres: private cluster already running on 127.0.0.1:$port"
    return 0
  fi
  bindir=$(pg_server_bindir) || {
    install_postgresql
    bindir=$(pg_server_bindir) || die "PostgreSQL installed but initdb/pg_ctl not found"
  }
  mkdir -p "$dir"
  if [[ $EUID -eq 0 ]]; then
    chown postgres: "$dir"
  fi
  if [[ ! -f $dir/data/PG_VERSION ]]; then
    say "postgres: creating a private cluster in $dir/data ($bindir/initdb)"
    _pg_run "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
      >"$dir/initdb.log" 2>&1 || {
      log_tail "$dir/initdb.log"
      die "initdb failed"
    }
    # Development only: TCP on loopback, no Unix socket, and no fsync (tests create many databases).
    _pg_run tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# Added by Chronicle's script/lib.sh for a private development cluster.
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi
  say "postgres: starting the private cluster on 127.0.0.1:$port"
  _pg_run "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null || {
    log_tail "$dir/postgres.log"
    die "could not start the private PostgreSQL cluster"
  }
  CHRONICLE_PG_STARTED=1
  export CHRONICLE_PG_STARTED
}

# Stops the private cluster if ensure_postgres started it in this process.
stop_private_postgres_if_started() {
  local bindir dir
  [[ $CHRONICLE_PG_STARTED == 1 ]] || return 0
  dir=$(_private_pg_dir)
  bindir=$(pg_server_bindir) || return 0
  say "stopping the private PostgreSQL cluster"
  _pg_run "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null || true
  CHRONICLE_PG_STARTED=0
}

# --- the browser tests -------------------------------------------------------------------------
#
# tests/e2e/browser.rs drives a real EventSource in Debian's headless Chromium through
# playwright-core (tests/browser/eventsource.mjs, run by node). Chromium comes from apt-get;
# playwright-core, pinned by tests/browser/package-lock.json, from the npm registry into
# $CHRONICLE_BROWSER_DIR (outside the work tree). Playwright never downloads a browser here.

CHRONICLE_BROWSER_DIR="${CHRONICLE_BROWSER_DIR:-$CACHE/browser}"

# Installs /usr/bin/chromium and node/npm (apt-get) and playwright-core (npm ci into
# $CHRONICLE_BROWSER_DIR) unless they are there, and exports CHRONICLE_BROWSER_DIR for the tests.
ensure_browser() {
  local lock="$CHRONICLE_ROOT/tests/browser/package-lock.json"
  if [[ ! -x /usr/bin/chromium ]]; then
    command -v apt-get >/dev/null 2>&1 ||
      die "the browser tests need /usr/bin/chromium and apt-get is unavailable: install Chromium there"
    say "installing Chromium with apt-get (the browser tests run a real EventSource in it)"
    apt_install chromium
    [[ -x /usr/bin/chromium ]] || die "apt-get installed chromium but /usr/bin/chromium is missing"
  fi
  say "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown')"
  if [[ ! -x /usr/bin/node ]] || ! command -v npm >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 ||
      die "the browser tests need /usr/bin/node and npm and apt-get is unavailable: install Node.js 20+"
    say "installing Node.js and npm with apt-get (the browser tests drive Chromium from node)"
    apt_install nodejs npm
  fi
  # Reinstalled only when the lock file changed since the last install.
  if [[ -f $CHRONICLE_BROWSER_DIR/.complete ]] && cmp -s "$lock" "$CHRONICLE_BROWSER_DIR/package-lock.json"; then
    say "playwright-core: reusing $CHRONICLE_BROWSER_DIR"
  else
    mkdir -p "$CHRONICLE_BROWSER_DIR"
    say "installing playwright-core (tests/browser/package-lock.json) with npm ci into $CHRONICLE_BROWSER_DIR, no browser download"
    rm -f "$CHRONICLE_BROWSER_DIR/.complete"
    cp "$CHRONICLE_ROOT/tests/browser/package.json" "$lock" "$CHRONICLE_BROWSER_DIR/"
    (cd "$CHRONICLE_BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund) ||
      die "npm ci of playwright-core into $CHRONICLE_BROWSER_DIR failed (see above)"
    touch "$CHRONICLE_BROWSER_DIR/.complete"
  fi
  export CHRONICLE_BROWSER_DIR
}

# --- toolchain ----------------------------------------------------------------------------------

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust with rustup (https://rustup.rs), then re-run"
  say "cargo: $(cargo --version)"
}

ensure_cargo_components() {
  local component
  for component in rustfmt clippy; do
    local sub=${component/rustfmt/fmt}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
      command -v rustup >/dev/null 2>&1 ||
        die "cargo $sub is missing and rustup is not available: install the $component component"
      say "installing the $component component"
      rustup component add "$component" ||
        die "cargo $sub is missing and \`rustup component add $component\` failed: CI cannot check $component without it"
    fi
  done
}

ensure_nextest() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest $NEXTEST_VERSION (compiles for about seven minutes, once)"
    cargo install --locked cargo-nextest --version "$NEXTEST_VERSION"
  fi
  say "nextest: $(cargo nextest --version 2>/dev/null | head -n 1)"
}

# What running Chronicle needs (script/server, script/bench, script/fuzz call it first): cargo,
# Java and Kafka's jars, PostgreSQL.
bootstrap() {
  ensure_cargo
  ensure_java
  ensure_kafka
  ensure_postgres
}

# What testing needs on top (script/bootstrap and script/test): rustfmt, clippy, cargo-nextest,
# and Chromium with playwright-core for the browser tests.
bootstrap_tests() {
  ensure_cargo_components
  ensure_nextest
  ensure_browser
}

# Directory cargo builds into (honours CARGO_TARGET_DIR and .cargo/config).
cargo_target_dir() {
  local dir
  if command -v jq >/dev/null 2>&1 &&
    dir=$(cd "$CHRONICLE_ROOT" && cargo metadata --no-deps --format-version 1 2>/dev/null | jq -r .target_directory) &&
    [[ -n $dir && $dir != null ]]; then
    echo "$dir"
    return 0
  fi
  dir=${CARGO_TARGET_DIR:-target}
  [[ $dir == /* ]] || dir="$CHRONICLE_ROOT/$dir"
  echo "$dir"
}
