-- The object store: every Cluster, Service and Controller, the controllers' reports, the controller registry, the
-- reconcile schedule and the event outbox.

-- One global counter for resourceVersion; every real change of any object takes the next value.
create sequence resource_version_seq;

create table objects (
    uid                 uuid primary key,
    kind                text not null,
    namespace           text not null,            -- '' for cluster-scoped kinds
    name                text not null,
    labels              jsonb not null default '{}',
    annotations         jsonb not null default '{}',
    finalizers          text[] not null default '{}',
    owner_references    jsonb not null default '[]',
    managed_fields      jsonb not null default '[]',
    spec                jsonb not null,
    generation          bigint not null default 1,
    resource_version    bigint not null,
    -- platform of the object (a Service's is its Cluster's); denormalized for the required set and event attributes
    platform            text not null default '',
    -- a Service's Cluster name, for the cascade and its index
    cluster_name        text,
    creation_timestamp  timestamptz not null default now(),
    deletion_timestamp  timestamptz,
    -- aggregation cache: status_seq moves on every change the aggregate depends on (reports, generation, deletion);
    -- the cached status is valid while status_cached_seq = status_seq and status_epoch = the registry epoch.
    -- Controllers keep their own status (heartbeat) here with no aggregation.
    status_seq          bigint not null default 1,
    status              jsonb,
    status_cached_seq   bigint,
    status_epoch        bigint,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint objects_kind_namespace_name unique (kind, namespace, name)
);
create index objects_labels on objects using gin (labels jsonb_path_ops);
create index objects_services_of_cluster on objects (namespace, cluster_name) where kind = 'Service';
create index objects_kind_name on objects (kind, name, namespace);

-- Each controller's latest report on each object.
create table reports (
    uid                 uuid not null references objects (uid) on delete cascade,
    controller          text not null,
    observed_generation bigint not null,
    conditions          jsonb not null,
    data                jsonb,
    reported_at         timestamptz not null,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    primary key (uid, controller)
);

-- The registry: what each registered Controller covers. Mirrors the Controller objects' specs so that the
-- required set is one small query.
create table controller_registrations (
    name        text primary key,
    kinds       text[] not null,
    platforms   text[] not null,
    required    boolean not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- Moves whenever the registry changes, which invalidates every cached aggregate at once.
create table registry_epoch (
    singleton   boolean primary key default true check (singleton),
    epoch       bigint not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
insert into registry_epoch (epoch) values (1);

-- When each reconciled object is next due for a reconcile event; `attention` selects the fast cadence.
create table schedules (
    uid         uuid primary key references objects (uid) on delete cascade,
    next_at     timestamptz not null,
    attention   boolean not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create index schedules_next_at on schedules (next_at);

-- Events written in the same transaction as the change that caused them; a relay publishes and deletes them.
create table outbox (
    id          bigserial primary key,
    event_id    uuid not null,
    event_type  text not null,
    kind        text not null,
    uid         uuid not null,
    namespace   text not null,
    name        text not null,
    generation  bigint not null,
    platform    text not null,
    reason      text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create index outbox_uid on outbox (uid, id);
