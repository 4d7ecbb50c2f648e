-- 0001 — one schema per service, each used at run time by a login role of the
-- same name that can read and write its own schema and nothing else.
-- Runs as the migration owner (ordersuite_owner), which owns every schema and
-- table; the service roles get DML only, never DDL.
--
-- Passwords are not set here: tools/migrate sets them from
-- DB_ROLE_PASSWORDS_FILE (SCRAM-hashed on the client).

-- Nobody but the owner and the service roles may connect; nobody may create
-- objects in public.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
END $$;
REVOKE ALL ON SCHEMA public FROM PUBLIC;

-- ordersuite_add_service(name): the role, the schema, and the grants for one
-- service. Used below for the four services of the suite and by the
-- migration of every new service (see `make new-service`).
CREATE FUNCTION public.ordersuite_add_service(svc text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF svc !~ '^[a-z][a-z0-9_]{1,30}$' THEN
        RAISE EXCEPTION 'bad service name %', svc;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = svc) THEN
        EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', svc);
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), svc);
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', svc);
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', svc);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', svc, svc);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', svc, svc);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I', svc, svc);
    -- Unqualified names resolve to the service's own schema, so the shared
    -- outbox/inbox code works for every service.
    EXECUTE format('ALTER ROLE %I SET search_path = %I', svc, svc);
END $$;
REVOKE ALL ON FUNCTION public.ordersuite_add_service(text) FROM PUBLIC;

SELECT public.ordersuite_add_service(s) FROM unnest(ARRAY['orders', 'inventory', 'billing', 'email']) AS s;
