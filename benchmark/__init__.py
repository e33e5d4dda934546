"""dfkd-benchmark: one harness for data-free knowledge distillation methods (CPSC-DFKD and baselines)."""
__version__ = "0.1.0"
