//! Golden tests: qobserve against fixtures produced by PyTorch 2.15's own observers
//! (`tools/golden/gen_observers.py`). MinMax-family parameters are compared bit for bit; the
//! histogram observer is compared as its documentation says.

mod fixture;
mod histogram;
mod minmax;
