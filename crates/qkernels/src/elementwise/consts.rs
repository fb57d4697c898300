//! The constants of the binary rules in the form the vector tiers take them, built once per call
//! by `BinaryPlan`.

/// Constants of the add rule ([`qcore::requant::AddRequant`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddConsts {
    pub sa: f32,
    pub pa: f32,
    pub sb: f32,
    pub pb: f32,
    pub inv: f32,
    pub zp: i32,
    pub relu: bool,
}

/// Constants of the mul rule ([`qcore::requant::MulRequant`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MulConsts {
    pub za: i32,
    pub zb: i32,
    pub multiplier: f32,
    pub zp: i32,
    pub relu: bool,
    /// True when the vector conversion provably equals `lrintf` for every product.
    pub vector_ok: bool,
}
