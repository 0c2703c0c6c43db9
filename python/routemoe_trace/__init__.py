"""Read routemoe runs, checkpoints and routing traces into numpy arrays (and pandas DataFrames).

    import routemoe_trace as rt
    run = rt.load_run("runs/quickstart")        # trace, checkpoints, metrics.jsonl, config
    tr = run.trace                              # or rt.open_trace("runs/quickstart/trace.h5")
    tr.steps                                    # [R] steps of the records
    tr.experts(1)                               # [R, P, k] chosen experts of MoE layer 1
    rt.flip_rates(tr)["top1"]                   # [R-1, L] top-1 flip rates (= routemoe trace)

The file formats are docs/checkpoint-format.md; the metrics are docs/analysis.md. Needs h5py
and numpy; pandas only for the *_frame() functions. See python/README.md.
"""

from .files import (Checkpoint, Record, Run, Trace, load_run, open_checkpoint, open_trace,
                    read_metrics)
from .metrics import (expert_load, flip_rates, last_change_steps, load_entropy,
                      metrics_frame, records_frame, flips_frame)

__all__ = [
    "Checkpoint", "Record", "Run", "Trace", "load_run", "open_checkpoint", "open_trace",
    "read_metrics", "expert_load", "flip_rates", "last_change_steps", "load_entropy",
    "metrics_frame", "records_frame", "flips_frame",
]
