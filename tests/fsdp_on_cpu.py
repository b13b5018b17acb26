"""`distill` with Accelerate put into FSDP2 mode on CPU processes (gloo), for the tests.

Accelerate turns FSDP on only for GPU (or other accelerator) processes, yet torch's ``fully_shard``
shards over gloo on a CPU as well. This shim sets Accelerate's state to FSDP2 right after each
``Accelerator`` is built, so the real sharding, Accelerate's FSDP2 ``prepare``, its sharded
``save_state``/``load_state`` and ``get_state_dict`` all run under ``torchrun`` on this machine.
Run as ``torchrun --nproc_per_node 2 tests/fsdp_on_cpu.py run RECIPE ...``.
"""

import sys

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_build = accelerate.Accelerator.__init__


def _build_sharded(self, *args, **kwargs):
    _build(self, *args, **kwargs)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    if self.state.mixed_precision != "no":
        plugin.set_mixed_precision(self.state.mixed_precision)
    self.state.fsdp_plugin = plugin
    self.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.Accelerator.__init__ = _build_sharded

if __name__ == "__main__":
    from distill.cli import entry

    sys.argv = ["distill", *sys.argv[1:]]
    entry()
