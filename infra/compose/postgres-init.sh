#!/usr/bin/env bash
# The compose platform's one PostgreSQL holds two databases, `prefect` (the Prefect server) and `mlflow` (the
# MLflow tracking server and model registry), both owned by $POSTGRES_USER. The postgres image runs this once,
# from /docker-entrypoint-initdb.d, on an empty data volume; it is idempotent, so running it again (by hand,
# or on a volume restored without one of them) creates only what is missing.
# LOOPLINE_DATABASES overrides the list (space-separated names).
set -euo pipefail

owner="${POSTGRES_USER:?POSTGRES_USER is not set}"
for db in ${LOOPLINE_DATABASES:-prefect mlflow}; do
  # \gexec runs the CREATE only when the SELECT returns it: CREATE DATABASE has no IF NOT EXISTS
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$owner" --dbname postgres \
    --set=db="$db" --set=owner="$owner" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db')
\gexec
SQL
  echo "postgres-init: database $db ready (owner $owner)"
done
