//! Which order a record belongs to.
//!
//! An order, its tubes and their results are separate records, each with its own
//! sequence, but the lab's rules reach across them: a result is released only while its
//! tube stands and its test is wanted, a test is cancelled only while none of its results
//! is released. The ledger appends the records of one order in turn and checks, at the
//! append, that the records a command's rules read are as it read them, so that these
//! rules hold in the order of the log. This trait names the order.

use crate::ids::OrderId;
use crate::order::Order;
use crate::patient_record::PatientRecord;
use crate::result::LabResult;
use crate::sample::Sample;

pub trait OrderFamily {
    /// The order this record belongs to; `None` for a record outside every order, or
    /// one not yet created.
    fn order_of(&self) -> Option<OrderId>;
}

impl OrderFamily for Order {
    fn order_of(&self) -> Option<OrderId> {
        self.order_id()
    }
}

impl OrderFamily for Sample {
    fn order_of(&self) -> Option<OrderId> {
        self.facts().map(|f| f.order_id)
    }
}

impl OrderFamily for LabResult {
    fn order_of(&self) -> Option<OrderId> {
        self.order_id()
    }
}

impl OrderFamily for PatientRecord {
    fn order_of(&self) -> Option<OrderId> {
        None
    }
}
