"""PyTorch's side of the `recurrent` benchmark family (benches/recurrent.rs).

    ~/.torch-ref/bin/python tools/bench/torch_recurrent.py [--threads 1] [--out FILE]

Times, at batch 1:
  recurrent/lstm_float_I256_H256_L2_bi_T50: nn.LSTM(256, 256, num_layers=2, bidirectional=True)
      on a [50, 1, 256] sequence;
  recurrent/lstm_qint8_I256_H256_L2_bi_T50: the same after quantize_dynamic (qint8);
  recurrent/crnn_float, recurrent/crnn_int8: the CRNN of tools/golden/gen_crnn.py on one
      [1, 1, 32, 128] line, float and quantized as that script does (static CNN, then
      quantize_dynamic for the LSTM and Linear).
Float cases run once (reported under both engines); int8 cases are quantized and timed under the
engines "x86" (oneDNN convs on CPUs with AVX512-VNNI) and "fbgemm".
Writes {"recurrent/<case>": {"x86": median_ns, "fbgemm": median_ns}} (xtask adds "/t<T>").
"""

import copy
import json
import pathlib
import sys
import warnings

import torch
import torch.ao.quantization as tq
from timing import bench_args, median_ns
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "golden"))
sys.path.insert(0, str(ROOT))
import gen_crnn  # noqa: E402

warnings.filterwarnings("ignore")
ENGINES = ("x86", "fbgemm")
LSTM_CASE = "I256_H256_L2_bi_T50"


def quantized_crnn(model):
    return tq.quantize_dynamic(gen_crnn.static_quantized(model), {nn.LSTM, nn.Linear}, dtype=torch.qint8)


def main():
    args = bench_args()
    results = {}

    lstm = nn.LSTM(256, 256, num_layers=2, bidirectional=True).eval()
    seq = torch.randn(50, 1, 256)
    crnn = gen_crnn.float_model()
    line = gen_crnn.line(999)

    with torch.no_grad():
        for case, model, x in ((f"lstm_float_{LSTM_CASE}", lstm, seq), ("crnn_float", crnn, line)):
            ns = median_ns(lambda: model(x))
            results[f"recurrent/{case}"] = {e: ns for e in ENGINES}
        for engine in ENGINES:
            torch.backends.quantized.engine = engine
            qlstm = tq.quantize_dynamic(copy.deepcopy(lstm), {nn.LSTM}, dtype=torch.qint8)
            qcrnn = quantized_crnn(crnn)
            for case, model, x in ((f"lstm_qint8_{LSTM_CASE}", qlstm, seq), ("crnn_int8", qcrnn, line)):
                results.setdefault(f"recurrent/{case}", {})[engine] = median_ns(lambda: model(x))
    for key, value in results.items():
        print(key, value)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
