"""`distill` under `accelerate launch --use_deepspeed` on CPU processes (gloo), for the tests.

DeepSpeed runs on a CPU (its CPU accelerator, over gloo), and Accelerate builds its engine there
too, but counts such a launch as one process: every rank then believes it is the main process of
one and reads the whole data. This shim gives Accelerate's state the launch's real process count
and ranks right after each ``Accelerator`` is built (what it records on a GPU), so that the real
DeepSpeed ZeRO-3 engine, Accelerate's DeepSpeed ``prepare``, ``save_state``/``load_state`` and
``get_state_dict`` all run on this machine. Run as
``accelerate launch --use_deepspeed --zero_stage 3 --num_processes 2 tests/deepspeed_on_cpu.py run RECIPE ...``.
"""

import os
import sys

import accelerate
import torch.distributed as dist
from accelerate.state import AcceleratorState, PartialState

from distill import zero

_build = accelerate.Accelerator.__init__


def _build_counted(self, *args, **kwargs):
    _build(self, *args, **kwargs)
    counted = {
        "num_processes": dist.get_world_size(),
        "process_index": dist.get_rank(),
        "local_process_index": int(os.environ["LOCAL_RANK"]),
    }
    PartialState._shared_state.update(counted)
    AcceleratorState._shared_state.update(counted)


accelerate.Accelerator.__init__ = _build_counted
zero.accelerate_counts_processes = lambda: True  # what distill refuses such a launch for, fixed above

if __name__ == "__main__":
    from distill.cli import entry

    sys.argv = ["distill", *sys.argv[1:]]
    entry()
