# record_torch_orders.py: records the order of compute, rank by rank, of PyTorch's own pipeline
# schedules (torch.distributed.pipelining: Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B,
# ScheduleInterleavedZeroBubble with one stage per rank) for tests/data/torch_pipelining_orders.txt.
#
# No GPU, no process group and no model: each rank's schedule runs its own step code
# (_step_microbatches) on stand-in stages whose forward/backward only log what they were asked
# to run, and whose send/receive lists are empty. Where a schedule cannot run that way (a
# version whose runtime needs more of a real stage), its compute-only plan (pipeline_order, the
# IR the runtime executes) is written instead and a note goes to stderr.
#
# Usage: python3 tools/record_torch_orders.py > orders.txt   (PyTorch 2.4 or later, CPU is fine)
# Output: the same line format as tests/data/dualpipe_reference_orders.txt, with our names:
#   NAME RANKS CHUNKS RANK: KIND LOCAL.CHUNK ...
import sys
import traceback

import torch
from torch.distributed.pipelining import schedules as S


class LoggingStage:
    """Stands in for a _PipelineStageBase: logs compute; every communication list is empty."""

    def __init__(self, stage_index, num_stages, group_rank, group_size, log):
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.group_rank = group_rank
        self.group_size = group_size
        self.is_first = stage_index == 0
        self.is_last = stage_index == num_stages - 1
        self.submod = torch.nn.Identity()
        self.log = log
        self.has_backward = True
        self.output_chunks = []

    def forward_one_chunk(self, mb, *args, **kwargs):
        self.log.append(("F", self.stage_index, mb))
        return torch.zeros(())

    def backward_one_chunk(self, mb, loss=None, full_backward=True, **kwargs):
        self.log.append(("B" if full_backward else "I", self.stage_index, mb))

    def backward_weight_one_chunk(self, mb, **kwargs):
        self.log.append(("W", self.stage_index, mb))

    def get_local_bwd_output(self, mb):
        return None

    def __getattr__(self, name):  # send/recv op lists, infra setup, grad scaling: nothing to do
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: []


def loss_fn(output, target):
    return torch.zeros(())


def executed(cls, pp, n, local_stages):
    """Runs each rank's step; returns {rank: [(kind, stage, mb), ...]}."""
    orders = {}
    for rank in range(pp):
        log = []
        stages = [LoggingStage(rank + j * pp, pp * local_stages, rank, pp, log) for j in range(local_stages)]
        if cls in (S.Schedule1F1B, S.ScheduleGPipe):
            sched = cls(stages[0], n, loss_fn=loss_fn)
        else:
            sched = cls(stages, n, loss_fn=loss_fn)
        sched._step_microbatches([()] * n, [{}] * n, [None] * n, None)
        orders[rank] = log
    return orders


def planned(cls, pp, n, local_stages):
    """The compute-only plan of a multi-stage schedule: {rank: [(kind, stage, mb), ...]}."""
    log = []
    stages = [LoggingStage(j * pp, pp * local_stages, 0, pp, log) for j in range(local_stages)]
    sched = cls(stages, n, loss_fn=loss_fn)
    out = {}
    for rank, acts in sched.pipeline_order.items():
        out[rank] = [(a.computation_type.value, a.stage_index, a.microbatch_index) for a in acts
                     if a is not None and a.computation_type.value in ("F", "B", "I", "W")]
    return out


def emit(name, pp, n, orders):
    for rank in range(pp):
        toks = ["%s%d.%d" % (k, s // pp, mb) for (k, s, mb) in orders[rank]]
        print("%s %d %d %d: %s" % (name, pp, n, rank, " ".join(toks)))


CONFIGS = [
    ("gpipe", "ScheduleGPipe", 1, [(1, 1), (1, 3), (2, 1), (2, 4), (3, 2), (3, 5), (4, 8), (6, 7)]),
    ("1f1b", "Schedule1F1B", 1,
     [(1, 1), (1, 4), (2, 2), (2, 3), (2, 8), (3, 3), (3, 7), (4, 4), (4, 5), (4, 8), (4, 13), (5, 9), (6, 6),
      (8, 8), (8, 20)]),
    ("interleaved-1f1b", "ScheduleInterleaved1F1B", 2,
     [(1, 1), (1, 3), (2, 2), (2, 4), (2, 8), (3, 3), (3, 6), (3, 12), (4, 4), (4, 8), (4, 16), (5, 10), (6, 12),
      (8, 8), (8, 16)]),
    ("zb1p", "ScheduleInterleavedZeroBubble", 1,
     [(1, 2), (2, 2), (2, 4), (2, 8), (3, 3), (3, 6), (4, 4), (4, 8), (4, 12), (5, 10), (6, 12), (8, 8), (8, 16)]),
]

print("# recorded with torch %s by tools/record_torch_orders.py" % torch.__version__)
for name, clsname, local_stages, shapes in CONFIGS:
    cls = getattr(S, clsname, None)
    if cls is None:
        print("no %s in this torch" % clsname, file=sys.stderr)
        continue
    for pp, n in shapes:
        try:
            orders = executed(cls, pp, n, local_stages)
            how = "executed"
            if cls not in (S.Schedule1F1B, S.ScheduleGPipe):
                plan = planned(cls, pp, n, local_stages)
                if plan != orders:
                    print("%s %d %d: executed order differs from pipeline_order" % (name, pp, n), file=sys.stderr)
        except Exception:
            print("%s %d %d: running the step failed:" % (name, pp, n), file=sys.stderr)
            traceback.print_exc()
            if cls in (S.Schedule1F1B, S.ScheduleGPipe):
                continue
            try:
                orders = planned(cls, pp, n, local_stages)
                how = "planned"
            except Exception:
                print("%s %d %d: no plan either" % (name, pp, n), file=sys.stderr)
                traceback.print_exc()
                continue
        print("%s %d %d %s" % (name, pp, n, how), file=sys.stderr)
        emit(name, pp, n, orders)
