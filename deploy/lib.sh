# Shared settings for the deploy scripts: where the local stack listens.
# Sourced, not run. Every value can be overridden from the environment.
LIS_PG_CLUSTER="${LIS_PG_CLUSTER:-lisledger}"
LIS_PG_PORT="${LIS_PG_PORT:-5433}"
LIS_DB_NAME="${LIS_DB_NAME:-lisledger}"
export LIS_ADMIN_DATABASE_URL="${LIS_ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:${LIS_PG_PORT}/postgres}"
export LIS_MIGRATION_DATABASE_URL="${LIS_MIGRATION_DATABASE_URL:-postgres://lisledger_owner@127.0.0.1:${LIS_PG_PORT}/${LIS_DB_NAME}}"
export LIS_DATABASE_URL="${LIS_DATABASE_URL:-postgres://lisledger_app@127.0.0.1:${LIS_PG_PORT}/${LIS_DB_NAME}}"

log() { printf '[deploy] %s\n' "$*" >&2; }
