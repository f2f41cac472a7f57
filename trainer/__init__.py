"""The lrtech trainer: differential learning rates and SGDR in a compiled tf.distribute loop.

Importing this package sets one TensorFlow runtime default, before TensorFlow creates its
CPU device (it reads the variable then, once per process):

TF_CPU_ALLOCATOR_USE_BFC=true: host tensors come from TensorFlow's pooling (BFC) allocator
instead of one malloc/free per tensor. Under tf.distribute (distributed input iterators, i.e.
every strategy but the default one), the per-tensor path maps and unmaps activation-sized
buffers every step: about 5 million page faults and half the training speed for resnet8 at
batch 128 on 2 cores; the pool removes them (`bench/run_all.py`, BENCHMARKS.md). Set the
variable yourself (to false) to keep TensorFlow's default; import `trainer` before touching
a device (or set it in the environment) for it to take effect.
"""

import os

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
