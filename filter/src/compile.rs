//! (being written) model → Snapshot compiler and classifier.
/// Placeholder until the compiler lands.
pub struct Snapshot;
/// Placeholder.
pub fn compile(_model: &crate::Model, _generation: u64) -> Snapshot {
    Snapshot
}
