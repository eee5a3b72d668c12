-- Trivial migration used only by cls-testkit's own tests.
CREATE TABLE testkit_probe (
    id   BIGSERIAL PRIMARY KEY,
    note TEXT NOT NULL
);
