-- Bearer tokens, stored as the SHA-256 of the secret (tokens are 256 random bits: a slow hash adds nothing).
create table tokens (
    id uuid primary key,
    name text not null unique,
    hash bytea not null unique,
    role text not null,
    -- null: every namespace
    namespaces text[],
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    revoked_at timestamptz
);

-- One record per mutating request, allowed or denied.
create table audit (
    id bigserial primary key,
    time timestamptz not null,
    "user" text not null,
    verb text not null,
    resource text not null,
    namespace text not null default '',
    name text not null default '',
    uid uuid,
    resource_version_before bigint,
    resource_version_after bigint,
    code integer not null,
    request_id text not null default '',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index audit_time on audit (time, id);
