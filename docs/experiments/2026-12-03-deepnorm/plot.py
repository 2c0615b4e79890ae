"""Loss curves of the DeepNorm experiment: python docs/experiments/2026-12-03-deepnorm/plot.py"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
RUNS = {"post-LN (BERT)": "postln", "DeepNorm": "deepnorm"}

fig, ax = plt.subplots(figsize=(7, 4))
for label, name in RUNS.items():
    records = [json.loads(line) for line in (HERE / f"{name}-log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    x, y = [r["step"] for r in steps], [r["mlm_loss"] for r in steps]
    smooth, ema = [], None
    for v in y:
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        smooth.append(ema)
    (line,) = ax.plot(x, y, alpha=0.25)
    ax.plot(x, smooth, color=line.get_color(), label=f"{label} (EMA 0.9)")
ax.set_xlabel("step (32 sentences)")
ax.set_ylabel("training MLM loss")
ax.set_title("48 layers x width 64 from scratch, MLM on SST + STS text, lr 1e-3")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(HERE / "loss.png", dpi=110)
