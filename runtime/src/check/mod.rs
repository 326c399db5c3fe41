//! Comparisons of GPU results with the CPU [`reference`](crate::reference), shared by the tests
//! and `epc run`.

pub mod ht;
pub mod ll;
