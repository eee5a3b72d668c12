-- The reconciler: wake the outbox relays as soon as events commit, and let them claim per-object heads quickly.

-- One notification per inserting statement (and PostgreSQL folds equal notifications of one transaction into one),
-- delivered when the transaction commits; relays also poll, so a missed notification only delays.
create function cls_outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('cls_outbox', '');
    return null;
end
$$;

create trigger outbox_notify after insert on outbox for each statement execute function cls_outbox_notify();
