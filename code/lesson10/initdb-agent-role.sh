#!/bin/bash
# Run once, by the Postgres image, when the data volume is new: the agent's least-privilege role
# (agent-role.sql, mounted beside this script), with the password Compose passes from .env.
set -euo pipefail
: "${AGENT_PASSWORD:?no password for the agent role: run make lesson-10, which writes code/lesson10/.env}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v agent_role=agent -v agent_password="$AGENT_PASSWORD" -v db="$POSTGRES_DB" \
  -f /etc/lesson10/agent-role.sql
