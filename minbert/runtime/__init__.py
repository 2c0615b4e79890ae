"""The process the code runs in: devices, precision, seeds, signals (``process``), and the ranks of a
``torchrun`` job (``distributed``). Everything above may use it; it uses only the config's error type."""
