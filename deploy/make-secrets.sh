#!/bin/sh
# The secrets docker-compose.yml reads, made once: sh deploy/make-secrets.sh [NAME_OR_IP ...]
#
# Writes into $MUSE_SECRETS (default ./secrets), readable by the owner only, and keeps a file that
# already exists (delete one to make it anew):
#   ray_token                   the Ray cluster's token (every node and driver: RAY_AUTH_TOKEN_PATH)
#   dashboard_credentials       user:password the study dashboard asks for
#   postgres_password           PostgreSQL's superuser (administration only; no service uses it)
#   app.pgpass, dashboard.pgpass  libpq password files of the application role (owns the studies) and
#                               the dashboard's read-only role; deploy/postgres/init-roles.sh makes both roles
#   ca.crt, ca.key              a certificate authority of this deployment's own (clients: sslrootcert)
#   server.crt, server.key      PostgreSQL's TLS certificate, for the names "postgres" (the compose service),
#                               "localhost" and each NAME_OR_IP given (how other machines reach this one)
set -eu
dir=${MUSE_SECRETS:-./secrets}
umask 077
mkdir -p "$dir"
secret() { openssl rand -hex 24; }

[ -s "$dir/ray_token" ] || secret > "$dir/ray_token"
[ -s "$dir/dashboard_credentials" ] || echo "muse:$(secret)" > "$dir/dashboard_credentials"
[ -s "$dir/postgres_password" ] || secret > "$dir/postgres_password"
# host:port:database:user:password; hex passwords need no escaping
[ -s "$dir/app.pgpass" ] || echo "*:*:studies:muse:$(secret)" > "$dir/app.pgpass"
[ -s "$dir/dashboard.pgpass" ] || echo "*:*:studies:muse_dashboard:$(secret)" > "$dir/dashboard.pgpass"

if [ ! -s "$dir/ca.crt" ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=muse-search CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi
if [ -s "$dir/server.crt" ] && [ $# -gt 0 ]; then
  echo "$dir/server.crt exists and is kept: delete it to make one for $*" >&2
elif [ ! -s "$dir/server.crt" ]; then
  names="DNS:postgres,DNS:localhost"
  for name in "$@"; do
    if echo "$name" | grep -Eq '^[0-9.]+$|:'; then names="$names,IP:$name"; else names="$names,DNS:$name"; fi
  done
  openssl req -newkey rsa:3072 -nodes -subj "/CN=postgres" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$names" > "$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 825 \
    -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
  rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
  echo "PostgreSQL's certificate is for $names"
fi
echo "secrets in $dir: keep them out of version control and backups others can read"
