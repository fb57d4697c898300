//! Golden tests: qcore against fixtures produced by PyTorch 2.15 (`tools/golden/gen_qcore.py`).
//! Every comparison is exact unless a test says otherwise and why.

mod fixture;
mod ops;
mod quantize;
mod requant;
