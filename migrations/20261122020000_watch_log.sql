-- The watch log: one row per resourceVersion, written in the transaction that took it, holding the object as it was
-- then (a DELETED row holds its last state). Rows of rolled-back transactions never appear; the API's change feed
-- fills such a gap with a 'GAP' row once the transaction that took the number has ended (the insert waits on it),
-- so watchers see every change exactly in resourceVersion order. Old rows are pruned after the retention window.
create table changes (
    resource_version bigint primary key,
    event_type       text not null,          -- ADDED | MODIFIED | DELETED | GAP
    kind             text not null default '',
    namespace        text not null default '',
    uid              uuid,
    object           jsonb,
    -- the labels before a MODIFIED that changed them (null: unchanged), so that a watch with a label selector sees an
    -- object leave (DELETED) or enter (ADDED) its selection
    previous_labels  jsonb,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now()
);
create index changes_created_at on changes (created_at);
