//! Given/when/then tests of the aggregates (cqrs-es TestFramework), with an in-memory lab.

mod kit;
mod order;
mod patient;
mod result;
mod sample;
