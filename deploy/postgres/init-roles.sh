#!/bin/sh
# The studies' database and its two roles, made once on an empty data folder: the postgres image runs
# /docker-entrypoint-initdb.d/*.sh as its superuser (executable, so in a shell of its own, not sourced;
# tests/test_security.py runs this file on a throwaway cluster). Each role's name and password come from
# its libpq password file (host:port:database:user:password), the file its clients connect with, so a
# password is written in one place only.
#   application role: owns the database and creates Optuna's tables; no superuser, makes no roles or databases
#   dashboard role: every transaction read-only, SELECT on the tables the application role creates
set -eu
field() { head -n 1 "$1" | cut -d: -f"$2"; }
database=$(field "$MUSE_APP_PGPASS" 3)

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  -v db="$database" \
  -v app="$(field "$MUSE_APP_PGPASS" 4)" -v app_password="$(field "$MUSE_APP_PGPASS" 5-)" \
  -v dash="$(field "$MUSE_DASHBOARD_PGPASS" 4)" -v dash_password="$(field "$MUSE_DASHBOARD_PGPASS" 5-)" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE :"app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'app_password';
CREATE ROLE :"dash" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'dash_password';
-- a bug in the dashboard's guard still cannot change a study: the server refuses every write of this role
ALTER ROLE :"dash" SET default_transaction_read_only = on;
CREATE DATABASE :"db" OWNER :"app";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"dash";
\connect :"db"
-- public belongs to the database's owner (PostgreSQL 15 and later): only the application role creates there
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"dash";
ALTER DEFAULT PRIVILEGES FOR ROLE :"app" IN SCHEMA public GRANT SELECT ON TABLES TO :"dash";
SQL
