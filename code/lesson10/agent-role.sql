-- The agent's database role: it logs in, owns one schema for its tables and LangGraph's
-- checkpoints, and nothing else. No superuser, no new roles or databases, nothing in `public`.
-- psql variables: agent_role, agent_password (the Compose init script passes them).
CREATE ROLE :"agent_role" LOGIN PASSWORD :'agent_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"agent_role";
CREATE SCHEMA :"agent_role" AUTHORIZATION :"agent_role";
ALTER ROLE :"agent_role" IN DATABASE :"db" SET search_path = :"agent_role";
