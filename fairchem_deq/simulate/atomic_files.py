"""Output files are written under a hidden `.<name>.partial` sibling and renamed when
complete (see fairchem_deq.outputs, which also has the folder-level helpers)."""

from fairchem_deq.outputs import partial_path, staged_outputs, write_text_atomic

__all__ = ["partial_path", "staged_outputs", "write_text_atomic"]
