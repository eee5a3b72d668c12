-- registry_epoch holds one row, but a table that was never analyzed is estimated at ~1,500 rows: every GET joins it,
-- and that estimate multiplied the cost of the reports subquery until plans crossed jit_above_cost (the connections
-- also turn JIT off). Statistics taken here say one row; autovacuum keeps them from then on.
analyze registry_epoch;
