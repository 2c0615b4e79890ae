"""Run under torchrun by tests/test_distributed.py: train each config given, then write this rank's
final parameters to ``<run_dir>/rank<R>.safetensors`` so that the test can compare the ranks."""

import sys

from safetensors.torch import save_file

from minbert.config import load_config
from minbert.runtime import distributed
from minbert.runtime.process import rank
from minbert.training import fit, setup

if __name__ == "__main__":
    for path in sys.argv[1:]:
        tr = setup(load_config(path))
        fit(tr)
        weights = {n: p.detach().contiguous() for n, p in tr.model.named_parameters()}
        save_file(weights, str(tr.run_dir / f"rank{rank()}.safetensors"))
    distributed.shutdown()
