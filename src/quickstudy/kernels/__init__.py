"""Speed: fused and lean autograd functions, native code and the CPU allocator.

Tensors in, tensors out: nothing here knows a model or an algorithm. A model opts into a kernel
explicitly (``quickstudy.models.Conv4(kernels=...)``, :mod:`quickstudy.models.fast_path`), and the numerics
of every kernel are tested against the plain torch ops it replaces (values and derivatives, float64).

==========================  ==================================================================  ==============
kernel                      what it computes                                                    file
==========================  ==================================================================  ==============
``conv2d_as_gemm``          a few-input-channel convolution as im2col + one matrix product      gemm_conv.py
``bn_pool_relu``            batch norm -> 2x2 max-pool -> ReLU, keeping only x and the output   fused_tail.py
                            (graphs backpropagated once)
``lean_max_pool2x2``        a 2x2 max-pool keeping int16 window choices instead of its input    lean_pool.py
``batch_norm_train``        training-mode batch norm with a closed-form double backward         batchnorm_grad.py
``batch_norm_pool_train``   batch norm -> max-pool keeping neither the output nor its gradient  batchnorm_grad.py
caching CPU allocator       size-class free lists for CPU tensors >= 64 KiB (process-wide)      cpu_allocator.py
==========================  ==================================================================  ==============

C++ sources (``csrc/``) are compiled on first use against the installed torch (:mod:`.native`).
"""

from .batchnorm_grad import batch_norm_pool_train, batch_norm_train
from .fused_tail import bn_pool_relu
from .functorch import is_functorch_tensor
from .gemm_conv import conv2d_as_gemm
from .lean_pool import fits_choices, lean_max_pool2x2

__all__ = ["batch_norm_pool_train", "batch_norm_train", "bn_pool_relu", "conv2d_as_gemm", "fits_choices",
           "is_functorch_tensor", "lean_max_pool2x2"]
