#!/bin/sh
# The postgres image's entrypoint, after copying the secrets the server reads into a folder of its user's:
# a compose secret keeps the host file's owner and mode (deploy/make-secrets.sh makes them private to
# their owner), which the image's user cannot read, and PostgreSQL refuses a TLS key others may read.
set -eu
own=/var/lib/postgresql/secrets
install -d -o postgres -g postgres -m 700 "$own"
for name in postgres_password app_pgpass dashboard_pgpass postgres_tls_cert postgres_tls_key; do
  install -o postgres -g postgres -m 600 "/run/secrets/$name" "$own/$name"
done
exec docker-entrypoint.sh "$@"
