//! The reconciler: the outbox relay that publishes committed events to the bus (Google Cloud Pub/Sub or the
//! in-process bus), and the two-speed scheduler that claims due `schedules` rows and writes `*.reconcile` events.
//!
//! Not built yet (its own issue). The API already writes everything this crate will consume: one `outbox` row per
//! spec change, deletion and report, in the transaction of the change, and a `schedules` row per object whose
//! cadence (`attention`) moves with every report and spec change.
