#!/usr/bin/env bash
# Start (or stop) throwaway PostgreSQL, Redis and SeaweedFS (S3) instances on free loopback ports for the
# integration tests. Installs PostgreSQL/Redis with apt-get when they are missing and we are root.
#   scripts/services.sh start   -> writes .services/env (MINEGAN_IT_* variables) and prints it
#   scripts/services.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=$ROOT/.services
PY=$ROOT/.venv/bin/python

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

need_apt() {
  if [ "$(id -u)" != 0 ]; then echo "missing $1 and not root: install $2" >&2; exit 1; fi
  if [ ! -f "$DIR/.apt-updated" ]; then apt-get update -qq >/dev/null; mkdir -p "$DIR"; touch "$DIR/.apt-updated"; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

start() {
  stop >/dev/null 2>&1 || true
  mkdir -p "$DIR"
  [ -n "$(pg_bin)" ] || need_apt initdb postgresql
  command -v redis-server >/dev/null || need_apt redis-server redis-server
  local PGBIN; PGBIN=$(pg_bin)

  # PostgreSQL: a fresh cluster (postgres refuses to run as root, so root runs it as the postgres user)
  local PGPORT; PGPORT=$(free_port)
  local RUNAS=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$DIR" postgres
    RUNAS=(runuser -u postgres --)
  fi
  # the cluster lives outside the checkout: the postgres user may not be able to enter the clone's directory
  # (e.g. a clone inside a 0700 mktemp dir)
  local PG; PG=$(mktemp -d /tmp/minegan-pg.XXXXXX)
  echo "$PG" > "$DIR/pgdir"
  [ "$(id -u)" = 0 ] && chown -R postgres "$PG"
  "${RUNAS[@]}" "$PGBIN/initdb" -D "$PG/data" -U postgres -A trust >/dev/null
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PG/data" -l "$PG/log" -w -o "-p $PGPORT -k $PG -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  "${RUNAS[@]}" "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres minegan

  # Redis, nothing on disk
  local RPORT; RPORT=$(free_port)
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --dir "$DIR"

  # SeaweedFS S3 (weed mini), keys from a config file; readiness = a real put/get
  local S3PORT MPORT VPORT FPORT; S3PORT=$(free_port); MPORT=$(free_port); VPORT=$(free_port); FPORT=$(free_port)
  mkdir -p "$DIR/s3data"
  cat > "$DIR/s3.json" <<JSON
{"identities": [{"name": "minegan", "credentials": [{"accessKey": "minegan-test", "secretKey": "minegan-test-secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  nohup "$ROOT/.venv/bin/weed" mini -dir="$DIR/s3data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -master.port="$MPORT" -volume.port="$VPORT" -filer.port="$FPORT" -s3.port="$S3PORT" -s3.config="$DIR/s3.json" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false >"$DIR/weed.log" 2>&1 &
  echo $! > "$DIR/weed.pid"

  cat > "$DIR/env" <<ENV
export MINEGAN_IT_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:$PGPORT/minegan
export MINEGAN_IT_BROKER_URL=redis://127.0.0.1:$RPORT/0
export MINEGAN_IT_REDIS_PORT=$RPORT
export MINEGAN_IT_S3_ENDPOINT=http://127.0.0.1:$S3PORT
export MINEGAN_IT_S3_ACCESS_KEY=minegan-test
export MINEGAN_IT_S3_SECRET_KEY=minegan-test-secret
ENV
  # shellcheck disable=SC1091
  . "$DIR/env"
  "$PY" - <<'PYEOF'
import os, time
import boto3, redis, sqlalchemy
deadline = time.time() + 120
last = None
while time.time() < deadline:
    try:
        s3 = boto3.client("s3", endpoint_url=os.environ["MINEGAN_IT_S3_ENDPOINT"],
                          aws_access_key_id=os.environ["MINEGAN_IT_S3_ACCESS_KEY"],
                          aws_secret_access_key=os.environ["MINEGAN_IT_S3_SECRET_KEY"], region_name="us-east-1")
        try:
            s3.create_bucket(Bucket="readiness")
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        s3.put_object(Bucket="readiness", Key="probe", Body=b"ok")
        assert s3.get_object(Bucket="readiness", Key="probe")["Body"].read() == b"ok"
        redis.Redis.from_url(os.environ["MINEGAN_IT_BROKER_URL"]).ping()
        with sqlalchemy.create_engine(os.environ["MINEGAN_IT_DATABASE_URL"]).connect() as c:
            c.execute(sqlalchemy.text("select 1"))
        print("services ready")
        break
    except Exception as exc:  # noqa: BLE001
        last = exc
        time.sleep(1)
else:
    raise SystemExit(f"services not ready after 120s: {last}")
PYEOF
  cat "$DIR/env"
}

stop() {
  local PGBIN; PGBIN=$(pg_bin)
  local PG; PG=$(cat "$DIR/pgdir" 2>/dev/null || echo /nonexistent)
  if [ -f "$PG/data/postmaster.pid" ]; then
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PG/data" -m fast stop >/dev/null || true
    else "$PGBIN/pg_ctl" -D "$PG/data" -m fast stop >/dev/null || true; fi
  fi
  [ -f "$DIR/redis.pid" ] && kill "$(cat "$DIR/redis.pid")" 2>/dev/null || true
  [ -f "$DIR/weed.pid" ] && kill "$(cat "$DIR/weed.pid")" 2>/dev/null || true
  sleep 1
  case "$PG" in /tmp/minegan-pg.*) rm -rf "$PG" ;; esac
  rm -rf "$DIR/pg" "$DIR/pgdir" "$DIR/s3data" "$DIR/env" "$DIR"/*.pid
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
