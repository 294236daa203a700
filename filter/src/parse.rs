//! (being written) frame parsing.
pub enum Parsed {}
pub fn parse_frame(_frame: &[u8]) -> Result<Parsed, crate::DropReason> {
    Err(crate::DropReason::TruncatedEthernet)
}
