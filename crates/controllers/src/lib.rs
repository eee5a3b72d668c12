//! The controller SDK and the built-in controllers (`local-process`, `port-allocator`).
//!
//! Not built yet (its own issue). Controllers register through `PUT /api/v1/controllers/{name}` and report through
//! `PUT /api/v1/{plural}/{uid}/status`, both served today by `cls-api`.
