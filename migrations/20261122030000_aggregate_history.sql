-- The last generation at which the object was Ready, kept by reports themselves: the cached aggregate is only
-- refreshed on reads, and a Ready period that no read saw must still count as the last known good generation.
alter table objects add column last_ready_generation bigint;
